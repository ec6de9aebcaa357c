"""Health tells the truth: if the bridge stops consuming, for any reason, ``/healthz`` and
``/readyz`` answer 503, the cause is logged once, and the process exits non-zero, in
``paybridge bridge`` and in ``paybridge dev`` alike. (Issue 12 found a bridge that had stopped
for good while /readyz answered 200: the dev stack awaited the bridge only at shutdown.)"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import bridge.service as service
from bridge.consumer import Bridge
from plumbing.health import MetricsServer
from plumbing.settings import Settings
from schemas.errors import ConsumerStopped
from tests.bridge_process import settings_env
from tests.support import GATEWAY_SECRET
from tests.test_bridge_consumer import Rig
from tools.processes import free_port


async def get(port: int, path: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(fetch)


def failing_getmany(rig: Rig, error: BaseException, *, after: int = 1) -> None:
    polls = 0
    getmany = rig.kafka.getmany

    async def broken(*args: Any, **kwargs: Any) -> Any:
        nonlocal polls
        polls += 1
        if polls > after:
            raise error
        return await getmany(*args, **kwargs)

    rig.kafka.getmany = broken  # type: ignore[method-assign]


async def supervised(rig: Rig, **options: float) -> tuple[MetricsServer, asyncio.Task[None]]:
    server = MetricsServer(CollectorRegistry(), host="127.0.0.1", port=0)
    await server.__aenter__()
    await rig.kafka.assign()
    runner = asyncio.create_task(rig.bridge.run())
    watch = asyncio.create_task(service.supervise(rig.bridge, runner, server=server, **options))
    return server, watch


async def test_a_consumer_error_fails_health_logs_once_and_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(max_inflight=10, answer_at_once=True)
    error = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    failing_getmany(rig, error, after=3)
    server, watch = await supervised(rig, check_every=0.05)
    try:
        with (
            caplog.at_level(logging.INFO),
            pytest.raises(ConsumerStopped, match="UnicodeDecodeError") as raised,
        ):
            await asyncio.wait_for(watch, 30)
        assert raised.value.__cause__ is error
        for path in ("/healthz", "/readyz"):
            status, body = await get(server.port, path)
            assert status == 503 and "consuming stopped" in body and "UnicodeDecodeError" in body
    finally:
        await server.stop()
    stopped = [r for r in caplog.records if "stopped consuming" in r.getMessage()]
    assert len(stopped) == 1 and stopped[0].levelno == logging.CRITICAL
    assert stopped[0].exc_info is not None and stopped[0].exc_info[1] is error


async def test_a_poll_loop_that_no_longer_turns_is_a_stop() -> None:
    rig = Rig(max_inflight=10, answer_at_once=True, grace=0.1)
    hang = asyncio.Event()

    async def stuck(*args: Any, **kwargs: Any) -> Any:
        await hang.wait()  # e.g. a Kafka client waiting for ever

    rig.kafka.getmany = stuck  # type: ignore[method-assign]
    server, watch = await supervised(rig, stall_timeout=0.5, check_every=0.05)
    try:
        with pytest.raises(ConsumerStopped, match="has not gone round"):
            await asyncio.wait_for(watch, 30)
        assert (await get(server.port, "/healthz"))[0] == 503
    finally:
        await server.stop()


async def test_stopping_on_purpose_is_not_a_failure() -> None:
    rig = Rig(max_inflight=10, answer_at_once=True)
    server, watch = await supervised(rig, check_every=0.05)
    try:
        await asyncio.sleep(0.2)
        assert (await get(server.port, "/healthz"))[0] == 200
        rig.bridge.stop()
        await asyncio.wait_for(watch, 30)
        assert (await get(server.port, "/healthz"))[0] == 200
    finally:
        await server.stop()


# `paybridge bridge` with a Kafka client that breaks after a few polls (the fault is injected
# into the real command, in its own process).
BREAKING_BRIDGE = """
import sys
import bridge.service as service
made = service.kafka_consumer
def consumer(*args, **kwargs):
    created = made(*args, **kwargs)
    getmany, polls = created.getmany, [0]
    async def broken(*a, **k):
        polls[0] += 1
        if polls[0] > 5:
            raise RuntimeError("the Kafka client broke")
        return await getmany(*a, **k)
    created.getmany = broken
    return created
service.kafka_consumer = consumer
from tools.cli import main
sys.argv = ["paybridge", "bridge"]
main()
"""


async def test_paybridge_bridge_exits_non_zero_when_consuming_stops(settings: Settings) -> None:
    env = {
        **os.environ,
        **settings_env(settings),
        "PAYBRIDGE_METRICS_PORT": str(free_port()),
        "PAYBRIDGE_GATEWAY_SECRET": GATEWAY_SECRET,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        BREAKING_BRIDGE,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    text = out.decode()
    assert process.returncode == 1, text
    assert text.count("the bridge stopped consuming: RuntimeError: the Kafka client broke") == 2
    assert text.count("Traceback") == 1, "the cause is logged once, with its traceback"
    assert text.rstrip().endswith(
        "Error: the bridge stopped consuming: RuntimeError: the Kafka client broke"
    )


async def test_paybridge_dev_exits_non_zero_when_its_bridge_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dev stack watches its bridge from the start: a bridge that stops consuming stops the
    stack with an error, instead of leaving it up, silent and ready."""
    from tools.devstack import run_dev

    broken = threading.Event()
    poll_once = Bridge._poll_once

    async def poll(self: Bridge) -> None:
        if broken.is_set():
            raise RuntimeError("the Kafka client broke")
        await poll_once(self)

    monkeypatch.setattr(Bridge, "_poll_once", poll)
    settings = Settings(
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        PAYBRIDGE_METRICS_PORT=free_port(),
        PAYBRIDGE_SDK_METRICS_PORT=0,
    )
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        if line == "ready":
            broken.set()

    dev = asyncio.create_task(run_dev(settings, data_dir=tmp_path / "dev", say=say))
    try:
        for _ in range(1200):
            if broken.is_set() or dev.done():
                break
            await asyncio.sleep(0.1)
        assert broken.is_set(), said
        # It stops by itself, soon (not when someone finally stops the stack).
        done, _ = await asyncio.wait({dev}, timeout=30)
        assert dev in done, "paybridge dev kept running with a dead bridge"
    finally:
        if not dev.done():
            dev.cancel()
            await asyncio.wait({dev})
    with pytest.raises(ConsumerStopped, match="the Kafka client broke"):
        dev.result()
    assert "the bridge stopped consuming: stopping everything" in said
