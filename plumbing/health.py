"""The ``/metrics``, ``/healthz`` and ``/readyz`` server of every paybridge process.

``/readyz`` answers 200 only while every registered check passes (Kafka and Temporal reachable);
it names the failing checks otherwise. ``/healthz`` answers 200 while the process does its job:
once :meth:`MetricsServer.fail` is called (e.g. the bridge stopped consuming), both answer 503
with the reason, until the process exits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

log = logging.getLogger(__name__)


ReadyCheck = Callable[[], Awaitable[bool]]


class MetricsServer:
    """A minimal HTTP server for ``/metrics``, ``/healthz`` and ``/readyz``.

    ``/readyz`` answers 200 only while every registered check passes (Kafka and Temporal
    reachable); it names the failing checks otherwise. After :meth:`fail`, ``/healthz`` and
    ``/readyz`` both answer 503 with the reason.
    """

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._checks: dict[str, ReadyCheck] = {}
        self._server: asyncio.Server | None = None
        self.failed: str | None = None

    def add_check(self, name: str, check: ReadyCheck) -> None:
        self._checks[name] = check

    def fail(self, reason: str) -> None:
        """The process no longer does its job: ``/healthz`` and ``/readyz`` answer 503."""
        if self.failed is None:
            self.failed = reason

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
        if path in ("/healthz", "/readyz") and self.failed is not None:
            return "503 Service Unavailable", text, f"failed: {self.failed}\n".encode()
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
