"""The ``paybridge`` command line: one module per command group, registered here.

Every setting is an environment variable (docs/contract.md names) and also a flag; flags win.
"""

from __future__ import annotations

import logging
import os

import click

from plumbing.logs import LOG_FORMATS, LogFormat, setup_logging
from tools.cli import (
    dlq,
    load,
    namespace,
    payments,
    produce,
    recurring,
    replay,
    review,
    services,
    topics,
    webhook,
)


def _setup_logging(verbose: int, log_format: LogFormat) -> None:
    level = logging.WARNING - 10 * verbose
    setup_logging(max(level, logging.DEBUG), log_format)
    # The Kafka client is chatty about reconnects that the bridge already reports.
    logging.getLogger("aiokafka").setLevel(max(level, logging.ERROR if verbose < 2 else 0))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="paybridge", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default=None,
    help="text, or json: one object per line [env PAYBRIDGE_LOG_FORMAT; default text]",
)
def main(verbose: int, log_format: LogFormat | None) -> None:
    """paybridge: Kafka payment events in, durable Temporal payment workflows out.

    Settings come from environment variables (KAFKA_BOOTSTRAP_SERVERS, TEMPORAL_ADDRESS,
    PAYBRIDGE_*) or the flags of each command. Start with `paybridge dev`.
    """
    if log_format is None:
        from_env = os.environ.get("PAYBRIDGE_LOG_FORMAT", "").strip() or "text"
        if from_env not in LOG_FORMATS:
            raise click.UsageError(
                f"PAYBRIDGE_LOG_FORMAT: {from_env!r} is not one of {', '.join(LOG_FORMATS)}"
            )
        log_format = "json" if from_env == "json" else "text"
    _setup_logging(verbose, log_format)


for command in (
    services.dev,
    services.bridge_command,
    services.worker,
    webhook.webhook,
    topics.topics,
    produce.produce,
    produce.outcomes,
    payments.status,
    payments.cancel,
    payments.resolve,
    review.review,
    recurring.recurring,
    namespace.namespace,
    load.loadgen,
    replay.replay,
    dlq.dlq,
):
    main.add_command(command)

if __name__ == "__main__":  # pragma: no cover
    main()
