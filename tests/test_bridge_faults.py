"""The bridge under faults: hostile input, Temporal outage, kill -9, scale-out.

Everything runs against the real Temporal dev server and the real broker; bridges run as
separate `paybridge bridge` processes where a process boundary matters (crash, readiness,
two group members).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from plumbing.settings import Settings
from schemas.codec import MAGIC, Codec
from schemas.events import CallbackStatus, GatewayCallback, PaymentCreated, PaymentOutcome
from tests import scale
from tests.bridge_process import BridgeProcess
from tests.servers import Server
from tests.support import (
    GATEWAY_SECRET,
    Stack,
    count_workflows,
    metric,
    payment,
    produce_raw,
    read_topic,
    running_bridge,
    running_worker,
)
from tools.producing import encode_record
from workflows.simulations.gateway import GatewayBehaviour, signed_callback

JSON = [("content-type", b"application/json")]


def assert_once_each(outcomes: list[PaymentOutcome], payment_ids: set[str]) -> None:
    counts = Counter(o.payment_id for o in outcomes)
    duplicated = {pid: n for pid, n in counts.items() if n > 1}
    missing = payment_ids - set(counts)
    assert not duplicated, f"{len(duplicated)} payments with several outcomes: {duplicated}"
    assert not missing, f"{len(missing)} payments without outcome, e.g. {sorted(missing)[:5]}"
    assert set(counts) == payment_ids


async def where_are(stack: Stack, payment_ids: set[str]) -> str:
    """The state of a few payments, for a failure message."""
    from schemas.workflow_api import PaymentState

    lines = []
    for pid in sorted(payment_ids)[:3]:
        handle = stack.client.get_workflow_handle(f"payment-{pid}")
        try:
            state = await handle.query("status", result_type=PaymentState)
            steps = ", ".join(f"{s.name}@{s.at:%H:%M:%S}" for s in state.steps)
            lines.append(f"{pid}: {state.status.value} [{steps}]")
        except Exception as exc:
            lines.append(f"{pid}: {exc!r}")
    return "\n".join(lines)


async def check_once_each(
    stack: Stack, outcomes: list[PaymentOutcome], payment_ids: set[str]
) -> None:
    missing = payment_ids - {o.payment_id for o in outcomes}
    if missing:
        print(await where_are(stack, missing))
    assert_once_each(outcomes, payment_ids)


async def outcomes_of(settings: Settings, expect: int, timeout: float) -> list[PaymentOutcome]:
    codec = Codec()
    records = await read_topic(settings, settings.topic_outcomes, expect=expect, timeout=timeout)
    return [codec.decode(PaymentOutcome, r.value) for r in records]


async def settled_count(stack: Stack, expected: int, timeout: float = 30) -> int:
    query = f'TaskQueue = "{stack.settings.temporal_task_queue}"'
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = await count_workflows(stack.client, query)
        if count >= expected:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1)
    return await count_workflows(stack.client, query)


def hostile_records(
    codec: Codec, victim_ids: list[str]
) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """One of each kind of bad record of the acceptance list, for the payments topic."""
    rng = random.Random(11)
    good = codec.encode(payment(0))
    wrong_fingerprint = MAGIC + bytes(rng.randrange(256) for _ in range(8)) + good[10:]
    missing = json.loads(codec.encode_json(payment(1)))
    del missing["amount_minor"]
    negative = payment(2).model_copy(update={"amount_minor": -500})
    lower = payment(3).model_copy(update={"currency": "eur"})
    utf8_bad_key = payment(4)
    return [
        (b"random", bytes(rng.randrange(256) for _ in range(300)), []),
        (victim_ids[0].encode(), good[: len(good) // 2], []),
        (b"fingerprint", wrong_fingerprint, []),
        (b"missing", json.dumps(missing).encode(), JSON),
        (negative.payment_id.encode(), codec.encode(negative), []),
        (lower.payment_id.encode(), codec.encode_json(lower), JSON),
        (b"huge", os.urandom(5 * 1024 * 1024), []),
        (b"\xff\xfe\xfd", codec.encode(utf8_bad_key), []),
    ]


def forged_callbacks(
    codec: Codec, payment_ids: list[str]
) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    from datetime import UTC, datetime

    forged = []
    for n, pid in enumerate(payment_ids):
        callback = GatewayCallback(
            event_id=f"forged-{n}",
            payment_id=pid,
            gateway_ref=f"forged-{n}",
            status="DECLINED",
            occurred_at=datetime.now(UTC),
            signature="00" * 32,
        )
        if n % 2:  # the other half: signed with the wrong key
            callback = callback.model_copy(
                update={"signature": callback.expected_signature("guess")}
            )
        forged.append((pid.encode(), codec.encode(callback), []))
    return forged


async def drain(
    stack: Stack, good: list, bad: list, forged: list
) -> tuple[float, list[PaymentOutcome]]:
    settings, codec = stack.settings, Codec()
    records = [encode_record(codec, p, as_json=n % 3 == 0) for n, p in enumerate(good)]
    mixed = list(records)
    for n, record in enumerate(bad):
        mixed.insert((n * 13) % len(mixed), record)
    async with running_worker(stack), running_bridge(stack):
        started = time.monotonic()
        await asyncio.gather(
            produce_raw(settings, settings.topic_payments, mixed),
            produce_raw(settings, settings.topic_callbacks, forged),
        )
        outcomes = await outcomes_of(settings, len(good), timeout=300)
        elapsed = time.monotonic() - started
    return elapsed, outcomes


async def test_hostile_input_goes_to_dlq_and_good_records_flow(
    stack: Stack, settings: Settings
) -> None:
    codec = Codec()
    clean_good = [payment(n) for n in range(100)]
    clean_time, clean = await drain(stack, clean_good, [], [])
    assert_once_each(clean, {p.payment_id for p in clean_good})

    # The same again with every kind of bad record interleaved, on fresh topics.
    from plumbing.kafka import create_topics

    tag = os.urandom(4).hex()
    hostile_settings = settings.model_copy(
        update={
            "consumer_group": settings.consumer_group + tag,
            **{
                f: getattr(settings, f) + tag
                for f in (
                    "topic_payments",
                    "topic_callbacks",
                    "topic_cancels",
                    "topic_outcomes",
                    "topic_dlq",
                )
            },
        }
    )
    await create_topics(hostile_settings)
    hostile = Stack(settings=hostile_settings, client=stack.client, ledger=stack.ledger)
    good = [payment(n) for n in range(100)]
    bad = hostile_records(codec, [good[0].payment_id])
    forged = forged_callbacks(codec, [p.payment_id for p in good[:6]])
    hostile_time, outcomes = await drain(hostile, good, bad, forged)

    assert_once_each(outcomes, {p.payment_id for p in good})
    dead = await read_topic(
        hostile_settings, hostile_settings.topic_dlq, expect=len(bad) + len(forged)
    )
    assert len(dead) == len(bad) + len(forged)
    by_reason = Counter(dict(r.headers)["dlq.reason"].decode() for r in dead)
    assert by_reason == {
        "undecodable": 3,  # random bytes, truncated Avro, 5 MB value
        "unknown_schema": 1,  # wrong fingerprint
        "validation": 4,  # missing field, negative amount, lower-case currency, bad key
        "bad_signature": len(forged),
    }
    originals = {(k, v) for k, v, _ in bad + forged}
    assert {(r.key, r.value) for r in dead} == originals
    for record in dead:
        headers = dict(record.headers)
        source = headers["dlq.source.topic"].decode()
        assert source in (hostile_settings.topic_payments, hostile_settings.topic_callbacks)
        assert int(headers["dlq.source.partition"]) in range(6)
        assert int(headers["dlq.source.offset"]) >= 0
        assert headers["dlq.error.class"] in (b"DecodeError", b"SignatureError")
        assert headers["dlq.error.message"] and headers["dlq.failed_at"]
    # Forged callbacks never reached a workflow: the payments they named still succeeded.
    assert {
        o.status.value for o in outcomes if o.payment_id in {p.payment_id for p in good[:6]}
    } == {"SUCCEEDED"}
    print(f"drain: clean {clean_time:.1f}s, with bad records {hostile_time:.1f}s")
    assert hostile_time < 2 * clean_time


async def test_two_bridge_processes_share_the_partitions(stack: Stack, tmp_path: Path) -> None:
    settings, codec = stack.settings, Codec()
    payments = [payment(n) for n in range(scale.pick(ci=120, long=300))]
    bridges = [BridgeProcess(settings, log_path=tmp_path / f"bridge-{n}.log") for n in range(2)]
    async with running_worker(stack):
        try:
            for bridge in bridges:
                bridge.start()
            for bridge in bridges:
                await bridge.wait_ready()
            await asyncio.sleep(3)  # both members joined: the group has rebalanced
            await produce_raw(
                settings, settings.topic_payments, [encode_record(codec, p) for p in payments]
            )
            outcomes = await outcomes_of(settings, len(payments), timeout=300)
            starts = [
                await b.sample("paybridge_workflow_starts_total", result="started") for b in bridges
            ]
        finally:
            codes = [b.stop() for b in bridges]
    await check_once_each(stack, outcomes, {p.payment_id for p in payments})
    assert all(n > 0 for n in starts), f"a bridge took no work: {starts}"
    assert sum(starts) == len(payments)
    assert codes == [0, 0]
    assert await settled_count(stack, len(payments)) == len(payments)


async def test_kill_9_the_bridge_three_times(stack: Stack, tmp_path: Path) -> None:
    settings, codec = stack.settings, Codec()
    rng = random.Random(2026)
    # CI: enough payments that all three kills land while sagas are running (asserted below).
    payments = [payment(n) for n in range(scale.pick(ci=300, long=2000))]
    running = f'TaskQueue = "{settings.temporal_task_queue}" AND ExecutionStatus = "Running"'
    in_flight_at_kills = []
    # A static group identity lets the restarted bridge replace the killed one at once; without
    # it Kafka waits for the dead member's session to expire, and the embedded broker never does.
    static = settings.model_copy(update={"group_instance_id": "bridge-under-kill"})
    bridge = BridgeProcess(static, log_path=tmp_path / "bridge.log")
    async with running_worker(stack):
        producing = asyncio.create_task(
            produce_raw(
                settings, settings.topic_payments, [encode_record(codec, p) for p in payments]
            )
        )
        bridge.start()
        try:
            for _ in range(3):
                await bridge.wait_ready()
                await asyncio.sleep(rng.uniform(1.0, 6.0))
                in_flight_at_kills.append(await count_workflows(stack.client, running))
                bridge.kill()
                bridge.start()
            await producing
            # 2,000 sagas at 5 to 8 payments/s on 2 cores, slower under the rest of the suite
            outcomes = await outcomes_of(settings, len(payments), timeout=600)
        finally:
            bridge.stop()
    assert all(in_flight_at_kills), f"a kill landed with no saga running: {in_flight_at_kills}"
    assert_once_each(outcomes, {p.payment_id for p in payments})
    assert len(outcomes) == len(payments)
    assert await settled_count(stack, len(payments)) == len(payments)


async def test_temporal_outage_loses_nothing(
    stack: Stack, temporal_server: Server, tmp_path: Path
) -> None:
    settings, codec = stack.settings, Codec()
    payments = [payment(n) for n in range(scale.pick(ci=300, long=1000))]
    first = scale.pick(ci=60, long=200)  # starts before Temporal goes down
    running = f'TaskQueue = "{settings.temporal_task_queue}" AND ExecutionStatus = "Running"'
    bridge = BridgeProcess(settings, log_path=tmp_path / "bridge.log")
    async with running_worker(stack):
        bridge.start()
        try:
            await bridge.wait_ready()
            await produce_raw(
                settings, settings.topic_payments, [encode_record(codec, p) for p in payments]
            )
            while await bridge.sample("paybridge_workflow_starts_total", result="started") < first:
                await asyncio.sleep(0.2)
            in_flight = await count_workflows(stack.client, running)
            await temporal_server.stop()
            down_at = time.monotonic()
            readiness = []
            while time.monotonic() - down_at < 20:
                readiness.append((await bridge.get("/readyz"))[0])
                await asyncio.sleep(1)
            await temporal_server.start()
            outcomes = await outcomes_of(settings, len(payments), timeout=300)
            retries = await bridge.sample("paybridge_temporal_retries_total")
            dead = await bridge.sample("paybridge_dlq_records_total")
        finally:
            bridge.stop()
    assert 503 in readiness, f"bridge stayed ready while Temporal was down: {readiness}"
    assert in_flight > 0, "no saga was running when Temporal went down"
    assert retries > 0
    assert dead == 0
    assert_once_each(outcomes, {p.payment_id for p in payments})
    assert await settled_count(stack, len(payments)) == len(payments)


def callback_for(
    p: PaymentCreated, status: CallbackStatus = CallbackStatus.AUTHORIZED
) -> GatewayCallback:
    return signed_callback(
        payment_id=p.payment_id,
        gateway_ref=f"gw-{p.payment_id}",
        status=status,
        secret=GATEWAY_SECRET,
    )


async def callbacks_applied(stack: Stack, payment_id: str) -> int:
    from schemas.workflow_api import PaymentState

    handle = stack.client.get_workflow_handle(f"payment-{payment_id}")
    state = await handle.query("status", result_type=PaymentState)
    return sum(1 for step in state.steps if step.name == "gateway callback")


async def test_callback_before_its_payment_is_applied(stack: Stack) -> None:
    settings, codec = stack.settings, Codec()
    early, never = payment(1), payment(2)
    silent = GatewayBehaviour(callbacks=False)  # the only callbacks are the ones produced here
    async with running_worker(stack, gateway=silent), running_bridge(stack):
        await produce_raw(
            settings,
            settings.topic_callbacks,
            [
                (early.payment_id.encode(), codec.encode(callback_for(early)), []),
                (never.payment_id.encode(), codec.encode(callback_for(never)), []),
            ],
        )
        await asyncio.sleep(2)  # the callbacks are consumed and wait for their payments
        await produce_raw(settings, settings.topic_payments, [encode_record(codec, early)])
        outcomes = await outcomes_of(settings, 1, timeout=60)
        dead = await read_topic(settings, settings.topic_dlq, expect=1, timeout=30)
        applied = await callbacks_applied(stack, early.payment_id)
    assert [(o.payment_id, o.status.value) for o in outcomes] == [(early.payment_id, "SUCCEEDED")]
    assert applied == 1
    # A callback whose payment never came is dead-lettered after PAYBRIDGE_ORPHAN_TIMEOUT (5 s).
    assert [r.key for r in dead] == [never.payment_id.encode()]
    assert dict(dead[0].headers)["dlq.reason"] == b"orphan"
    assert (
        metric(
            stack.registry,
            "paybridge_dlq_records_total",
            topic=settings.topic_callbacks,
            reason="orphan",
        )
        == 1
    )


async def test_a_burst_of_early_callbacks_does_not_block_their_payments(stack: Stack) -> None:
    """Ten times the in-flight limit of callbacks arrives before any payment. Each is applied
    with one call (it starts a run that waits for its payment) and committed at once: nothing
    stays in flight, the callbacks partitions' commits reach their end, and when the payments
    come every callback is applied (a lost one would time its payment out).

    (Before signal-with-start the callbacks waited inside the bridge, against a budget whose
    pauses once held back the very payments they waited for.)"""
    count = scale.pick(ci=100, long=200)
    settings = stack.settings.model_copy(
        update={"max_inflight": count // 10, "orphan_timeout": timedelta(minutes=3)}
    )
    stack = Stack(settings=settings, client=stack.client, ledger=stack.ledger)
    codec = Codec()
    payments = [payment(n) for n in range(count)]
    callbacks = [(p.payment_id.encode(), codec.encode(callback_for(p)), []) for p in payments]
    silent = GatewayBehaviour(callbacks=False)
    async with running_worker(stack, gateway=silent), running_bridge(stack) as bridge:
        await produce_raw(settings, settings.topic_callbacks, callbacks)
        cb = {"signal": "gateway_callback", "result": "started"}
        while metric(stack.registry, "paybridge_signals_total", **cb) < len(payments):
            await asyncio.sleep(0.2)
        await bridge.commit()
        assert bridge.inflight == 0
        assert await committed_to_the_end(settings, settings.topic_callbacks)
        await produce_raw(
            settings, settings.topic_payments, [encode_record(codec, p) for p in payments]
        )
        outcomes = await outcomes_of(settings, len(payments), timeout=240)
        dead = sum(
            sample.value
            for family in stack.registry.collect()
            for sample in family.samples
            if sample.name == "paybridge_dlq_records_total"
        )
    assert_once_each(outcomes, {p.payment_id for p in payments})
    assert {o.status.value for o in outcomes} == {"SUCCEEDED"}  # every callback was applied
    assert dead == 0


async def committed_to_the_end(settings: Settings, topic: str) -> bool:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from plumbing.kafka import client_kwargs

    consumer = AIOKafkaConsumer(
        **client_kwargs(settings), group_id=settings.consumer_group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(parts)
        committed = {tp: await consumer.committed(tp) for tp in parts}
        return all(not ends[tp] or committed[tp] == ends[tp] for tp in parts)
    finally:
        await consumer.stop()


async def test_every_record_twice_shuffled_gives_each_payment_once(stack: Stack) -> None:
    settings = stack.settings.model_copy(update={"orphan_timeout": timedelta(minutes=2)})
    stack = Stack(settings=settings, client=stack.client, ledger=stack.ledger)
    codec, rng = Codec(), random.Random(500)
    payments = [payment(n) for n in range(scale.pick(ci=150, long=500))]
    created = [encode_record(codec, p, as_json=n % 2 == 0) for n, p in enumerate(payments)]
    callbacks = [(p.payment_id.encode(), codec.encode(callback_for(p)), []) for p in payments]
    created, callbacks = created * 2, callbacks * 2
    rng.shuffle(created)
    rng.shuffle(callbacks)
    silent = GatewayBehaviour(callbacks=False)
    async with running_worker(stack, gateway=silent), running_bridge(stack):
        await asyncio.gather(
            produce_raw(settings, settings.topic_callbacks, callbacks),
            produce_raw(settings, settings.topic_payments, created),
        )
        outcomes = await outcomes_of(settings, len(payments), timeout=300)
        await check_once_each(stack, outcomes, {p.payment_id for p in payments})
        applied = Counter([await callbacks_applied(stack, p.payment_id) for p in payments[::10]])
        signals = {
            result: metric(
                stack.registry, "paybridge_signals_total", signal="gateway_callback", result=result
            )
            for result in ("started", "signalled", "closed")
        }
        starts = {
            result: metric(stack.registry, "paybridge_workflow_starts_total", result=result)
            for result in ("started", "deduplicated")
        }
    assert {o.status.value for o in outcomes} == {"SUCCEEDED"}
    assert applied == {1: len(payments[::10])}  # each callback applied once, copies ignored
    # Both copies of every record applied, none dead-lettered; one run per payment, started by
    # its first PaymentCreated or by a callback that came first (which the payment then joined).
    assert sum(signals.values()) == 2 * len(payments)
    assert starts["started"] + starts["deduplicated"] == 2 * len(payments)
    assert starts["started"] + signals["started"] == len(payments)
    assert await settled_count(stack, len(payments)) == len(payments)
