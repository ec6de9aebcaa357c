"""SIGTERM drains the bridge within its stated budget (bridge/service.py: in-flight records get
10 s, the process is gone within Kubernetes' default 30 s), even with Temporal calls that never
return, and what it commits on the way out is only what is done."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from temporalio.service import RPCError

from bridge.service import SHUTDOWN_GRACE
from plumbing.kafka import client_kwargs
from schemas.codec import Codec
from schemas.ids import payment_workflow_id
from tests.bridge_process import BridgeProcess
from tests.support import Stack, payment, produce_raw, read_topic
from tools.processes import free_port
from tools.producing import encode_record


class FreezableProxy:
    """A TCP proxy to Temporal that can stop answering (the calls in flight then hang)."""

    def __init__(self, target: str) -> None:
        self.host, _, port = target.rpartition(":")
        self.target_port = int(port)
        self.port = free_port()
        self.frozen = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                if self.frozen.is_set():
                    await asyncio.Event().wait()  # swallow: never answer again
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(self.host, self.target_port)
        await asyncio.gather(
            self._pump(client_r, server_w), self._pump(server_r, client_w), return_exceptions=True
        )


async def test_sigterm_drains_within_the_grace_period(stack: Stack, tmp_path: Path) -> None:
    settings, codec = stack.settings, Codec()
    first = [payment(n) for n in range(20)]
    stuck = [payment(100 + n) for n in range(10)]
    async with FreezableProxy(settings.temporal_address) as proxy:
        proxied = settings.model_copy(update={"temporal_address": f"127.0.0.1:{proxy.port}"})
        bridge = BridgeProcess(proxied, log_path=tmp_path / "bridge.log")
        bridge.start()
        try:
            await bridge.wait_ready()
            await produce_raw(
                settings, settings.topic_payments, [encode_record(codec, p) for p in first]
            )
            while await bridge.sample("paybridge_workflow_starts_total", result="started") < 20:
                await asyncio.sleep(0.2)
            proxy.frozen.set()  # Temporal stops answering: these calls hang
            await produce_raw(
                settings, settings.topic_payments, [encode_record(codec, p) for p in stuck]
            )
            while await bridge.sample("paybridge_inflight_records") < len(stuck):
                await asyncio.sleep(0.2)
            began = time.monotonic()
            assert bridge.process is not None
            bridge.process.terminate()
            code = await asyncio.to_thread(bridge.process.wait, 60)
            took = time.monotonic() - began
        finally:
            bridge.stop()
    log = (tmp_path / "bridge.log").read_text()
    assert code == 0, log[-3000:]
    print(f"SIGTERM to exit with 10 calls hanging: {took:.1f}s")
    assert SHUTDOWN_GRACE <= took < 30, f"took {took:.1f}s"
    assert "abandoned 10 in-flight records" in log
    # What was committed is done: every payment below a committed offset has its workflow.
    committed = await committed_offsets(stack, settings.topic_payments)
    assert sum(committed.values()) >= len(first)
    below = [
        r.key.decode()
        for r in await read_topic(settings, settings.topic_payments, expect=len(first + stuck))
        if r.offset < committed.get(r.partition, 0)
    ]
    for payment_id in below:
        try:
            await stack.client.get_workflow_handle(payment_workflow_id(payment_id)).describe()
        except RPCError as exc:
            raise AssertionError(f"{payment_id} committed but never started") from exc


async def committed_offsets(stack: Stack, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(
        **client_kwargs(stack.settings),
        group_id=stack.settings.consumer_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        found = {}
        for partition in consumer.partitions_for_topic(topic) or ():
            offset = await consumer.committed(TopicPartition(topic, partition))
            found[partition] = offset or 0
        return found
    finally:
        await consumer.stop()
