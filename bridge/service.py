"""Assembles the bridge process: Kafka consumer and DLQ producer, routes, metrics, health, and
the supervision that turns "consuming stopped" into an unhealthy process that exits.

Shutdown (SIGTERM or SIGINT) has a stated budget, within Kubernetes' default 30 s grace: fetching
stops, in-flight records get ``SHUTDOWN_GRACE`` (10 s) to finish, the rest is abandoned (2 s
to unwind; it will be redelivered and deduplicated), the final commit has 5 s, and leaving the
group and flushing the DLQ producer 5 s each. Typically it takes the time of the slowest
in-flight Temporal call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry
from temporalio.client import Client

from bridge.consumer import Bridge
from bridge.metrics import BridgeMetrics
from bridge.routing import build_routes
from bridge.temporal_calls import TemporalCalls
from plumbing.dead_letters import DeadLetters
from plumbing.health import MetricsServer, ReadyCheck
from plumbing.kafka import consumer as kafka_consumer
from plumbing.kafka import recovering_producer, start_when_reachable, stop_and_leave_group
from plumbing.process import until_signalled
from plumbing.settings import Settings
from plumbing.temporal import connect_with_retry
from schemas.codec import Codec
from schemas.errors import ConsumerStopped

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0
# The poll loop goes round at least every 5.2 s (see Bridge._poll_once), except while a rebalance
# waits for the group's other members, which Kafka bounds by max.poll.interval.ms (aiokafka's
# default 300 s). A loop that has not gone round for longer is stuck (e.g. inside the Kafka
# client) and the bridge is reported as stopped.
STALL_TIMEOUT = 360.0
CLIENT_STOP_TIMEOUT = 5.0


@contextlib.asynccontextmanager
async def open_bridge(
    settings: Settings,
    client: Client,
    *,
    registry: CollectorRegistry,
    server: MetricsServer | None = None,
    codec: Codec | None = None,
    gateway_secret: str | None = None,
) -> AsyncIterator[Bridge]:
    """A started :class:`Bridge` (not yet running); stops its Kafka clients on exit."""
    secret = gateway_secret if gateway_secret is not None else settings.require_gateway_secret()
    metrics = BridgeMetrics(registry)
    codec = codec or Codec()
    consumer = kafka_consumer(
        settings,
        group_id=settings.consumer_group,
        group_instance_id=settings.group_instance_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    producer = recovering_producer(
        settings, what="DLQ producer", on_replace=metrics.producers_replaced.inc
    )
    calls = TemporalCalls(client, task_queue=settings.temporal_task_queue, metrics=metrics)
    bridge = Bridge(
        consumer,
        routes=build_routes(settings, calls, gateway_secret=secret, metrics=metrics),
        dead_letters=DeadLetters(producer, settings.topic_dlq),
        metrics=metrics,
        codec=codec,
        max_inflight=settings.max_inflight,
        grace=SHUTDOWN_GRACE,
    )
    if server is not None:
        server.add_check("temporal", calls.reachable)
        server.add_check("kafka", _kafka_check(consumer))
    await start_when_reachable(producer, settings, what="DLQ producer")
    try:
        await start_when_reachable(consumer, settings, what="consumer")
        try:
            yield bridge
        finally:
            bridge.stop()
            await _bounded(stop_and_leave_group(consumer), "leaving the consumer group")
    finally:
        await _bounded(producer.stop(), "flushing the DLQ producer")


async def _bounded(stopping: Awaitable[Any], what: str) -> None:
    try:
        await asyncio.wait_for(stopping, CLIENT_STOP_TIMEOUT)
    except TimeoutError:
        log.warning("%s took longer than %.0fs: gave up", what, CLIENT_STOP_TIMEOUT)


def _kafka_check(consumer: AIOKafkaConsumer) -> ReadyCheck:
    async def check() -> bool:
        try:
            await asyncio.wait_for(consumer.topics(), timeout=2)
        except Exception:  # any failure to fetch metadata means Kafka is not usable now
            return False
        return True

    return check


async def supervise(
    bridge: Bridge,
    runner: asyncio.Task[None],
    *,
    server: MetricsServer | None = None,
    stall_timeout: float = STALL_TIMEOUT,
    check_every: float = 1.0,
) -> None:
    """Watch the bridge's ``runner`` (``bridge.run()``) until it ends.

    Returns if it ended because :meth:`Bridge.stop` was asked for. If consuming stopped for any
    other reason (``run()`` raised or returned, a record failed for good, or the poll loop has
    not gone round for ``stall_timeout`` seconds): ``/healthz`` and ``/readyz`` answer 503,
    the cause is logged once, and :class:`ConsumerStopped` is raised, which makes the process
    exit non-zero so that its supervisor restarts it.
    """
    cause: BaseException | None = None
    while True:
        done, _ = await asyncio.wait({runner}, timeout=check_every)
        if done:
            if runner.cancelled():
                reason = "its task was cancelled"
            else:
                cause = runner.exception() or bridge.failure
                if cause is None and bridge.stopping:
                    return  # stopped on purpose
                reason = f"{type(cause).__name__}: {cause}" if cause else "run() returned"
            break
        idle = bridge.idle_for()
        if idle > stall_timeout and not bridge.stopping:
            reason = f"the poll loop has not gone round for {idle:.0f}s"
            bridge.stop()
            _, pending = await asyncio.wait({runner}, timeout=bridge.grace + 10)
            for task in pending:
                task.cancel()
            break
    if server is not None:
        server.fail(f"consuming stopped: {reason}")
    log.critical("the bridge stopped consuming: %s", reason, exc_info=cause)
    raise ConsumerStopped(f"the bridge stopped consuming: {reason}") from cause


async def run_bridge(settings: Settings) -> None:
    """``paybridge bridge``: until SIGINT or SIGTERM, or until consuming stops
    (:class:`ConsumerStopped`, a non-zero exit)."""
    registry = CollectorRegistry()
    async with (
        until_signalled() as stop,
        MetricsServer(registry, host="0.0.0.0", port=settings.metrics_port) as server,
    ):
        client = await connect_with_retry(settings)
        async with open_bridge(settings, client, registry=registry, server=server) as bridge:
            runner = asyncio.create_task(bridge.run(), name="paybridge-bridge")
            watcher = asyncio.create_task(supervise(bridge, runner, server=server))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not watcher.done():
                log.info("stopping: in-flight records get %.0fs to finish", bridge.grace)
                bridge.stop()
            await watcher
