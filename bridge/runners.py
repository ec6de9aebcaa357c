"""Long-running commands: ``paybridge bridge`` and ``paybridge worker`` as separate processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from temporalio.client import Client
from temporalio.runtime import Runtime

from bridge.kafka import outcome_reader, recovering_producer, start_when_reachable
from bridge.metrics import MetricsServer, WorkerMetrics
from bridge.service import open_bridge
from bridge.settings import Settings
from bridge.temporal import connect, sdk_metrics_runtime
from bridge.temporal_calls import Backoff
from workflows.gateway import simulated_gateway
from workflows.ledger import Ledger
from workflows.worker import open_worker

log = logging.getLogger(__name__)


async def connect_with_retry(settings: Settings, *, runtime: Runtime | None = None) -> Client:
    """Connect to Temporal, waiting (and saying so) while it is not reachable."""
    backoff = Backoff(initial=0.5, cap=10.0)
    while True:
        try:
            return await connect(settings, runtime=runtime)
        except RuntimeError as exc:
            delay = backoff.next_delay()
            log.warning(
                "Temporal at %s (TEMPORAL_ADDRESS) not reachable: %s; retrying in %.1fs",
                settings.temporal_address,
                exc,
                delay,
            )
            await asyncio.sleep(delay)


@contextlib.asynccontextmanager
async def until_signalled() -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run_bridge(settings: Settings) -> None:
    registry = CollectorRegistry()
    async with (
        until_signalled() as stop,
        MetricsServer(registry, host="0.0.0.0", port=settings.metrics_port) as server,
    ):
        client = await connect_with_retry(settings)
        async with open_bridge(settings, client, registry=registry, server=server) as bridge:
            runner = asyncio.create_task(bridge.run())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            bridge.stop()
            stopper.cancel()
            await runner


async def run_worker(
    settings: Settings, *, ledger_path: Path, seed: bool, simulator: bool = True
) -> None:
    secret = settings.require_gateway_secret()  # callbacks are signed with it
    registry = CollectorRegistry()
    ledger = Ledger(ledger_path)
    if seed:
        ledger.seed()
    metrics = WorkerMetrics(registry)
    producer = recovering_producer(
        settings, what="outcome producer", on_replace=metrics.producers_replaced.inc
    )
    try:
        async with (
            until_signalled() as stop,
            MetricsServer(registry, host="0.0.0.0", port=settings.metrics_port),
        ):
            client = await connect_with_retry(settings, runtime=sdk_metrics_runtime(settings))
            await start_when_reachable(producer, settings, what="outcome producer")
            gateway = simulated_gateway(settings, producer, secret=secret, callbacks=simulator)
            try:
                async with open_worker(
                    client,
                    task_queue=settings.temporal_task_queue,
                    ledger=ledger,
                    producer=producer,
                    outcomes_topic=settings.topic_outcomes,
                    metrics=metrics,
                    gateway=gateway,
                    outcome_reader=outcome_reader(settings),
                ):
                    await stop.wait()
            finally:
                await gateway.close()
    finally:
        await producer.stop()
        ledger.close()
