"""A PaymentCreated produced to Kafka becomes exactly one workflow and exactly one outcome."""

from __future__ import annotations

import asyncio
import os

from temporalio.client import Client

from plumbing.settings import Settings
from schemas.codec import Codec
from schemas.events import OutcomeStatus
from schemas.ids import payment_workflow_id
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


async def wait_for_count(client: Client, query: str, expected: int, timeout: float = 30) -> int:
    """Visibility is eventually consistent: poll until the count settles."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    count = -1
    while loop.time() < deadline:
        count = await count_workflows(client, query)
        if count >= expected:
            await asyncio.sleep(1.0)
            return await count_workflows(client, query)
        await asyncio.sleep(0.3)
    return count


async def test_200_payments_mixed_avro_and_json_once_each(stack: Stack) -> None:
    settings, codec = stack.settings, Codec()
    payments = [payment(n) for n in range(200)]
    records = [encode_record(codec, p, as_json=n % 2 == 1) for n, p in enumerate(payments)]
    query = f'TaskQueue = "{settings.temporal_task_queue}"'

    async with running_worker(stack), running_bridge(stack):
        await produce_raw(settings, settings.topic_payments, records)
        outcomes = await read_outcomes(settings, expect=200)
        assert await wait_for_count(stack.client, query, 200) == 200

    assert sorted(o.payment_id for o in outcomes) == sorted(p.payment_id for p in payments)
    assert all(o.status == OutcomeStatus.SUCCEEDED for o in outcomes)
    assert {o.workflow_id for o in outcomes} == {
        payment_workflow_id(p.payment_id) for p in payments
    }
    by_id = {p.payment_id: p for p in payments}
    for outcome in outcomes:
        assert outcome.amount_minor == by_id[outcome.payment_id].amount_minor
        assert outcome.created_at == by_id[outcome.payment_id].created_at
    consumed = metric(
        stack.registry,
        "paybridge_events_consumed_total",
        topic=settings.topic_payments,
        result="started",
    )
    assert consumed == 200
    assert metric(stack.registry, "paybridge_workflow_starts_total", result="started") == 200

    # The same 200 records again, and a bridge in a new group that starts from offset 0.
    fresh = Stack(
        settings=settings.model_copy(update={"consumer_group": settings.consumer_group + "-2"}),
        client=stack.client,
        ledger=stack.ledger,
    )
    await produce_raw(settings, settings.topic_payments, records)
    async with running_worker(fresh), running_bridge(fresh) as bridge:
        for _ in range(200):
            if (
                metric(fresh.registry, "paybridge_workflow_starts_total", result="deduplicated")
                >= 400
            ):
                break
            await asyncio.sleep(0.1)
        assert bridge.inflight == 0
    assert metric(fresh.registry, "paybridge_workflow_starts_total", result="deduplicated") == 400
    assert metric(fresh.registry, "paybridge_workflow_starts_total", result="started") == 0

    assert await wait_for_count(stack.client, query, 200) == 200
    again = await read_outcomes(settings, expect=200)
    assert len(again) == 200
    assert len({o.event_id for o in again}) == 200


async def test_bad_records_are_skipped_and_do_not_block(stack: Stack) -> None:
    settings, codec = stack.settings, Codec()
    good = [payment(n) for n in range(20)]
    bad = [
        (b"k-random", os.urandom(40).replace(b"\xc3", b"\x00"), []),
        (b"k-json", b'{"payment_id": "x"}', [("content-type", b"application/json")]),
        (good[0].payment_id.encode(), codec.encode(good[0])[:15], []),
        (b"\xff\xfe", codec.encode(good[1].model_copy(update={"currency": "eur"})), []),
    ]
    records = []
    for n, p in enumerate(good):
        records.append(encode_record(codec, p))
        if n % 5 == 0:
            records.append(bad[n // 5])

    async with running_worker(stack), running_bridge(stack) as bridge:
        await produce_raw(settings, settings.topic_payments, records)
        outcomes = await read_outcomes(settings, expect=20)
        dead = await read_topic(settings, settings.topic_dlq, expect=4)
        for _ in range(50):
            if bridge.inflight == 0:
                break
            await asyncio.sleep(0.1)
        await bridge.commit()

    assert sorted(o.payment_id for o in outcomes) == sorted(p.payment_id for p in good)
    assert len(dead) == 4
    assert {(r.key, r.value) for r in dead} == {(k, v) for k, v, _ in bad}
    reasons = sorted(dict(r.headers)["dlq.reason"].decode() for r in dead)
    assert reasons == ["undecodable", "undecodable", "validation", "validation"]
    for record in dead:
        headers = dict(record.headers)
        assert headers["dlq.source.topic"] == settings.topic_payments.encode()
        assert int(headers["dlq.source.offset"]) >= 0
        assert headers["dlq.error.class"] == b"DecodeError"
        assert headers["dlq.error.message"]
        assert headers["dlq.failed_at"].endswith(b"Z")
    assert (
        metric(
            stack.registry,
            "paybridge_dlq_records_total",
            topic=settings.topic_payments,
            reason="validation",
        )
        == 2
    )
    assert (
        metric(
            stack.registry,
            "paybridge_events_consumed_total",
            topic=settings.topic_payments,
            result="dlq",
        )
        == 4
    )
    # Everything is done, so the committed offsets reach the end of every partition.
    assert await committed_everything(settings)


async def committed_everything(settings: Settings) -> bool:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from plumbing.kafka import client_kwargs

    consumer = AIOKafkaConsumer(
        **client_kwargs(settings), group_id=settings.consumer_group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = [
            TopicPartition(settings.topic_payments, p)
            for p in consumer.partitions_for_topic(settings.topic_payments) or ()
        ]
        ends = await consumer.end_offsets(parts)
        for tp in parts:
            committed = await consumer.committed(tp)
            if ends[tp] and committed != ends[tp]:
                return False
        return True
    finally:
        await consumer.stop()


async def test_unknown_account_is_rejected_with_reason(stack: Stack) -> None:
    settings, codec = stack.settings, Codec()
    unknown = payment(1, account_id="acct-9999")
    odd_currency = payment(2, currency="JPY")
    async with running_worker(stack), running_bridge(stack):
        await produce_raw(
            settings,
            settings.topic_payments,
            [encode_record(codec, unknown), encode_record(codec, odd_currency)],
        )
        outcomes = {o.payment_id: o for o in await read_outcomes(settings, expect=2)}
    assert outcomes[unknown.payment_id].status == OutcomeStatus.REJECTED
    assert outcomes[unknown.payment_id].reason == "unknown account acct-9999"
    assert outcomes[odd_currency.payment_id].status == OutcomeStatus.REJECTED
    assert "JPY" in (outcomes[odd_currency.payment_id].reason or "")
