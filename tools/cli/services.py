"""`paybridge dev`, `paybridge bridge` and `paybridge worker`: the long-running processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tools.cli.common import (
    BRIDGE_FLAGS,
    CONNECTION_FLAGS,
    WORKER_FLAGS,
    guard,
    run_async,
    settings_from,
    settings_options,
)


@click.command()
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
@settings_options(
    CONNECTION_FLAGS,
    BRIDGE_FLAGS,
    (("webhook_port", "--webhook-port", "port of the gateway webhook"),),
)
@guard
def dev(data_dir: Path | None, no_simulator: bool, **options: Any) -> None:
    """Run the embedded stack: Temporal dev server, Kafka-protocol broker, worker and bridge.

    Everything binds to 127.0.0.1 on the ports of KAFKA_BOOTSTRAP_SERVERS (9092),
    TEMPORAL_ADDRESS (7233, UI on 8233), PAYBRIDGE_METRICS_PORT (9464) and
    PAYBRIDGE_WEBHOOK_PORT (9480, the gateway webhook). Prints `ready` once payments are
    accepted. Ctrl-C stops everything it started.
    """
    from tools.devstack import run_dev

    settings = settings_from(options)
    run_async(
        run_dev(
            settings,
            data_dir=data_dir,
            say=lambda line: click.echo(line),
            simulator=not no_simulator,
        ),
        service=True,
    )


@click.command("bridge")
@settings_options(CONNECTION_FLAGS, BRIDGE_FLAGS)
@guard
def bridge_command(**options: Any) -> None:
    """Run the bridge: consume the input topics and start/signal payment workflows.

    Needs PAYBRIDGE_GATEWAY_SECRET to verify gateway callbacks.
    """
    from bridge.service import run_bridge

    settings = settings_from(options)
    settings.require_gateway_secret()
    run_async(run_bridge(settings), service=True)


@click.command()
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
@settings_options(
    CONNECTION_FLAGS, tuple(f for f in BRIDGE_FLAGS if f[0] == "metrics_port"), WORKER_FLAGS
)
@guard
def worker(ledger_path: Path, seed_demo_accounts: bool, no_simulator: bool, **options: Any) -> None:
    """Run a Temporal worker for the payment workflows and activities.

    Its simulated gateway signs callbacks with PAYBRIDGE_GATEWAY_SECRET (required) and produces
    them to the callbacks topic, or POSTs them to the webhook with PAYBRIDGE_SIM_CALLBACKS=webhook
    (at PAYBRIDGE_SIM_WEBHOOK_URL); PAYBRIDGE_SIM_* set its ratios and latency. On SIGTERM it
    stops polling and lets activities in flight finish for up to --shutdown-grace (default 30s).
    /readyz answers 200 once it is connected to Temporal and Kafka and polling.
    """
    from workflows.worker import run_worker

    settings = settings_from(options)
    settings.require_gateway_secret()
    run_async(
        run_worker(
            settings, ledger_path=ledger_path, seed=seed_demo_accounts, simulator=not no_simulator
        ),
        service=True,
    )
