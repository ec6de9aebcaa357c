"""`paybridge` commands for the workflows area; registered on the main group by `bridge.cli`.

`status`, `cancel`, `resolve`, `recurring create|status|cancel` and `namespace register`.
The logic lives in ``workflows.control`` and ``workflows.admin``; this module parses and prints.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import click

from bridge.cli import CONNECTION_FLAGS, _guard, run_async, settings_from, settings_options
from bridge.settings import parse_duration

KAFKA_FLAGS = CONNECTION_FLAGS[:2]
TEMPORAL_FLAGS = CONNECTION_FLAGS[2:]

F = TypeVar("F", bound=Callable[..., Any])


def _exit_before_finalizing(func: F) -> F:
    """End the `paybridge` process as soon as a Temporal client command is done.

    A short-lived process that used a Temporal client can abort at interpreter shutdown
    (``PyGILState_Release ... finalizing``, temporalio/sdk-python#300: the SDK's runtime threads
    take the GIL while Python finalizes), turning a finished command into exit code -6. Seen
    here about once in ten runs. Leaving with ``os._exit`` after flushing skips that phase.
    Only when running as the `paybridge` program, so in-process callers are left alone.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if os.path.basename(sys.argv[0]) != "paybridge":
            return func(*args, **kwargs)
        try:
            func(*args, **kwargs)
            code = 0
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    return wrapper  # type: ignore[return-value]


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    for command in (status, cancel, resolve, recurring, namespace):
        group.add_command(command)


@click.command()
@click.argument("payment_id")
@click.option("--json", "as_json", is_flag=True, help="Print the state as one JSON object.")
@settings_options(TEMPORAL_FLAGS)
@_exit_before_finalizing
@_guard
def status(payment_id: str, as_json: bool, **options: Any) -> None:
    """Show a payment's state (the workflow's `status` query) and its history of steps."""
    from workflows.control import connect_client, payment_status

    settings = settings_from(options)

    async def run() -> Any:
        return await payment_status(await connect_client(settings), payment_id)

    state = run_async(run())
    if as_json:
        click.echo(json.dumps(state.model_dump(mode="json")))
        return
    reason = f"  ({state.reason})" if state.reason else ""
    click.echo(f"{state.payment_id}  {state.status.value}{reason}")
    if state.gateway_ref:
        click.echo(f"gateway ref  {state.gateway_ref}")
    for step in state.steps:
        detail = f"  {step.detail}" if step.detail else ""
        click.echo(f"  {step.at:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f"  {step.name}{detail}")


@click.command()
@click.argument("payment_id")
@click.option("--reason", default="requested by operator", help="Why (recorded in the outcome).")
@settings_options(KAFKA_FLAGS, (("topic_cancels", "--topic", "cancel topic"),))
@_guard
def cancel(payment_id: str, reason: str, **options: Any) -> None:
    """Ask for a payment to be cancelled: produces a PaymentCancelRequested to the cancel topic.

    The payment is cancelled (and compensated) if it has not succeeded yet; `paybridge status`
    shows whether it was.
    """
    from workflows.control import request_cancel

    settings = settings_from(options)
    event_id = run_async(request_cancel(settings, payment_id, reason=reason))
    click.echo(f"cancel requested for {payment_id} (event {event_id} on {settings.topic_cancels})")


@click.command()
@click.argument("payment_id")
@click.option("--approve/--decline", default=None, help="The verdict (one is required).")
@click.option("--operator", default=None, help="Who decides (recorded in the steps).")
@click.option("--note", default=None, help="Free text kept with the verdict.")
@settings_options(TEMPORAL_FLAGS)
@_exit_before_finalizing
@_guard
def resolve(
    payment_id: str, approve: bool | None, operator: str | None, note: str | None, **options: Any
) -> None:
    """Resolve a payment waiting in manual review: --approve or --decline."""
    from workflows.control import connect_client, resolve_payment

    if approve is None:
        raise click.UsageError("say --approve or --decline")
    settings = settings_from(options)

    async def run() -> None:
        await resolve_payment(
            await connect_client(settings),
            payment_id,
            approve=approve,
            operator=operator,
            note=note,
        )

    run_async(run())
    click.echo(f"{payment_id} {'approved' if approve else 'declined'}")


# -- recurring -----------------------------------------------------------------------------


@click.group()
def recurring() -> None:
    """Recurring payment contracts (RecurringPaymentWorkflow, id recurring-SUBSCRIPTION_ID)."""


def _period(_ctx: click.Context, _param: click.Parameter, value: str) -> Any:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@recurring.command("create")
@click.option("--subscription-id", default=None, help="Contract id [default: sub-<random>]")
@click.option("--account", "account_id", default="acct-0001", help="Account charged each term")
@click.option("--merchant", "merchant_id", default="merchant-0001", help="Merchant id")
@click.option("--amount", "amount_minor", type=click.IntRange(min=1), default=2999)
@click.option("--currency", default="EUR", help="ISO 4217 code")
@click.option("--method", type=click.Choice(["CARD", "WALLET", "BANK_TRANSFER"]), default="CARD")
@click.option("--period", default="30d", callback=_period, help="Time between terms (30d, 1h...)")
@click.option("--terms", type=click.IntRange(min=1), default=12, help="Number of payments")
@settings_options(TEMPORAL_FLAGS)
@_exit_before_finalizing
@_guard
def recurring_create(subscription_id: str | None, **options: Any) -> None:
    """Start a contract: TERMS payments of AMOUNT, one every PERIOD, each a PaymentWorkflow."""
    from workflows.control import connect_client, start_recurring
    from workflows.shared import RecurringInput

    fields = {
        k: options.pop(k)
        for k in ("account_id", "merchant_id", "amount_minor", "currency", "method", "period")
    }
    fields["terms"] = options.pop("terms")
    settings = settings_from(options)
    try:
        contract = RecurringInput.model_validate(
            {**fields, "subscription_id": subscription_id or f"sub-{uuid.uuid4().hex[:10]}"}
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc

    async def run() -> str:
        return await start_recurring(await connect_client(settings), settings, contract)

    workflow_id = run_async(run())
    click.echo(f"{contract.subscription_id}  workflow {workflow_id}")


@recurring.command("status")
@click.argument("subscription_id")
@settings_options(TEMPORAL_FLAGS)
@_exit_before_finalizing
@_guard
def recurring_status(subscription_id: str, **options: Any) -> None:
    """Show a contract's progress: terms charged and what comes next."""
    from workflows.control import connect_client
    from workflows.control import recurring_status as query

    settings = settings_from(options)

    async def run() -> Any:
        return await query(await connect_client(settings), subscription_id)

    state = run_async(run())
    charged = f"{len(state.charges)} of {state.terms} terms charged"
    if state.done:
        click.echo(f"{state.subscription_id}  ended  {charged}")
    else:
        cancelling = "  (cancelled: ends after this term)" if state.cancel_requested else ""
        click.echo(
            f"{state.subscription_id}  running  {charged}, next term {state.next_term}{cancelling}"
        )
    for charge in state.charges:
        click.echo(f"  term {charge.term:>3}  {charge.payment_id}  {charge.status.value}")


@recurring.command("cancel")
@click.argument("subscription_id")
@click.option("--reason", default="cancelled by customer")
@settings_options(TEMPORAL_FLAGS)
@_exit_before_finalizing
@_guard
def recurring_cancel(subscription_id: str, reason: str, **options: Any) -> None:
    """End a contract after its current term (no further terms are charged)."""
    from workflows.control import cancel_recurring, connect_client

    settings = settings_from(options)

    async def run() -> None:
        await cancel_recurring(await connect_client(settings), subscription_id, reason=reason)

    run_async(run())
    click.echo(f"{subscription_id} ends after its current term")


# -- namespace -----------------------------------------------------------------------------


@click.group()
def namespace() -> None:
    """Temporal namespace administration."""


@namespace.command("register")
@click.option("--retention", default="3d", callback=_period, help="History retention")
@settings_options(TEMPORAL_FLAGS[:2])
@_exit_before_finalizing
@_guard
def namespace_register(retention: Any, **options: Any) -> None:
    """Register TEMPORAL_NAMESPACE (if missing) and the search attributes PaymentStatus and
    MerchantId that the workflows set."""
    from workflows.admin import register_namespace, register_search_attributes
    from workflows.control import connect_client

    settings = settings_from(options)
    name = settings.temporal_namespace

    async def run() -> tuple[bool, list[str]]:
        # Registering goes through any namespace's connection; the attributes are per namespace.
        client = await connect_client(settings.model_copy(update={"temporal_namespace": "default"}))
        created = await register_namespace(client, name, retention=retention)
        added = await register_search_attributes(client, name)
        return created, added

    created, added = run_async(run())
    click.echo(f"namespace {name}: {'registered' if created else 'exists'}")
    click.echo(f"search attributes added: {', '.join(added) if added else 'none (all present)'}")
