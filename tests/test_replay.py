"""`paybridge replay`: a plain replay changes nothing, rewritten ids are fresh load; group reset."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from plumbing.kafka import client_kwargs
from plumbing.settings import Settings
from schemas.codec import HEADER_LEN, Codec
from schemas.errors import ReplayError
from schemas.events import CallbackStatus, GatewayCallback, PaymentCreated, to_millis
from tests.support import (
    Stack,
    count_workflows,
    metric,
    payment,
    produce_raw,
    read_outcomes,
    read_topic,
    running_bridge,
    running_worker,
)
from tools.producing import encode_record
from tools.replay import Position, Rewriter, plan_replay, reset_group, rewrite_event, run_replay

COUNT = 12


async def _settled_count(stack: Stack, expected: int, *, timeout: float = 30) -> int:
    """Payment workflows on the test's task queue, polled (visibility is eventually
    consistent). Child workflows of the saga (fraud check) are not payments."""
    query = (
        f'TaskQueue = "{stack.settings.temporal_task_queue}" AND WorkflowType = "PaymentWorkflow"'
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    count = await count_workflows(stack.client, query)
    while count < expected and loop.time() < deadline:
        await asyncio.sleep(0.3)
        count = await count_workflows(stack.client, query)
    await asyncio.sleep(1.0)  # anything extra would show up now
    return await count_workflows(stack.client, query)


async def _deduplicated(stack: Stack, expected: int, timeout: float = 30) -> float:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    name = "paybridge_workflow_starts_total"
    while loop.time() < deadline:
        if metric(stack.registry, name, result="deduplicated") >= expected:
            break
        await asyncio.sleep(0.1)
    return metric(stack.registry, name, result="deduplicated")


async def test_replay_is_deduplicated_and_rewritten_ids_are_fresh_payments(stack: Stack) -> None:
    settings, codec = stack.settings, Codec()
    payments = [payment(n) for n in range(COUNT)]
    records = [encode_record(codec, p, as_json=n % 3 == 0) for n, p in enumerate(payments)]
    topic = settings.topic_payments

    async with running_worker(stack), running_bridge(stack):
        await produce_raw(settings, topic, records)
        await read_outcomes(settings, expect=COUNT)
        assert await _settled_count(stack, COUNT) == COUNT

        # The whole topic into itself, unchanged: the bridge deduplicates every record.
        cut = to_millis(datetime.now(UTC))
        plain = await plan_replay(settings, topic, topic)
        assert plain.size == COUNT
        assert (await run_replay(settings, plain)).copied == COUNT
        assert await _deduplicated(stack, COUNT) == COUNT
        assert await _settled_count(stack, COUNT) == COUNT

        # The original records again (those before the first replay), ids rewritten: one new
        # workflow per payment.
        fresh = await plan_replay(settings, topic, topic, end=Position(timestamp_ms=cut))
        assert fresh.size == COUNT
        rewrite = Rewriter(PaymentCreated, "-r1", codec=codec, secret=None)
        result = await run_replay(settings, fresh, rewrite=rewrite)
        assert (result.copied, result.rewritten) == (COUNT, COUNT)
        outcomes = await read_outcomes(settings, expect=2 * COUNT)
        assert await _settled_count(stack, 2 * COUNT) == 2 * COUNT

    new_ids = {o.payment_id for o in outcomes} - {p.payment_id for p in payments}
    assert new_ids == {p.payment_id + "-r1" for p in payments}
    records_now = await read_topic(settings, topic, expect=3 * COUNT)
    assert len(records_now) == 3 * COUNT
    copies = [r for r in records_now if r.key.endswith(b"-r1")]
    assert len(copies) == COUNT
    for record in copies:
        headers = dict(record.headers)
        if headers.get("content-type") == b"application/json":
            assert record.value.startswith(b"{")  # JSON stays JSON
        else:
            assert record.value[:HEADER_LEN] == codec.encode(payments[0])[:HEADER_LEN]
        event = codec.decode(PaymentCreated, record.value, headers=record.headers)
        assert record.key == event.payment_id.encode()
        assert event.event_id.endswith("-r1")


async def test_group_reset_refused_while_the_group_has_a_live_member(stack: Stack) -> None:
    settings = stack.settings
    before = payment(1, created_at=datetime(2026, 1, 1, tzinfo=UTC))
    codec = Codec()
    await produce_raw(settings, settings.topic_payments, [encode_record(codec, before)])
    await asyncio.sleep(0.05)
    cut = to_millis(datetime.now(UTC))
    after = payment(2)
    await produce_raw(settings, settings.topic_payments, [encode_record(codec, after)])

    async with running_bridge(stack):
        with pytest.raises(ReplayError, match="live member"):
            await reset_group(settings, timestamp_ms=cut)

        dry = await reset_group(settings, timestamp_ms=cut, dry_run=True)
        assert len(dry.members) == 1

    plan = (await reset_group(settings, timestamp_ms=cut, topics=[settings.topic_payments])).rows
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.consumer_group)
    finally:
        await admin.close()
    by_tp = {(tp.topic, tp.partition): meta.offset for tp, meta in committed.items()}
    for row in plan:
        assert by_tp[(row.topic, row.partition)] == row.new
    # Exactly the record after the cut is ahead of the group again.
    assert sum(1 for row in plan if row.committed is not None and row.new < row.committed) == 1


def _record(value: bytes, headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=0,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=headers,
    )


def test_rewritten_callbacks_are_re_signed_only_with_a_secret() -> None:
    callback = GatewayCallback(
        event_id="e1",
        payment_id="p1",
        gateway_ref="gw-p1",
        status=CallbackStatus.AUTHORIZED,
        occurred_at=datetime.now(UTC),
        signature="",
    )
    callback = callback.model_copy(update={"signature": callback.expected_signature("s3")})
    signed = rewrite_event(callback, "-x", secret="s3")
    assert isinstance(signed, GatewayCallback)
    assert (signed.payment_id, signed.event_id, signed.gateway_ref) == ("p1-x", "e1-x", "gw-p1-x")
    assert signed.signature_valid("s3")
    stale = rewrite_event(callback, "-x", secret=None)
    assert isinstance(stale, GatewayCallback) and not stale.signature_valid("s3")
    later = rewrite_event(callback, "-x", secret="s3", shift=timedelta(hours=1))
    assert isinstance(later, GatewayCallback) and later.signature_valid("s3")
    assert later.occurred_at == callback.occurred_at + timedelta(hours=1)


def test_rewrite_keeps_the_encoding_and_the_subscription(settings: Settings) -> None:
    codec = Codec()
    original = payment(5, metadata={"subscription_id": "sub-1", "term": "2"})
    rewrite = Rewriter(PaymentCreated, "-z", codec=codec, secret=None)
    key, value, headers = rewrite(_record(codec.encode(original), []))
    fresh = Rewriter(PaymentCreated, "-f", codec=codec, secret=None, refresh_timestamps=True)
    _, refreshed, _ = fresh(_record(codec.encode(original), []))
    moved = codec.decode(PaymentCreated, refreshed).created_at - original.created_at
    assert moved > timedelta(days=365 * 50)  # the test record's Kafka timestamp is 0 (1970)
    assert key == (original.payment_id + "-z").encode() and headers == []
    assert value[:HEADER_LEN] == codec.encode(original)[:HEADER_LEN]
    event = codec.decode(PaymentCreated, value)
    assert event.metadata == {"subscription_id": "sub-1-z", "term": "2"}
    json_headers = [("content-type", b"application/json")]
    key, value, headers = rewrite(_record(codec.encode_json(original), json_headers))
    assert headers == json_headers and value.startswith(b"{")
    assert codec.decode(PaymentCreated, value, headers=headers).payment_id.endswith("-z")
