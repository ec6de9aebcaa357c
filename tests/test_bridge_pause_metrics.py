"""The metrics behind the saturated/paused-bridge alerts, against the real broker and Temporal:
``paybridge_bridge_paused{reason}`` and ``paybridge_inflight_limit``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from plumbing.temporal import connect
from schemas.codec import Codec
from tests.support import Stack, metric, payment, produce_raw, running_bridge
from tests.test_bridge_faults import callback_for
from tools.producing import encode_record


async def wait_for_metric(stack: Stack, value: float, name: str, **labels: str) -> None:
    for _ in range(300):
        if metric(stack.registry, name, **labels) == value:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}{labels} never became {value}")


async def test_early_callbacks_pause_nothing(stack: Stack) -> None:
    """Twice the in-flight limit of callbacks before their payments: before issue 12 they
    filled a waiting budget and paused the callback partitions (``reason="waiting"``). Now each
    starts a run that waits for its payment and is done at once: nothing pauses, nothing stays
    in flight, and the ``waiting`` reason no longer exists."""
    settings = stack.settings.model_copy(
        update={"max_inflight": 5, "orphan_timeout": timedelta(minutes=3)}
    )
    stack = Stack(settings=settings, client=stack.client, ledger=stack.ledger)
    codec = Codec()
    payments = [payment(n) for n in range(10)]
    async with running_bridge(stack):
        assert metric(stack.registry, "paybridge_inflight_limit") == 5
        callbacks = [(p.payment_id.encode(), codec.encode(callback_for(p)), []) for p in payments]
        await produce_raw(settings, settings.topic_callbacks, callbacks)
        cb = {"signal": "gateway_callback", "result": "started"}
        await wait_for_metric(stack, len(payments), "paybridge_signals_total", **cb)
        await wait_for_metric(stack, 0, "paybridge_inflight_records")
        created = [encode_record(codec, p) for p in payments]
        await produce_raw(settings, settings.topic_payments, created)
        await wait_for_metric(stack, 10, "paybridge_workflow_starts_total", result="deduplicated")
    assert metric(stack.registry, "paybridge_bridge_paused", reason="saturated") == 0
    assert stack.registry.get_sample_value("paybridge_bridge_paused", {"reason": "waiting"}) is None


@contextlib.asynccontextmanager
async def gated_proxy(target: str) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A TCP proxy to ``target`` that holds every byte sent to it while the gate is closed:
    Temporal calls then hang, as behind a network partition."""
    host, _, port = target.rpartition(":")
    gate = asyncio.Event()
    gate.set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gated: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if gated:
                    await gate.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", gate
    finally:
        gate.set()
        server.close()


async def test_every_slot_busy_for_5_seconds_shows_as_paused_saturated(stack: Stack) -> None:
    async with gated_proxy(stack.settings.temporal_address) as (address, gate):
        settings = stack.settings.model_copy(
            update={"max_inflight": 3, "temporal_address": address}
        )
        client = await connect(settings, environment=False)
        stack = Stack(settings=settings, client=client, ledger=stack.ledger)
        codec = Codec()
        payments = [payment(n) for n in range(6)]
        async with running_bridge(stack):
            gate.clear()  # Temporal stops answering
            await produce_raw(
                settings, settings.topic_payments, [encode_record(codec, p) for p in payments]
            )
            await wait_for_metric(stack, 3, "paybridge_inflight_records")
            await wait_for_metric(stack, 1, "paybridge_bridge_paused", reason="saturated")
            gate.set()
            await wait_for_metric(stack, 0, "paybridge_bridge_paused", reason="saturated")
            await wait_for_metric(stack, 6, "paybridge_workflow_starts_total", result="started")
