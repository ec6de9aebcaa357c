"""Assembles the bridge process: Kafka consumer and DLQ producer, routes, metrics, health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

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

log = logging.getLogger(__name__)


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
        routes=build_routes(settings, calls, gateway_secret=secret),
        dead_letters=DeadLetters(producer, settings.topic_dlq),
        metrics=metrics,
        codec=codec,
        max_inflight=settings.max_inflight,
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
            await stop_and_leave_group(consumer)
    finally:
        await producer.stop()


def _kafka_check(consumer: AIOKafkaConsumer) -> ReadyCheck:
    async def check() -> bool:
        try:
            await asyncio.wait_for(consumer.topics(), timeout=2)
        except Exception:  # any failure to fetch metadata means Kafka is not usable now
            return False
        return True

    return check


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
