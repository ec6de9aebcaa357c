"""The ``paybridge`` command line.

Every setting is an environment variable (CONTRACT.md names) and also a flag; flags win.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from bridge.errors import ConfigError, PaybridgeError
from bridge.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

# Flags shared by the commands that talk to Kafka and Temporal: (field, flag, help).
CONNECTION_FLAGS = (
    ("kafka_bootstrap_servers", "--kafka-bootstrap-servers", "Kafka bootstrap servers"),
    ("kafka_security_protocol", "--kafka-security-protocol", "PLAINTEXT, SSL, SASL_PLAINTEXT..."),
    ("temporal_address", "--temporal-address", "Temporal frontend host:port"),
    ("temporal_namespace", "--temporal-namespace", "Temporal namespace"),
    ("temporal_task_queue", "--task-queue", "Temporal task queue of the payment workflows"),
)
BRIDGE_FLAGS = (
    ("consumer_group", "--consumer-group", "Kafka consumer group of the bridge"),
    (
        "group_instance_id",
        "--group-instance-id",
        "static group identity, one per bridge process: restarted after a crash, the bridge "
        "takes its partitions back at once",
    ),
    ("metrics_port", "--metrics-port", "port of /metrics, /healthz and /readyz"),
    ("max_inflight", "--max-inflight", "records in flight before fetching pauses"),
)


def _env_name(field: str) -> str:
    return Settings.model_fields[field].alias or field.upper()


def settings_options(*groups: tuple[tuple[str, str, str], ...]) -> Callable[[F], F]:
    """Add a flag per setting; the help names the environment variable and the default."""

    def decorate(func: F) -> F:
        for group in reversed(groups):
            for field, flag, text in reversed(group):
                default = Settings.model_fields[field].default
                func = click.option(
                    flag,
                    field,
                    default=None,
                    help=f"{text} [env {_env_name(field)}; default {default}]",
                )(func)
        return func

    return decorate


def settings_from(options: dict[str, Any]) -> Settings:
    fields = {k: options.pop(k) for k in list(options) if k in Settings.model_fields}
    return load_settings(**fields)


T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; paybridge's own errors become a message and exit code 2."""
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        raise click.UsageError(f"{exc.setting}: {exc.problem}") from exc
    except PaybridgeError as exc:
        raise click.ClickException(str(exc)) from exc


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The Kafka client is chatty about reconnects that the bridge already reports.
    logging.getLogger("aiokafka").setLevel(max(level, logging.ERROR if verbose < 2 else 0))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """paybridge: Kafka payment events in, durable Temporal payment workflows out.

    Settings come from environment variables (KAFKA_BOOTSTRAP_SERVERS, TEMPORAL_ADDRESS,
    PAYBRIDGE_*) or the flags of each command. Start with `paybridge dev`.
    """
    _setup_logging(verbose)


def _guard(func: F) -> F:
    """Map configuration errors raised before the event loop to a usage error."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            raise click.UsageError(f"{exc.setting}: {exc.problem}") from exc

    return wrapper  # type: ignore[return-value]


# -- servers -------------------------------------------------------------------------------


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep Temporal, Kafka and ledger state here across restarts (default: temporary).",
)
@click.option(
    "--no-simulator",
    is_flag=True,
    help="The simulated gateway accepts authorisation requests but sends no callbacks.",
)
@settings_options(CONNECTION_FLAGS, BRIDGE_FLAGS)
@_guard
def dev(data_dir: Path | None, no_simulator: bool, **options: Any) -> None:
    """Run the embedded stack: Temporal dev server, Kafka-protocol broker, worker and bridge.

    Everything binds to 127.0.0.1 on the ports of KAFKA_BOOTSTRAP_SERVERS (9092),
    TEMPORAL_ADDRESS (7233, UI on 8233) and PAYBRIDGE_METRICS_PORT (9464). Prints `ready`
    once payments are accepted. Ctrl-C stops everything it started.
    """
    from bridge.devstack import run_dev

    settings = settings_from(options)
    run_async(
        run_dev(
            settings,
            data_dir=data_dir,
            say=lambda line: click.echo(line),
            simulator=not no_simulator,
        )
    )


@main.command("bridge")
@settings_options(CONNECTION_FLAGS, BRIDGE_FLAGS)
@_guard
def bridge_command(**options: Any) -> None:
    """Run the bridge: consume the input topics and start/signal payment workflows.

    Needs PAYBRIDGE_GATEWAY_SECRET to verify gateway callbacks.
    """
    from bridge.runners import run_bridge

    settings = settings_from(options)
    settings.require_gateway_secret()
    run_async(run_bridge(settings))


@main.command()
@click.option(
    "--ledger",
    "ledger_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("ledger.sqlite"),
    help="SQLite file of the ledger.",
)
@click.option("--seed-demo-accounts", is_flag=True, help="Create acct-0001..acct-1000 if missing.")
@click.option(
    "--no-simulator",
    is_flag=True,
    help="The simulated gateway accepts authorisation requests but sends no callbacks.",
)
@settings_options(CONNECTION_FLAGS, tuple(f for f in BRIDGE_FLAGS if f[0] == "metrics_port"))
@_guard
def worker(ledger_path: Path, seed_demo_accounts: bool, no_simulator: bool, **options: Any) -> None:
    """Run a Temporal worker for the payment workflows and activities.

    Its simulated gateway signs callbacks with PAYBRIDGE_GATEWAY_SECRET (required) and produces
    them to the callbacks topic; PAYBRIDGE_SIM_* set its ratios and latency.
    """
    from bridge.runners import run_worker

    settings = settings_from(options)
    settings.require_gateway_secret()
    run_async(
        run_worker(
            settings, ledger_path=ledger_path, seed=seed_demo_accounts, simulator=not no_simulator
        )
    )


# -- topics --------------------------------------------------------------------------------


@main.group()
def topics() -> None:
    """Kafka topic administration."""


@topics.command("create")
@settings_options(CONNECTION_FLAGS[:2])
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=None,
    help="Partitions of each input topic [env PAYBRIDGE_INPUT_PARTITIONS; default 6]",
)
@_guard
def topics_create(partitions: int | None, **options: Any) -> None:
    """Create every topic paybridge uses (existing topics are left as they are)."""
    from bridge.kafka import create_topics, topic_specs

    settings = settings_from({**options, "input_partitions": partitions})
    created = run_async(create_topics(settings))
    for name, count in topic_specs(settings).items():
        state = "created" if name in created else "exists"
        click.echo(f"{name:<32} {count:>3} partitions  {state}")


# -- producing -----------------------------------------------------------------------------


@main.group()
def produce() -> None:
    """Produce events to the input topics (Avro single-object encoding, or --json)."""


def _now_ms(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        if value.isdigit():
            return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: use ISO 8601 or epoch milliseconds") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@produce.command("payment")
@click.option("--payment-id", default=None, help="Payment id [default: pay-<random>]")
@click.option("--event-id", default=None, help="Event id [default: random UUID]")
@click.option("--account", "account_id", default="acct-0001", help="Account to debit")
@click.option("--merchant", "merchant_id", default="merchant-0001", help="Merchant id")
@click.option("--amount", "amount_minor", type=int, default=1250, help="Amount in minor units")
@click.option("--currency", default="EUR", help="ISO 4217 code")
@click.option("--method", type=click.Choice(["CARD", "WALLET", "BANK_TRANSFER"]), default="CARD")
@click.option("--created-at", default=None, help="ISO 8601 or epoch ms [default: now]")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Repeatable")
@click.option("--json", "as_json", is_flag=True, help="Send JSON (content-type header) not Avro")
@click.option("--count", type=click.IntRange(min=1), default=1, help="Send this many payments")
@settings_options(CONNECTION_FLAGS[:2], (("topic_payments", "--topic", "topic"),))
@_guard
def produce_payment(
    payment_id: str | None,
    event_id: str | None,
    metadata: tuple[str, ...],
    created_at: str | None,
    as_json: bool,
    count: int,
    **options: Any,
) -> None:
    """Produce PaymentCreated events; prints each payment id and its workflow id."""
    from bridge.events import PaymentCreated, payment_workflow_id
    from bridge.producing import send_events

    fields = {
        k: options.pop(k)
        for k in ("account_id", "merchant_id", "amount_minor", "currency", "method")
    }
    settings = settings_from(options)
    pairs = dict(item.split("=", 1) for item in metadata if "=" in item)
    if count > 1 and (payment_id or event_id):
        raise click.UsageError("--payment-id and --event-id name one payment: drop --count")
    events = []
    for _ in range(count):
        pid = payment_id or f"pay-{uuid.uuid4().hex[:12]}"
        data = {
            **fields,
            "event_id": event_id or str(uuid.uuid4()),
            "payment_id": pid,
            "created_at": _now_ms(created_at),
            "metadata": pairs,
        }
        try:
            events.append(PaymentCreated.model_validate(data))
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    run_async(send_events(settings, settings.topic_payments, events, as_json=as_json))
    for event in events:
        click.echo(f"{event.payment_id}  workflow {payment_workflow_id(event.payment_id)}")


@produce.command("callback")
@click.option("--payment-id", required=True, help="The payment the gateway answers for")
@click.option(
    "--status", type=click.Choice(["AUTHORIZED", "DECLINED", "ERROR"]), default="AUTHORIZED"
)
@click.option("--gateway-ref", default=None, help="Gateway reference [default: gw-PAYMENT_ID]")
@click.option("--reason", default=None, help="Why (declines and errors)")
@click.option("--event-id", default=None, help="Event id [default: random UUID]")
@click.option("--occurred-at", default=None, help="ISO 8601 or epoch ms [default: now]")
@click.option(
    "--signature",
    default=None,
    help="Send this signature instead of signing (to try the bridge's check)",
)
@click.option("--json", "as_json", is_flag=True, help="Send JSON (content-type header) not Avro")
@settings_options(CONNECTION_FLAGS[:2], (("topic_callbacks", "--topic", "topic"),))
@_guard
def produce_callback(
    payment_id: str,
    status: str,
    gateway_ref: str | None,
    reason: str | None,
    event_id: str | None,
    occurred_at: str | None,
    signature: str | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Produce a GatewayCallback, signed with PAYBRIDGE_GATEWAY_SECRET (HMAC-SHA256)."""
    from bridge.events import GatewayCallback
    from bridge.producing import send_events

    settings = settings_from(options)
    callback = GatewayCallback(
        event_id=event_id or str(uuid.uuid4()),
        payment_id=payment_id,
        gateway_ref=gateway_ref or f"gw-{payment_id}",
        status=status,
        reason=reason,
        occurred_at=_now_ms(occurred_at),
        signature=signature or "",
    )
    if signature is None:
        secret = settings.require_gateway_secret()
        callback = callback.model_copy(update={"signature": callback.expected_signature(secret)})
    run_async(send_events(settings, settings.topic_callbacks, [callback], as_json=as_json))
    click.echo(f"{callback.event_id}  {status} for {payment_id}")


@produce.command("cancel")
@click.option("--payment-id", required=True, help="The payment to cancel")
@click.option("--reason", default="requested by customer", help="Why (recorded in the outcome)")
@click.option("--event-id", default=None, help="Event id [default: random UUID]")
@click.option("--json", "as_json", is_flag=True, help="Send JSON (content-type header) not Avro")
@settings_options(CONNECTION_FLAGS[:2], (("topic_cancels", "--topic", "topic"),))
@_guard
def produce_cancel(
    payment_id: str, reason: str, event_id: str | None, as_json: bool, **options: Any
) -> None:
    """Produce a PaymentCancelRequested."""
    from bridge.events import PaymentCancelRequested
    from bridge.producing import send_events

    settings = settings_from(options)
    cancel = PaymentCancelRequested(
        event_id=event_id or str(uuid.uuid4()),
        payment_id=payment_id,
        reason=reason,
        requested_at=datetime.now(UTC),
    )
    run_async(send_events(settings, settings.topic_cancels, [cancel], as_json=as_json))
    click.echo(f"{cancel.event_id}  cancel for {payment_id}")


# -- reading -------------------------------------------------------------------------------


@main.command()
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new outcomes.")
@click.option("--payment-id", default=None, help="Only this payment's outcome.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@settings_options(CONNECTION_FLAGS[:2], (("topic_outcomes", "--topic", "topic"),))
@_guard
def outcomes(follow: bool, payment_id: str | None, as_json: bool, **options: Any) -> None:
    """Print payment outcomes from the outcomes topic (from the beginning)."""
    from bridge.producing import read_outcomes

    settings = settings_from(options)

    def show(outcome: Any) -> None:
        if as_json:
            click.echo(json.dumps(outcome.model_dump(mode="json")))
        else:
            reason = f"  ({outcome.reason})" if outcome.reason else ""
            click.echo(
                f"{outcome.completed_at:%H:%M:%S}  {outcome.payment_id:<24} "
                f"{outcome.status.value:<10} {outcome.amount_minor} {outcome.currency}{reason}"
            )

    run_async(read_outcomes(settings, show, follow=follow, payment_id=payment_id))


def _register_areas() -> None:
    # Each area keeps its commands in its own module (imported late: they import this one).
    from bridge import cli_load, cli_workflows

    cli_workflows.register(main)
    cli_load.register(main)


_register_areas()

if __name__ == "__main__":  # pragma: no cover
    main()
