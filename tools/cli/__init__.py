"""The ``paybridge`` command line: one module per command group, registered here.

Every setting is an environment variable (docs/contract.md names) and also a flag; flags win.
"""

from __future__ import annotations

import logging
import sys

import click

from tools.cli import (
    dlq,
    load,
    namespace,
    payments,
    produce,
    recurring,
    replay,
    services,
    topics,
    webhook,
)


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
    recurring.recurring,
    namespace.namespace,
    load.loadgen,
    replay.replay,
    dlq.dlq,
):
    main.add_command(command)

if __name__ == "__main__":  # pragma: no cover
    main()
