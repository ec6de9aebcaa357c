"""Session-wide real servers for the tests: Temporal dev server, time-skipping server, Kafka.

Kafka is the embedded Kafka-protocol broker by default. ``PAYBRIDGE_TEST_KAFKA=testcontainers``
runs real Apache Kafka in Docker instead (where Docker exists); ``PAYBRIDGE_TEST_KAFKA=host:port``
points at a running broker. ``PAYBRIDGE_TEST_TEMPORAL=host:port`` points at a running Temporal.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from tools.devstack import kafka_broker, temporal_server
from tools.processes import ServerProcess, free_port

HOST = "127.0.0.1"
MEMORY = Path("/dev/shm")


@contextlib.contextmanager
def memory_dir(fallback: Path) -> Iterator[Path]:
    """A fresh directory in memory (tmpfs) when the machine has one, else ``fallback``.

    For the servers' databases: a file there survives a restart of its server (the outage and
    fault tests restart them) without an fsync to a shared disk per write, which made every
    saga in the suite about twice as slow (Temporal's SQLite commits each workflow task).
    Removed on exit.
    """
    if MEMORY.is_dir() and os.access(MEMORY, os.W_OK):
        with tempfile.TemporaryDirectory(prefix="paybridge-test-", dir=MEMORY) as made:
            yield Path(made)
    else:
        fallback.mkdir(parents=True, exist_ok=True)
        yield fallback


@dataclass
class Server:
    """A server the tests use; ``process`` is None when it was not started by the tests."""

    address: str
    process: ServerProcess | None = None

    def _own(self) -> ServerProcess:
        if self.process is None:
            raise RuntimeError(f"{self.address} was not started by the tests: cannot stop it")
        return self.process

    async def stop(self) -> None:
        await self._own().stop()

    async def start(self) -> None:
        await self._own().start()
        await self._own().wait_for_port(HOST, int(self.address.rpartition(":")[2]))


@contextlib.asynccontextmanager
async def temporal(tmp: Path) -> AsyncIterator[Server]:
    existing = os.environ.get("PAYBRIDGE_TEST_TEMPORAL")
    if existing:
        yield Server(existing)
        return
    port = free_port()
    # Persistent database, so that tests can stop and restart the server mid-run; in memory.
    with memory_dir(tmp) as data_dir:
        process = temporal_server(port=port, ui_port=None, data_dir=data_dir, log_dir=tmp / "logs")
        await process.start()
        try:
            await process.wait_for_port(HOST, port)
            yield Server(f"{HOST}:{port}", process)
        finally:
            await process.stop()


@contextlib.asynccontextmanager
async def kafka(tmp: Path) -> AsyncIterator[Server]:
    choice = os.environ.get("PAYBRIDGE_TEST_KAFKA", "embedded")
    if choice == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft() as container:
            yield Server(container.get_bootstrap_server())
        return
    if choice != "embedded":
        yield Server(choice)
        return
    port = free_port()
    process = kafka_broker(port=port, data_dir=tmp, log_dir=tmp / "logs")
    await process.start()
    try:
        await process.wait_for_port(HOST, port)
        yield Server(f"{HOST}:{port}", process)
    finally:
        await process.stop()
