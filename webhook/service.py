"""Assembles the webhook process: Kafka producer, HTTP server, metrics and health.

``/metrics``, ``/healthz`` and ``/readyz`` are served by ``plumbing.health.MetricsServer`` on
``PAYBRIDGE_METRICS_PORT``, as for the bridge and the worker, not on the webhook's own port:
the webhook port faces the gateway (often the internet), the metrics port stays inside; the
image's health check and Prometheus' scrape configuration work unchanged; and in
``paybridge dev`` the webhook's metrics join the stack's one metrics endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from prometheus_client import CollectorRegistry

from plumbing.health import MetricsServer
from plumbing.kafka import recovering_producer, start_when_reachable
from plumbing.process import until_signalled
from plumbing.settings import WEBHOOK_PATH, Settings
from schemas.codec import Codec
from webhook.app import SEND_TIMEOUT, Webhook, WebhookMetrics, WebhookServer

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def open_webhook(
    settings: Settings,
    *,
    registry: CollectorRegistry,
    server: MetricsServer | None = None,
    secret: str | None = None,
    host: str = "0.0.0.0",
    codec: Codec | None = None,
    send_timeout: float = SEND_TIMEOUT,
) -> AsyncIterator[WebhookServer]:
    """The webhook listening on ``PAYBRIDGE_WEBHOOK_PORT`` once Kafka is reachable; on exit it
    stops listening, finishes the requests in flight and stops its producer."""
    secret = secret if secret is not None else settings.require_gateway_secret()
    metrics = WebhookMetrics(registry)
    producer = recovering_producer(settings, what="webhook producer")
    started = asyncio.Event()

    async def kafka_ready() -> bool:
        # Ready while a broker answers (fresh metadata, not the producer's cache) and knows
        # the callbacks topic.
        return started.is_set() and settings.topic_callbacks in await producer.topics()

    if server is not None:
        server.add_check("webhook kafka", kafka_ready)
    await start_when_reachable(producer, settings, what="webhook producer")
    started.set()
    try:
        webhook = Webhook(
            producer,
            topic=settings.topic_callbacks,
            secret=secret,
            metrics=metrics,
            codec=codec,
            send_timeout=send_timeout,
        )
        async with WebhookServer(webhook, host=host, port=settings.webhook_port) as listening:
            yield listening
    finally:
        # Records still unacknowledged after the send timeout were answered 503: with Kafka
        # gone, stopping (which flushes them) must not hold up the process for ever.
        try:
            await asyncio.wait_for(producer.stop(), send_timeout)
        except TimeoutError:
            log.warning("webhook producer: Kafka did not take the last records; stopped anyway")


async def run_webhook(settings: Settings, *, say: Callable[[str], None] = log.info) -> None:
    """``paybridge webhook``: until SIGINT or SIGTERM."""
    registry = CollectorRegistry()
    async with (
        until_signalled() as stop,
        MetricsServer(registry, host="0.0.0.0", port=settings.metrics_port) as server,
        open_webhook(settings, registry=registry, server=server) as listening,
    ):
        say(f"webhook listening on port {listening.port}: POST {WEBHOOK_PATH}")
        await stop.wait()
    say("webhook stopped")
