"""``paybridge replay``: copy a range of a topic into an input topic, or rewind the bridge's group.

Copying keeps each record's key, value and headers. The range is fixed before the first record
is copied (end offsets are taken up front), so a topic can be replayed into itself. Without
``rewrite_suffix`` a replay of ``payments.created`` changes nothing: every payment id already
has its workflow and the bridge counts the records as ``deduplicated``.

With ``rewrite_suffix`` each event is decoded, its ids get the suffix (``payment_id``,
``event_id``, a callback's ``gateway_ref``, a payment's ``metadata["subscription_id"]``) and it
is re-encoded as it came: Avro with the same writer schema, JSON as JSON. The key becomes the
new payment id. A gateway callback's signature covers its ids, so a rewritten callback is
re-signed with the gateway secret of the *target* environment; without a secret the replay
refuses (or, with ``keep_signatures``, copies the stale signature on purpose: the bridge will
dead-letter those callbacks as ``bad_signature``).

Rewinding (:func:`reset_group`) commits offsets for the bridge's group directly and refuses
while the group has members: offsets committed under a running bridge would be overwritten by
its next commit (and Kafka itself rejects a commit from outside an active generation).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from plumbing.kafka import client_kwargs, recovering_producer, stop_consumer
from plumbing.kafka import consumer as kafka_consumer
from plumbing.settings import Settings
from schemas.codec import HEADER_LEN, JSON_CONTENT_TYPE, MAGIC, Codec
from schemas.errors import DecodeError, ReplayError
from schemas.events import (
    Event,
    GatewayCallback,
    PaymentCancelRequested,
    PaymentCreated,
    from_millis,
)

log = logging.getLogger(__name__)

SUBSCRIPTION_KEY = "subscription_id"


@dataclass(frozen=True)
class Position:
    """Where a range starts or ends: an offset, or the first record at/after a timestamp."""

    offset: int | None = None
    timestamp_ms: int | None = None

    def __post_init__(self) -> None:
        if (self.offset is None) == (self.timestamp_ms is None):
            raise ValueError("a position is an offset or a timestamp")


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    start: int  # first offset copied
    end: int  # one past the last offset copied

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


@dataclass
class ReplayResult:
    copied: int = 0
    rewritten: int = 0
    skipped_undecodable: int = 0
    by_partition: dict[int, int] = field(default_factory=dict)


def event_type_of(settings: Settings, topic: str) -> type[Event] | None:
    types: dict[str, type[Event]] = {
        settings.topic_payments: PaymentCreated,
        settings.topic_callbacks: GatewayCallback,
        settings.topic_cancels: PaymentCancelRequested,
    }
    return types.get(topic)


async def _offset_at(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    position: Position | None,
    *,
    default: dict[TopicPartition, int],
    first: dict[TopicPartition, int],
    last: dict[TopicPartition, int],
) -> dict[TopicPartition, int]:
    if position is None:
        return dict(default)
    if position.offset is not None:
        return {tp: min(max(position.offset, first[tp]), last[tp]) for tp in tps}
    found = await consumer.offsets_for_times(dict.fromkeys(tps, position.timestamp_ms))
    # No record at or after the timestamp: the position is the end of the partition.
    return {tp: last[tp] if found.get(tp) is None else found[tp].offset for tp in tps}


async def resolve_ranges(
    consumer: AIOKafkaConsumer,
    topic: str,
    *,
    partitions: Sequence[int] | None = None,
    start: Position | None = None,
    end: Position | None = None,
) -> list[PartitionRange]:
    """The offsets to copy per partition; an offset position applies to every partition."""
    known = sorted(consumer.partitions_for_topic(topic) or ())
    if not known:
        raise ReplayError(f"topic {topic} does not exist (or has no partitions)")
    chosen = list(partitions) if partitions else known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise ReplayError(f"topic {topic} has no partition {unknown} (it has {known})")
    tps = [TopicPartition(topic, p) for p in chosen]
    first = await consumer.beginning_offsets(tps)
    last = await consumer.end_offsets(tps)
    starts = await _offset_at(consumer, tps, start, default=first, first=first, last=last)
    ends = await _offset_at(consumer, tps, end, default=last, first=first, last=last)
    return [
        PartitionRange(tp.partition, max(starts[tp], first[tp]), min(ends[tp], last[tp]))
        for tp in tps
    ]


TIMESTAMP_FIELDS = ("created_at", "occurred_at", "requested_at")


def rewrite_event(
    event: Event, suffix: str, *, secret: str | None, shift: timedelta | None = None
) -> Event:
    """``event`` with the suffix on its ids, its timestamps moved by ``shift`` (if given), and
    re-signed with ``secret`` if it is a callback (the signature covers ids and occurred_at)."""
    updates: dict[str, Any] = {
        "event_id": event.event_id + suffix,
        "payment_id": event.payment_id + suffix,
    }
    if shift is not None:
        for name in TIMESTAMP_FIELDS:
            if hasattr(event, name):
                updates[name] = getattr(event, name) + shift
    if isinstance(event, PaymentCreated) and SUBSCRIPTION_KEY in event.metadata:
        updates["metadata"] = {
            **event.metadata,
            SUBSCRIPTION_KEY: event.metadata[SUBSCRIPTION_KEY] + suffix,
        }
    if isinstance(event, GatewayCallback):
        updates["gateway_ref"] = event.gateway_ref + suffix
    rewritten = event.model_copy(update=updates)
    if isinstance(rewritten, GatewayCallback) and secret is not None:
        rewritten = rewritten.model_copy(update={"signature": rewritten.expected_signature(secret)})
    return rewritten


def _is_json(headers: Sequence[tuple[str, bytes]]) -> bool:
    for key, raw in headers:
        if key.lower() == "content-type" and raw is not None:
            return raw.split(b";", 1)[0].strip().lower() == JSON_CONTENT_TYPE
    return False


class Rewriter:
    """Decodes a record, rewrites its ids, and encodes it back in the encoding it came in.

    With ``refresh_timestamps`` the events' own timestamps move by one fixed shift: the time
    between the first record copied (its Kafka timestamp) and the moment it is copied. Spacing
    is kept, and a replayed payment looks created now (its end-to-end latency means something).
    """

    def __init__(
        self,
        event_type: type[Event],
        suffix: str,
        *,
        codec: Codec,
        secret: str | None,
        refresh_timestamps: bool = False,
    ) -> None:
        self.event_type = event_type
        self.suffix = suffix
        self.codec = codec
        self.secret = secret
        self.refresh_timestamps = refresh_timestamps
        self.shift: timedelta | None = None

    def __call__(
        self, record: ConsumerRecord[bytes, bytes]
    ) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        headers = list(record.headers or ())
        event = self.codec.decode(self.event_type, record.value, headers=headers)
        if self.refresh_timestamps and self.shift is None:
            self.shift = datetime.now(UTC) - from_millis(record.timestamp)
        new = rewrite_event(event, self.suffix, secret=self.secret, shift=self.shift)
        if _is_json(headers):
            value = self.codec.encode_json(new)
        else:
            assert record.value is not None and record.value[: len(MAGIC)] == MAGIC
            writer = self.codec.registry.by_fingerprint(record.value[len(MAGIC) : HEADER_LEN])
            value = self.codec.encode(new, schema=writer)
        return new.payment_id.encode(), value, headers


@dataclass(frozen=True)
class ReplayPlan:
    source: str
    destination: str
    ranges: list[PartitionRange]
    rate: float | None = None  # records per second; None: as fast as possible

    @property
    def size(self) -> int:
        return sum(r.size for r in self.ranges)


def source_consumer(settings: Settings) -> AIOKafkaConsumer:
    # Only committed records: an aborted transaction (e.g. a failed DLQ redrive) is not data.
    return kafka_consumer(settings, enable_auto_commit=False, isolation_level="read_committed")


async def plan_replay(
    settings: Settings,
    source: str,
    destination: str,
    *,
    partitions: Sequence[int] | None = None,
    start: Position | None = None,
    end: Position | None = None,
    rate: float | None = None,
) -> ReplayPlan:
    consumer = source_consumer(settings)
    await consumer.start()
    try:
        ranges = await resolve_ranges(consumer, source, partitions=partitions, start=start, end=end)
        if destination not in await consumer.topics():
            raise ReplayError(f"destination topic {destination} does not exist")
    finally:
        await stop_consumer(consumer)
    return ReplayPlan(source, destination, ranges, rate)


async def run_replay(
    settings: Settings,
    plan: ReplayPlan,
    *,
    rewrite: Rewriter | None = None,
    on_progress: Callable[[ReplayResult], None] | None = None,
) -> ReplayResult:
    """Copy ``plan``'s ranges into its destination (rewriting ids if ``rewrite`` is given)."""
    result = ReplayResult()
    todo = {TopicPartition(plan.source, r.partition): r for r in plan.ranges if r.size}
    if not todo:
        return result
    consumer = source_consumer(settings)
    producer = recovering_producer(settings, what="replay")  # survives a broker restart
    await consumer.start()
    await producer.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        consumer.assign(list(todo))
        for tp, part in todo.items():
            consumer.seek(tp, part.start)
        pending: list[asyncio.Future[Any]] = []
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=500)
            for tp, records in batch.items():
                if tp not in todo:
                    continue
                for record in records:
                    if record.offset >= todo[tp].end:
                        break
                    if plan.rate is not None:
                        delay = started + result.copied / plan.rate - loop.time()
                        if delay > 0.001:
                            await asyncio.sleep(delay)
                    copy = _copy_of(record, rewrite, result)
                    if copy is None:
                        continue
                    key, value, headers = copy
                    pending.append(
                        await producer.send(plan.destination, value, key=key, headers=headers)
                    )
                    result.copied += 1
                    result.by_partition[tp.partition] = result.by_partition.get(tp.partition, 0) + 1
                if len(pending) >= 500:
                    await asyncio.gather(*pending)
                    pending.clear()
            for tp in list(todo):
                # With read_committed, control records take offsets too: go by position.
                if await consumer.position(tp) >= todo[tp].end:
                    del todo[tp]
            if on_progress is not None:
                on_progress(result)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
        await stop_consumer(consumer)
    return result


def _copy_of(
    record: ConsumerRecord[bytes, bytes], rewrite: Rewriter | None, result: ReplayResult
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]] | None:
    if rewrite is None:
        return record.key, record.value, list(record.headers or ())
    try:
        copy = rewrite(record)
    except DecodeError as exc:
        # It would only go to the DLQ again, under its old id.
        log.warning(
            "%s-%s@%s not rewritten: %s", record.topic, record.partition, record.offset, exc
        )
        result.skipped_undecodable += 1
        return None
    result.rewritten += 1
    return copy


# -- rewinding the bridge's consumer group --------------------------------------------------


@dataclass(frozen=True)
class ResetPlan:
    group: str
    rows: list[GroupReset]
    members: list[str]  # live members seen (a dry run reports them, a reset refuses)


@dataclass(frozen=True)
class GroupReset:
    topic: str
    partition: int
    committed: int | None  # before the reset (None: no offset committed)
    new: int


async def group_members(admin: AIOKafkaAdminClient, group: str) -> list[str]:
    """Member ids of ``group`` (empty when no consumer is in it)."""
    members: list[str] = []
    for response in await admin.describe_consumer_groups([group]):
        for described in response.groups:
            error_code, group_id, _state, _ptype, _protocol, group_members_ = described[:6]
            if group_id == group and not error_code:
                members.extend(member[0] for member in group_members_)
    return members


async def reset_group(
    settings: Settings,
    *,
    timestamp_ms: int,
    topics: Sequence[str] | None = None,
    group: str | None = None,
    dry_run: bool = False,
) -> ResetPlan:
    """Set ``group``'s offsets on ``topics`` to the first record at/after ``timestamp_ms``.

    Refuses with :class:`ReplayError` while the group has members (a dry run reports them).
    """
    group = group or settings.consumer_group
    chosen = list(topics or settings.input_topics)
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        members = await group_members(admin, group)
        if not dry_run:
            _refuse_if_live(group, members)
        reader = source_consumer(settings)
        await reader.start()
        try:
            tps = [
                TopicPartition(topic, p)
                for topic in chosen
                for p in sorted(reader.partitions_for_topic(topic) or ())
            ]
            if not tps:
                raise ReplayError(f"none of {chosen} exists")
            end = await reader.end_offsets(tps)
            found = await reader.offsets_for_times(dict.fromkeys(tps, timestamp_ms))
        finally:
            await stop_consumer(reader)
        new = {tp: end[tp] if found.get(tp) is None else found[tp].offset for tp in tps}
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        plan = [
            GroupReset(
                tp.topic,
                tp.partition,
                committed[tp].offset if tp in committed and committed[tp].offset >= 0 else None,
                new[tp],
            )
            for tp in tps
        ]
        if not dry_run:
            _refuse_if_live(group, await group_members(admin, group))
            await _commit_as_group(settings, group, new)
        return ResetPlan(group, plan, members)
    finally:
        await admin.close()


def _refuse_if_live(group: str, members: list[str]) -> None:
    if members:
        raise ReplayError(
            f"consumer group {group} has {len(members)} live member(s) ({', '.join(members[:3])}"
            f"{', ...' if len(members) > 3 else ''}): stop every bridge of the group first"
        )


async def _commit_as_group(
    settings: Settings, group: str, offsets: dict[TopicPartition, int]
) -> None:
    # A consumer that is assigned partitions (not subscribed) never joins the group: its
    # commit is a "simple" commit, which Kafka accepts only while the group is empty.
    consumer = kafka_consumer(settings, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await stop_consumer(consumer)
