"""Hostile records on the real consumer path: the embedded broker, the bridge, the worker.

Whatever the bytes (keys, values, header keys and values: not UTF-8, empty, huge, many), the
bridge stays up, the bad record ends in the DLQ with a reason and every contract header, and
the good payments around it complete. The fuzzer draws its records with hypothesis (fixed
seed, as the ``ci`` profile is derandomized) and checks each against the reason the contract
gives it; about 40 s with the servers of the session.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.consumer import check_key
from bridge.routing import verify_signature
from plumbing.settings import Settings
from schemas.codec import MAGIC, Codec
from schemas.errors import DecodeError
from schemas.events import (
    CallbackStatus,
    Event,
    GatewayCallback,
    PaymentCancelRequested,
    PaymentCreated,
)
from schemas.ids import payment_workflow_id
from tests.raw_kafka import Header, produce_raw_headers
from tests.support import (
    GATEWAY_SECRET,
    Stack,
    payment,
    read_outcomes,
    read_topic,
    running_bridge,
    running_worker,
)
from tools.producing import encode_record
from workflows.simulations.gateway import signed_callback

CODEC = Codec()
JSON = [("content-type", b"application/json")]
DLQ_HEADERS = {
    "dlq.source.topic",
    "dlq.source.partition",
    "dlq.source.offset",
    "dlq.error.class",
    "dlq.error.message",
    "dlq.reason",
    "dlq.failed_at",
}
Raw = tuple[bytes | None, bytes | None, Sequence[Header]]


def reason_for(
    topic_kind: str, key: bytes | None, value: bytes | None, headers: Sequence[Header]
) -> str | None:
    """The DLQ reason the contract gives this record, or None if it is a valid event."""
    if any(isinstance(k, bytes) and not _utf8(k) for k, _ in headers):
        return "undecodable"
    text_headers = [(k.decode() if isinstance(k, bytes) else k, v) for k, v in headers]
    event_type: type[Event] = {
        "payments": PaymentCreated,
        "callbacks": GatewayCallback,
        "cancels": PaymentCancelRequested,
    }[topic_kind]
    try:
        event = CODEC.decode(event_type, value, headers=text_headers)  # type: ignore[arg-type]
        check_key(key, event.payment_id)
        if isinstance(event, GatewayCallback):
            verify_signature(GATEWAY_SECRET)(event)
    except DecodeError as exc:
        return exc.kind
    return None


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def topics(settings: Settings) -> dict[str, str]:
    return {
        "payments": settings.topic_payments,
        "callbacks": settings.topic_callbacks,
        "cancels": settings.topic_cancels,
    }


def check_dead_letters(
    dead: list[Any], expected: dict[tuple[str, bytes | None, bytes | None], str]
) -> None:
    """Each expected (topic, key, value) is in the DLQ once, with its reason and every contract
    header; nothing else is."""
    found: Counter[tuple[str, bytes | None, bytes | None]] = Counter()
    for record in dead:
        headers = dict(record.headers)
        assert set(headers) >= DLQ_HEADERS, sorted(headers)
        topic = headers["dlq.source.topic"].decode()
        where = (topic, record.key, record.value)
        found[where] += 1
        assert where in expected, f"unexpected dead letter {where[0]} {where[1]!r:.60}"
        assert headers["dlq.reason"].decode() == expected[where], (where, headers["dlq.reason"])
        assert int(headers["dlq.source.partition"]) >= 0 and int(headers["dlq.source.offset"]) >= 0
        assert headers["dlq.error.class"] in (b"DecodeError", b"SignatureError")
        assert headers["dlq.error.message"] and headers["dlq.failed_at"].endswith(b"Z")
    missing = set(expected) - set(found)
    assert not missing, (
        f"{len(missing)} bad records not in the DLQ, e.g. {sorted(missing)[0]!r:.200}"
    )
    assert all(n == 1 for n in found.values()), "a record was dead-lettered twice"


async def test_a_header_key_that_is_not_utf8_does_not_stop_the_bridge(stack: Stack) -> None:
    """Break 2 of issue 12, the outside check at a small count: after a record whose header key
    is not UTF-8 the bridge stopped silently (aiokafka raised in every poll). Now that record is
    dead-lettered as undecodable, with its key written escaped, and the payments around it, in
    the same partition and batch, complete."""
    settings = stack.settings
    good = [payment(n) for n in range(6)]
    victim = payment(99)
    bad_headers: list[Header] = [("trace", b"t"), (b"\xff\xfebad-key", b"\xff\x00"), ("", b"")]
    bad_key, bad_value, _ = encode_record(CODEC, victim)
    records: list[Raw] = [encode_record(CODEC, good[0]), (bad_key, bad_value, bad_headers)]
    records += [encode_record(CODEC, p) for p in good[1:]]
    async with running_worker(stack), running_bridge(stack) as bridge:
        offsets = await produce_raw_headers(settings, settings.topic_payments, records, partition=0)
        outcomes = await read_outcomes(settings, expect=len(good), timeout=120)
        dead = await read_topic(settings, settings.topic_dlq, expect=1, timeout=30)
        assert bridge.failure is None and not bridge.stopping
    assert sorted(o.payment_id for o in outcomes) == sorted(p.payment_id for p in good)
    assert {o.status.value for o in outcomes} == {"SUCCEEDED"}
    [letter] = dead
    assert (letter.key, letter.value) == (bad_key, bad_value)
    headers = list(letter.headers)
    assert headers[:3] == [("trace", b"t"), ("\\xff\\xfebad-key", b"\xff\x00"), ("", b"")]
    found = dict(headers)
    assert found["dlq.reason"] == b"undecodable"
    assert found["dlq.source.offset"] == str(offsets[1]).encode()
    assert b"\\xff\\xfebad-key" in found["dlq.error.message"]
    assert victim.payment_id not in {o.payment_id for o in outcomes}
    try:
        await stack.client.get_workflow_handle(payment_workflow_id(victim.payment_id)).describe()
    except Exception as exc:  # NOT_FOUND: the record never reached Temporal
        assert "not found" in str(exc).lower()
    else:
        raise AssertionError("the bad record started a workflow")


def hostile_classes(payment_ids: list[str]) -> list[tuple[str, str, Raw]]:
    """The issue's ten hostile classes, and the other values of break 5: (topic kind, DLQ
    reason, record)."""
    rng = random.Random(12)
    good = CODEC.encode(payment(0))
    missing = json.loads(CODEC.encode_json(payment(1)))
    del missing["amount_minor"]
    negative = payment(2).model_construct(**{**payment(2).model_dump(), "amount_minor": -500})
    lower = payment(3).model_construct(**{**payment(3).model_dump(), "currency": "eur"})
    huge = payment(4)
    huge = huge.model_construct(**{**huge.model_dump(), "metadata": {"k": "v" * 900_000}})
    non_utf8_key = payment(5)
    forged = signed_callback(
        payment_id=payment_ids[0],
        gateway_ref="forged",
        status=CallbackStatus.DECLINED,
        secret="guess",
    )
    accented = forged.model_copy(update={"signature": "é" * 64, "event_id": "forged-2"})
    deep = json.dumps(json.loads(CODEC.encode_json(payment(6))))[:-1] + ', "x": ' + "[" * 5000
    deep += "]" * 5000 + "}"
    keyless = payment(7)
    long_reason = {
        "event_id": "cancel-long",
        "payment_id": payment_ids[1],
        "reason": "r" * 501,
        "requested_at": 1_700_000_000_000,
    }
    return [
        ("payments", "undecodable", (b"random", bytes(rng.randrange(256) for _ in range(300)), [])),
        ("payments", "undecodable", (b"truncated", good[: len(good) // 2], [])),
        ("payments", "unknown_schema", (b"fp", MAGIC + os.urandom(8) + good[10:], [])),
        ("payments", "validation", (b"missing", json.dumps(missing).encode(), JSON)),
        ("payments", "validation", (negative.payment_id.encode(), CODEC.encode(negative), [])),
        ("payments", "validation", (lower.payment_id.encode(), CODEC.encode_json(lower), JSON)),
        ("payments", "validation", (huge.payment_id.encode(), CODEC.encode(huge), [])),
        ("payments", "validation", (b"\xff\xfe\xfd", CODEC.encode(non_utf8_key), [])),
        ("payments", "undecodable", (b"json", b'{"payment_id": "x", ', JSON)),
        ("callbacks", "bad_signature", (forged.payment_id.encode(), CODEC.encode(forged), [])),
        # break 5 and 2: non-ASCII signature, deep JSON, no key, long reason, header key
        ("callbacks", "bad_signature", (accented.payment_id.encode(), CODEC.encode(accented), [])),
        ("payments", "undecodable", (b"deep", deep.encode(), JSON)),
        ("payments", "validation", (None, CODEC.encode(keyless), [])),
        (
            "cancels",
            "validation",
            (payment_ids[1].encode(), json.dumps(long_reason).encode(), JSON),
        ),
        ("payments", "undecodable", (b"hk", good, [(b"\xc3\x28", b"v")])),
    ]


async def test_every_hostile_class_is_dead_lettered_and_payments_flow(stack: Stack) -> None:
    """The issue's third outside check at a small count (20 payments, not 100): each hostile
    class in the DLQ with every contract header and its reason, every good payment completes."""
    settings = stack.settings
    good = [payment(n) for n in range(20)]
    hostile = hostile_classes([p.payment_id for p in good])
    for kind, reason, (key, value, headers) in hostile:
        assert reason_for(kind, key, value, headers) == reason, (kind, reason, key)
    by_topic: dict[str, list[Raw]] = {kind: [] for kind in topics(settings)}
    for n, p in enumerate(good):
        by_topic["payments"].append(encode_record(CODEC, p, as_json=n % 2 == 1))
        if n < len(hostile):
            kind, _, record = hostile[n]
            by_topic[kind].append(record)
    async with running_worker(stack), running_bridge(stack) as bridge:
        for kind, records in by_topic.items():
            await produce_raw_headers(settings, topics(settings)[kind], records)
        outcomes = await read_outcomes(settings, expect=len(good), timeout=120)
        dead = await read_topic(settings, settings.topic_dlq, expect=len(hostile), timeout=60)
        assert bridge.failure is None
    assert sorted(o.payment_id for o in outcomes) == sorted(p.payment_id for p in good)
    assert {o.status.value for o in outcomes} == {"SUCCEEDED"}
    expected = {(topics(settings)[k], r[0], r[1]): reason for k, reason, r in hostile}
    check_dead_letters(dead, expected)


# -- the fuzzer ------------------------------------------------------------------------------

raw_bytes = st.one_of(
    st.binary(max_size=64),
    st.just(b""),
    st.binary(min_size=1, max_size=8).map(lambda b: b"\xff" + b),  # never UTF-8
    st.integers(70_000, 300_000).map(lambda n: os.urandom(n)),  # large
)
header_keys = st.one_of(
    st.text(max_size=20),
    st.just(""),
    st.binary(min_size=1, max_size=12).map(lambda b: b"\xfe" + b),  # not UTF-8
    st.text(min_size=1, max_size=4).map(lambda t: t * 500),  # long
)
header_values = st.one_of(st.none(), st.binary(max_size=32), st.just(b"x" * 100_000))
headers = st.one_of(
    st.lists(st.tuples(header_keys, header_values), max_size=6),
    st.integers(200, 2000).map(lambda n: [(f"h{i}", b"v") for i in range(n)]),  # many
)


def _events(pid: str) -> st.SearchStrategy[tuple[str, Event]]:
    cancel = PaymentCancelRequested(
        event_id=f"c-{pid}", payment_id=pid, reason="r", requested_at=datetime.now(UTC)
    )
    forged = signed_callback(
        payment_id=pid, gateway_ref="g", status=CallbackStatus.AUTHORIZED, secret="guess"
    )
    return st.sampled_from(
        [("payments", payment(3, payment_id=pid)), ("cancels", cancel), ("callbacks", forged)]
    )


@st.composite
def hostile_records(draw: st.DrawFn) -> tuple[str, Raw]:
    """A record for one of the input topics that the contract sends to the DLQ."""
    how = draw(st.sampled_from(["bytes", "mutated", "json", "valid-but"]))
    topic = draw(st.sampled_from(["payments", "callbacks", "cancels"]))
    key = draw(st.one_of(st.none(), raw_bytes))
    hdrs = draw(headers)
    if how == "bytes":
        value = draw(
            st.one_of(raw_bytes, st.binary(min_size=1, max_size=40).map(lambda b: MAGIC + b))
        )
    elif how == "json":
        value = draw(st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode)))
        hdrs = [*hdrs, ("content-type", b"application/json")]
    else:
        pid = f"fz-{draw(st.integers(0, 10**6))}"
        topic, event = draw(_events(pid))
        encoded = CODEC.encode(event) if draw(st.booleans()) else CODEC.encode_json(event)
        if encoded[:1] == b"{":
            hdrs = [*hdrs, ("content-type", b"application/json")]
        if how == "mutated":
            cut = draw(st.integers(0, len(encoded)))
            encoded = encoded[:cut] + draw(st.binary(max_size=8)) + encoded[cut + 1 :]
        value = encoded
        key = draw(st.sampled_from([None, b"", pid.encode() + b"\xff", b"other", pid.encode()]))
    return topic, (key, value, hdrs)


def draw_hostile(count: int) -> list[tuple[str, str, Raw]]:
    """``count`` records the contract dead-letters, with their reasons, from hypothesis."""
    found: list[tuple[str, str, Raw]] = []

    @settings(
        max_examples=count * 4,
        database=None,
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(hostile_records())
    def collect(drawn: tuple[str, Raw]) -> None:
        topic, (key, value, hdrs) = drawn
        reason = reason_for(topic, key, value, hdrs)
        seen = {(t, r[0], r[1]) for t, _, r in found}
        if reason is not None and len(found) < count and (topic, key, value) not in seen:
            found.append((topic, reason, (key, value, hdrs)))

    collect()
    return found


async def test_fuzzed_records_end_in_the_dlq_and_the_bridge_stays_up(stack: Stack) -> None:
    """Records drawn by hypothesis on all three input topics, between good payments: each in
    the DLQ once with its reason, the bridge up, every payment completed."""
    settings = stack.settings
    hostile = draw_hostile(60)
    assert len(hostile) == 60
    kinds = Counter(reason for _, reason, _ in hostile)
    assert {"undecodable", "validation"} <= set(kinds), kinds
    good = [payment(n) for n in range(10)]
    async with running_worker(stack), running_bridge(stack) as bridge:
        for n, p in enumerate(good):
            batch = hostile[n * 6 : (n + 1) * 6]
            for kind in topics(settings):
                records = [record for k, _, record in batch if k == kind]
                if records:
                    await produce_raw_headers(settings, topics(settings)[kind], records)
            await produce_raw_headers(settings, settings.topic_payments, [encode_record(CODEC, p)])
        outcomes = await read_outcomes(settings, expect=len(good), timeout=180)
        dead = await read_topic(settings, settings.topic_dlq, expect=len(hostile), timeout=60)
        assert bridge.failure is None and not bridge.stopping
    assert sorted(o.payment_id for o in outcomes) == sorted(p.payment_id for p in good)
    expected: dict[tuple[str, bytes | None, bytes | None], str] = {}
    for kind, reason, (key, value, _) in hostile:
        expected.setdefault((topics(settings)[kind], key, value), reason)
    check_dead_letters(dead, expected)
    print(f"fuzzed: {dict(kinds)}")
