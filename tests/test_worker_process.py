"""``paybridge worker`` as a process: ``/readyz`` tells the truth about start-up, and SIGTERM
lets an outcome being published reach the topic (graceful shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client

from plumbing.kafka import create_topics
from plumbing.settings import Settings
from schemas.events import OutcomeStatus, PaymentOutcome
from schemas.ids import payment_workflow_id
from schemas.workflow_api import PaymentWorkflowInput
from tests.bridge_process import settings_env
from tests.faults.cluster import Member
from tests.support import GATEWAY_SECRET, isolated_settings, payment, read_outcomes
from tools.devstack import kafka_broker
from tools.processes import free_port

HOST = "127.0.0.1"
PAYBRIDGE = str(Path(sys.executable).parent / "paybridge")


def worker_process(settings: Settings, tmp: Path, **extra: str) -> Member:
    env = {
        **os.environ,
        **settings_env(settings),
        "PAYBRIDGE_GATEWAY_SECRET": GATEWAY_SECRET,
        "PAYBRIDGE_METRICS_PORT": str(free_port()),
        "PAYBRIDGE_SDK_METRICS_PORT": "0",
        **extra,
    }
    argv = [PAYBRIDGE, "-v", "worker", "--ledger", str(tmp / "ledger.sqlite")]
    return Member("worker", [*argv, "--seed-demo-accounts"], env, tmp / "worker.log")


async def get(member: Member, path: str) -> tuple[int, str]:
    url = f"http://{HOST}:{member.env['PAYBRIDGE_METRICS_PORT']}{path}"

    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    return await asyncio.to_thread(fetch)


class Forwarder:
    """A TCP port that accepts nothing until ``start()``, then forwards to ``target``: a server
    that comes up while the worker waits for it."""

    def __init__(self, target: str) -> None:
        self.port = free_port()
        self.target_host, _, port = target.rpartition(":")
        self.target_port = int(port)
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, HOST, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream), pipe(upstream_reader, writer))


async def readiness_for(member: Member, seconds: float) -> list[tuple[int, str]]:
    seen = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        seen.append(await get(member, "/readyz"))
        await asyncio.sleep(0.3)
    return seen


async def test_readyz_answers_200_only_once_connected_and_polling(
    settings: Settings, tmp_path: Path
) -> None:
    temporal = Forwarder(settings.temporal_address)
    kafka = Forwarder(settings.kafka_bootstrap_servers)
    worker = worker_process(
        settings.model_copy(
            update={
                "temporal_address": temporal.address,
                "kafka_bootstrap_servers": kafka.address,
            }
        ),
        tmp_path,
    )
    worker.start()
    try:
        while (await get(worker, "/healthz"))[0] != 200:  # the process serves its endpoints
            assert worker.running, worker.log_path.read_text()
            await asyncio.sleep(0.2)
        # Neither Temporal nor Kafka can be reached yet.
        seen = await readiness_for(worker, 3)
        assert {status for status, _ in seen} == {503}
        assert "not ready: temporal, kafka, polling" in seen[-1][1]
        await temporal.start()  # Temporal comes up; Kafka is still unreachable
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while "temporal" in (await get(worker, "/readyz"))[1]:
            assert loop.time() < deadline, worker.log_path.read_text()
            await asyncio.sleep(0.3)
        status, body = await get(worker, "/readyz")
        assert (status, body) == (503, "not ready: kafka, polling\n")
        await kafka.start()
        await worker.wait_ready(timeout=60)
        assert await get(worker, "/readyz") == (200, "ready\n")
    finally:
        worker.stop()
        await temporal.stop()
        await kafka.stop()
    assert worker.process is not None and worker.process.returncode == 0


@contextlib.asynccontextmanager
async def own_broker(tmp: Path) -> AsyncIterator[tuple[str, int]]:
    """A broker of this test's own (the test pauses it): its address and process id."""
    port = free_port()
    broker = kafka_broker(port=port, data_dir=tmp, log_dir=tmp / "logs")
    await broker.start()
    try:
        await broker.wait_for_port(HOST, port)
        assert broker.process is not None
        yield f"{HOST}:{port}", broker.process.pid
    finally:
        assert broker.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(broker.process.pid, signal.SIGCONT)
        await broker.stop()


async def publish_in_flight(client: Client, workflow_id: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    handle = client.get_workflow_handle(workflow_id)
    while loop.time() < deadline:
        pending = (await handle.describe()).raw_description.pending_activities
        if any(
            a.activity_type.name == "publish_outcome"
            and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            for a in pending
        ):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("publish_outcome never started")


async def test_sigterm_lets_the_outcome_being_published_land_once(
    client: Client, temporal_server: object, tmp_path: Path
) -> None:
    async with own_broker(tmp_path / "kafka") as (kafka_address, broker_pid):
        settings = isolated_settings(kafka_address, client.service_client.config.target_host)
        await create_topics(settings)
        worker = worker_process(settings, tmp_path)
        worker.start()
        try:
            await worker.wait_ready(timeout=60)
            # The broker stops answering, so the outcome's send is in flight when SIGTERM comes.
            os.kill(broker_pid, signal.SIGSTOP)
            p = payment(1, account_id="acct-unknown")  # REJECTED at once: straight to publish
            handle = await client.start_workflow(
                "PaymentWorkflow",
                PaymentWorkflowInput(payment=p),
                id=payment_workflow_id(p.payment_id),
                task_queue=settings.temporal_task_queue,
                result_type=PaymentOutcome,
            )
            await publish_in_flight(client, handle.id)
            assert worker.process is not None
            worker.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(2)
            assert worker.running, "the worker quit without letting its activity finish"
            os.kill(broker_pid, signal.SIGCONT)  # the broker answers again, within the grace
            exit_code = await asyncio.to_thread(worker.process.wait, 60)
        finally:
            os.kill(broker_pid, signal.SIGCONT)
            worker.kill()
        assert exit_code == 0
        # The outcome is on the topic, published by the first attempt, by the worker that was
        # told to stop (no other worker ran).
        outcomes = await read_outcomes(settings, expect=1, timeout=10)
        assert [(o.payment_id, o.status) for o in outcomes] == [
            (p.payment_id, OutcomeStatus.REJECTED)
        ]
        history = await handle.fetch_history()
        types = [e.event_type for e in history.events]
        assert EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in types
        # A worker that comes up later finishes the workflow (its last workflow task): it
        # publishes nothing more.
        successor = worker_process(settings, tmp_path / "successor")
        (tmp_path / "successor").mkdir()
        successor.start()
        try:
            outcome = await asyncio.wait_for(handle.result(), timeout=60)
        finally:
            successor.stop()
        assert outcome.status == OutcomeStatus.REJECTED
        assert len(await read_outcomes(settings, expect=2, timeout=5)) == 1
        history = await handle.fetch_history()
        started = [
            e.activity_task_started_event_attributes.attempt
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        ]
        assert started == [1]
