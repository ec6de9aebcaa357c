"""What the `paybridge` commands share: settings flags, running a command, exits.

Every setting is an environment variable (docs/contract.md names) and also a flag; flags win.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from plumbing.settings import Settings, format_duration, load_settings, parse_duration
from schemas.errors import ConfigError, PaybridgeError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


# Flags shared by the commands that talk to Kafka and Temporal: (field, flag, help).
CONNECTION_FLAGS = (
    ("kafka_bootstrap_servers", "--kafka-bootstrap-servers", "Kafka bootstrap servers"),
    ("kafka_security_protocol", "--kafka-security-protocol", "PLAINTEXT, SSL, SASL_PLAINTEXT..."),
    ("temporal_address", "--temporal-address", "Temporal frontend host:port"),
    ("temporal_namespace", "--temporal-namespace", "Temporal namespace"),
    ("temporal_task_queue", "--task-queue", "Temporal task queue of the payment workflows"),
)


KAFKA_FLAGS = CONNECTION_FLAGS[:2]
TEMPORAL_FLAGS = CONNECTION_FLAGS[2:]


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


WORKER_FLAGS = (
    (
        "worker_shutdown_grace",
        "--shutdown-grace",
        "on SIGTERM, how long activities in flight may finish before they are cancelled",
    ),
)


def _env_name(field: str) -> str:
    return Settings.model_fields[field].alias or field.upper()


def settings_options(*groups: tuple[tuple[str, str, str], ...]) -> Callable[[F], F]:
    """Add a flag per setting; the help names the environment variable and the default."""

    def decorate(func: F) -> F:
        for group in reversed(groups):
            for field, flag, text in reversed(group):
                default = Settings.model_fields[field].default
                if isinstance(default, timedelta):
                    default = format_duration(default)
                func = click.option(
                    flag,
                    field,
                    default=None,
                    help=f"{text} [env {_env_name(field)}; default {default}]",
                )(func)
        return func

    return decorate


# The settings of this invocation (set by ``settings_from``), for the messages of run_async.
_current: list[Settings] = []


def settings_from(options: dict[str, Any]) -> Settings:
    fields = {k: options.pop(k) for k in list(options) if k in Settings.model_fields}
    settings = load_settings(**fields)
    _current[:] = [settings]
    return settings


def _kafka_address() -> str:
    return _current[0].kafka_bootstrap_servers if _current else "KAFKA_BOOTSTRAP_SERVERS"


def _temporal_address() -> str:
    if not _current:
        return "TEMPORAL_ADDRESS"
    from plumbing.temporal import temporal_target

    return temporal_target(_current[0])


def run_async(coro: Coroutine[Any, Any, T], *, service: bool = False) -> T:
    """Run a command's coroutine. Configuration errors exit 2 naming the setting; paybridge's
    own errors, and Kafka or Temporal out of reach, exit 1 with one line and no traceback.

    One-shot commands (not ``service``) leave the Kafka client's own connection errors out of
    the log unless -v asks for them: the command's one line says what happened.
    """
    from aiokafka.errors import KafkaConnectionError, KafkaError
    from temporalio.service import RPCError

    failed = False
    kafka_log = logging.getLogger("aiokafka")
    if not service and not logging.getLogger().isEnabledFor(logging.INFO):
        kafka_log.setLevel(logging.CRITICAL)

    def quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # After a failed connection, clients that never started report themselves unclosed
        # when collected: noise under the one line that says what happened.
        if failed and str(context.get("message", "")).startswith("Unclosed AIOKafka"):
            return
        loop.default_exception_handler(context)

    with asyncio.Runner() as runner:
        runner.get_loop().set_exception_handler(quiet)
        try:
            return runner.run(coro)
        except ConfigError as exc:
            raise click.UsageError(f"{exc.setting}: {exc.problem}") from exc
        except PaybridgeError as exc:
            raise click.ClickException(str(exc)) from exc
        except KafkaConnectionError as exc:
            failed = True
            message = f"Kafka at {_kafka_address()} (KAFKA_BOOTSTRAP_SERVERS) is not reachable"
            raise click.ClickException(f"{message}: {exc}") from None
        except KafkaError as exc:
            failed = True
            message = f"Kafka at {_kafka_address()} (KAFKA_BOOTSTRAP_SERVERS) failed: {exc!r}"
            raise click.ClickException(message) from None
        except RPCError as exc:
            message = f"Temporal at {_temporal_address()} (TEMPORAL_ADDRESS) answered "
            raise click.ClickException(f"{message}{exc.status.name}: {exc.message}") from None


def guard(func: F) -> F:
    """Map configuration errors raised before the event loop to a usage error."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            raise click.UsageError(f"{exc.setting}: {exc.problem}") from exc

    return wrapper  # type: ignore[return-value]


def exit_before_finalizing(func: F) -> F:
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


def duration_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value).total_seconds()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def timestamp_arg(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        if value.isdigit():
            return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: use ISO 8601 or epoch milliseconds") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def duration_arg(_ctx: click.Context, _param: click.Parameter, value: str) -> Any:
    """Click callback: a duration flag (``30d``, ``1h``) as a ``timedelta``."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def need_tools_extra(command: str) -> None:
    """Say how to install what ``command``'s terminal UI and charts need, if it is missing."""
    import importlib.util

    missing = [name for name in ("rich", "matplotlib") if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(
            f"paybridge {command} needs {' and '.join(missing)}: "
            "pip install 'paybridge[tools]' (the dev extra includes it)"
        )
