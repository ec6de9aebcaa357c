"""A paybridge cluster made of real processes: Temporal dev server (persistent database), the
Kafka-protocol broker, ``paybridge worker`` and ``paybridge bridge`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from plumbing.kafka import create_topics
from plumbing.settings import Settings
from tests.bridge_process import settings_env
from tests.servers import memory_dir
from tests.support import GATEWAY_SECRET
from tools.devstack import kafka_broker, temporal_server
from tools.processes import ServerProcess, free_port

HOST = "127.0.0.1"
PAYBRIDGE = str(Path(sys.executable).parent / "paybridge")
REPO = Path(__file__).resolve().parents[2]
# Temporal's database in memory (tmpfs; it still survives the server's restarts): on a shared
# disk its per-task fsync halved the cluster's throughput. ``python -m tests.faults --keep``
# turns this off to keep the database with the logs.
TEMPORAL_IN_MEMORY = True


@dataclass
class Member:
    """One ``paybridge`` process (a worker or a bridge)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the process answers 200 on ``/readyz`` (Temporal and Kafka reachable)."""
        url = f"http://{HOST}:{self.env['PAYBRIDGE_METRICS_PORT']}/readyz"

        def ready() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await asyncio.to_thread(ready):
            if loop.time() > deadline or not self.running:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s: {self.log_path}")
            await asyncio.sleep(0.2)

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    root: Path
    settings: Settings
    temporal: ServerProcess
    kafka: ServerProcess
    worker_env: dict[str, str] = field(default_factory=dict)
    workers: list[Member] = field(default_factory=list)
    bridges: list[Member] = field(default_factory=list)
    _count: int = 0

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.sqlite"

    def _member(self, kind: str, argv: list[str], extra: dict[str, str]) -> Member:
        self._count += 1
        env = {
            **os.environ,
            **settings_env(self.settings),
            "PAYBRIDGE_GATEWAY_SECRET": GATEWAY_SECRET,
            "PAYBRIDGE_METRICS_PORT": str(free_port()),
            "PAYBRIDGE_SDK_METRICS_PORT": "0",
            **extra,
        }
        name = f"{kind}-{self._count}"
        return Member(name, argv, env, self.root / "logs" / f"{name}.log")

    def add_worker(self, **extra: str) -> Member:
        argv = [
            PAYBRIDGE,
            "-v",
            "worker",
            "--ledger",
            str(self.ledger_path),
            "--seed-demo-accounts",
        ]
        member = self._member("worker", argv, {**self.worker_env, **extra})
        member.start()
        self.workers.append(member)
        return member

    def add_bridge(self, argv: list[str] | None = None, *, instance: str = "main") -> Member:
        """A bridge process. Its static group identity (``instance``) is what lets a bridge
        restarted after ``kill -9`` replace the dead one at once: give a replacement the same."""
        member = self._member(
            "bridge",
            argv or [PAYBRIDGE, "-v", "bridge"],
            {"PAYBRIDGE_GROUP_INSTANCE_ID": f"bridge-{instance}"},
        )
        member.start()
        self.bridges.append(member)
        return member

    async def restart_temporal(self, *, down_for: float = 0.0) -> None:
        await self.temporal.stop()
        await asyncio.sleep(down_for)
        await self._start(self.temporal, self.settings.temporal_address)

    async def restart_kafka(self, *, down_for: float = 0.0) -> None:
        await self.kafka.stop()  # a clean stop: the broker saves its data
        await asyncio.sleep(down_for)
        await self._start(self.kafka, self.settings.kafka_bootstrap_servers)

    async def _start(self, server: ServerProcess, address: str) -> None:
        await server.start()
        await server.wait_for_port(HOST, int(address.rpartition(":")[2]))

    def members(self) -> list[Member]:
        return [*self.workers, *self.bridges]


@contextlib.asynccontextmanager
async def cluster(root: Path, **overrides: object):  # type: ignore[no-untyped-def]
    """Servers up and topics created; worker and bridge processes are added by the caller.
    ``root`` must exist."""
    tport, kport = free_port(), free_port()
    settings = Settings(
        KAFKA_BOOTSTRAP_SERVERS=f"{HOST}:{kport}",
        TEMPORAL_ADDRESS=f"{HOST}:{tport}",
        PAYBRIDGE_CALLBACK_TIMEOUT="20s",
        PAYBRIDGE_STALE_RETRY_DELAY="10s",
        PAYBRIDGE_ORPHAN_TIMEOUT="60s",
        **overrides,
    )
    with memory_dir(root) if TEMPORAL_IN_MEMORY else contextlib.nullcontext(root) as db_dir:
        temporal = temporal_server(port=tport, ui_port=None, data_dir=db_dir, log_dir=root / "logs")
        kafka = kafka_broker(port=kport, data_dir=root, log_dir=root / "logs")
        made = Cluster(root, settings, temporal, kafka)
        try:
            for server, port in ((kafka, kport), (temporal, tport)):
                await server.start()
                await server.wait_for_port(HOST, port)
            await create_topics(settings)
            yield made
        finally:
            for member in made.members():
                member.kill()
            await temporal.stop()
            await kafka.stop()
