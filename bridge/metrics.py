"""Prometheus metrics (CONTRACT.md names) and the ``/metrics``, ``/healthz``, ``/readyz`` server.

Metrics are created against an injected ``CollectorRegistry`` so that tests and the dev stack
(bridge and worker in one process) each get their own set. Label values are bounded: topics,
results, reasons and statuses come from fixed sets or from configuration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
END_TO_END_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class BridgeMetrics:
    """What the Kafka -> Temporal bridge reports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events_consumed = Counter(
            "paybridge_events_consumed_total",
            "Records consumed from input topics, by how they ended.",
            ["topic", "result"],
            registry=registry,
        )
        self.workflow_starts = Counter(
            "paybridge_workflow_starts_total",
            "Workflow start requests: started, deduplicated (already existed) or error.",
            ["result"],
            registry=registry,
        )
        self.signals = Counter(
            "paybridge_signals_total",
            "Signals sent to payment workflows.",
            ["signal", "result"],
            registry=registry,
        )
        self.dlq_records = Counter(
            "paybridge_dlq_records_total",
            "Records sent to the dead-letter topic, by source topic and reason.",
            ["topic", "reason"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "paybridge_consumer_lag",
            "Records between the partition's end and the bridge's committed offset.",
            ["topic", "partition"],
            registry=registry,
        )
        self.inflight = Gauge(
            "paybridge_inflight_records",
            "Records fetched and not yet done (started, signalled or dead-lettered).",
            registry=registry,
        )
        self.event_to_temporal = Histogram(
            "paybridge_event_to_temporal_seconds",
            "From the record's timestamp to Temporal accepting the start or signal.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.temporal_retries = Counter(
            "paybridge_temporal_retries_total",
            "Temporal calls retried because Temporal was unavailable or overloaded.",
            ["reason"],
            registry=registry,
        )
        self.producers_replaced = Counter(
            "paybridge_dlq_producer_replaced_total",
            "DLQ producers replaced because the broker no longer knew their idempotence state "
            "(or a send hung); a few across broker restarts is expected, a steady rise is not.",
            registry=registry,
        )


class WorkerMetrics:
    """What the worker's activities report."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes_published = Counter(
            "paybridge_outcomes_published_total",
            "Payment outcomes published to the outcomes topic.",
            ["status"],
            registry=registry,
        )
        self.end_to_end = Histogram(
            "paybridge_payment_end_to_end_seconds",
            "From the payment's created_at to its outcome being published.",
            ["status"],
            buckets=END_TO_END_BUCKETS,
            registry=registry,
        )
        self.producers_replaced = Counter(
            "paybridge_outcome_producer_replaced_total",
            "Outcome (and simulated-gateway callback) producers replaced because the broker no "
            "longer knew their idempotence state (or a send hung); a few across broker restarts "
            "is expected, a steady rise is not.",
            registry=registry,
        )

    def outcome_published(self, status: str, *, seconds: float) -> None:
        self.outcomes_published.labels(status=status).inc()
        self.end_to_end.labels(status=status).observe(seconds)


ReadyCheck = Callable[[], Awaitable[bool]]


class MetricsServer:
    """A minimal HTTP server for ``/metrics``, ``/healthz`` and ``/readyz``.

    ``/readyz`` answers 200 only while every registered check passes (Kafka and Temporal
    reachable); it names the failing checks otherwise.
    """

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._checks: dict[str, ReadyCheck] = {}
        self._server: asyncio.Server | None = None

    def add_check(self, name: str, check: ReadyCheck) -> None:
        self._checks[name] = check

    async def __aenter__(self) -> MetricsServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def failing_checks(self) -> list[str]:
        failing = []
        for name, check in self._checks.items():
            try:
                ok = await asyncio.wait_for(check(), timeout=2)
            except Exception:  # a check that errors is a failing check
                ok = False
            if not ok:
                failing.append(name)
        return failing

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) > 1 else "/"
            status, ctype, body = await self._route(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _route(self, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if path == "/metrics":
            return (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                generate_latest(self.registry),
            )
        if path == "/healthz":
            return "200 OK", text, b"ok\n"
        if path == "/readyz":
            failing = await self.failing_checks()
            if failing:
                return (
                    "503 Service Unavailable",
                    text,
                    f"not ready: {', '.join(failing)}\n".encode(),
                )
            return "200 OK", text, b"ready\n"
        return "404 Not Found", text, b"not found\n"
