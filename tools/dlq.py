"""``paybridge dlq list|redrive``: what is in the dead-letter topic, and sending it back.

A redrive copies a dead letter to its source topic (``dlq.source.topic``) with its original
key, value and headers (minus ``dlq.*``, plus ``paybridge.redriven-from``), and records that it
did so with a *marker* record on the DLQ topic itself (header ``dlq.marker: redriven``, key
``dlq-redrive:{partition}:{offset}``, a small JSON value). The copy and its marker are written
in one Kafka transaction, so either both exist or neither does: a crash never leaves a record
redriven without its marker (which would let it be redriven again) nor marked without having
been sent. Every redrive uses the same ``transactional.id``, so a second redrive running at the
same time fences the first one's unfinished transaction, and each redrive reads the markers only
after it has fenced its predecessors: two operators cannot both redrive the same record.

A record marked as redriven is skipped unless ``force`` is given. If the redriven copy fails
again, the bridge dead-letters it as a *new* DLQ record (carrying ``paybridge.redriven-from``),
which can be redriven in turn after the next fix.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from plumbing.kafka import MAX_REQUEST_BYTES, client_kwargs, stop_consumer
from plumbing.kafka import consumer as kafka_consumer
from plumbing.settings import Settings
from schemas.errors import DlqError

MARKER_HEADER = "dlq.marker"
MARKER_REDRIVEN = b"redriven"
REDRIVEN_FROM = "paybridge.redriven-from"
TRANSACTION_CHUNK = 200  # dead letters (and their markers) per transaction


@dataclass(frozen=True)
class DeadLetter:
    """One record of the DLQ topic, with the ``dlq.*`` headers read out."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]  # the original record's own headers (no dlq.*)
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    error_class: str
    error_message: str
    failed_at: str
    value_omitted: bool
    redriven_from: str | None

    @property
    def ref(self) -> str:
        """``partition:offset`` on the DLQ topic."""
        return f"{self.partition}:{self.offset}"

    @property
    def source(self) -> str:
        return f"{self.source_topic}-{self.source_partition}@{self.source_offset}"


@dataclass(frozen=True)
class Marker:
    dead_letter: str  # partition:offset of the dead letter on the DLQ topic
    redriven_to: str
    redrive_id: str
    at: str


@dataclass
class DlqContents:
    dead_letters: list[DeadLetter]
    markers: dict[str, Marker]  # by dead letter ref
    unreadable: int = 0  # records without dlq.* headers that are not markers

    def redriven(self, letter: DeadLetter) -> Marker | None:
        return self.markers.get(letter.ref)

    def by_reason(self) -> dict[str, list[DeadLetter]]:
        groups: dict[str, list[DeadLetter]] = defaultdict(list)
        for letter in self.dead_letters:
            groups[letter.reason].append(letter)
        return dict(sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])))


def _text(headers: dict[str, bytes], name: str, default: str = "") -> str:
    raw = headers.get(name)
    return default if raw is None else raw.decode("utf-8", errors="replace")


def parse_record(record: ConsumerRecord[bytes, bytes]) -> DeadLetter | Marker | None:
    """A dead letter, a redrive marker, or None for anything else."""
    raw = list(record.headers or ())
    headers = dict(raw)
    if headers.get(MARKER_HEADER) == MARKER_REDRIVEN:
        data = json.loads(record.value or b"{}")
        return Marker(
            dead_letter=str(data["dead_letter"]),
            redriven_to=str(data.get("redriven_to", "")),
            redrive_id=str(data.get("redrive_id", "")),
            at=str(data.get("at", "")),
        )
    if "dlq.source.topic" not in headers:
        return None
    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=[(k, v) for k, v in raw if not k.startswith("dlq.")],
        source_topic=_text(headers, "dlq.source.topic"),
        source_partition=int(_text(headers, "dlq.source.partition", "-1")),
        source_offset=int(_text(headers, "dlq.source.offset", "-1")),
        reason=_text(headers, "dlq.reason", "unknown"),
        error_class=_text(headers, "dlq.error.class"),
        error_message=_text(headers, "dlq.error.message"),
        failed_at=_text(headers, "dlq.failed_at"),
        value_omitted="dlq.value.omitted_bytes" in headers,
        redriven_from=headers[REDRIVEN_FROM].decode() if REDRIVEN_FROM in headers else None,
    )


async def read_dlq(settings: Settings) -> DlqContents:
    """Every committed record of the DLQ topic, from the start to the current end."""
    topic = settings.topic_dlq
    consumer = kafka_consumer(
        settings,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=MAX_REQUEST_BYTES,
    )
    await consumer.start()
    contents = DlqContents([], {})
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise DlqError(f"DLQ topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if end[tp] > 0}
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=500)
            for records in batch.values():
                for record in records:
                    _collect(contents, record)
            for tp in list(todo):
                if await consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
    finally:
        await stop_consumer(consumer)
    return contents


def _collect(contents: DlqContents, record: ConsumerRecord[bytes, bytes]) -> None:
    try:
        parsed = parse_record(record)
    except (ValueError, KeyError):
        parsed = None
    if isinstance(parsed, Marker):
        contents.markers.setdefault(parsed.dead_letter, parsed)
    elif isinstance(parsed, DeadLetter):
        contents.dead_letters.append(parsed)
    else:
        contents.unreadable += 1


@dataclass(frozen=True)
class Selection:
    """Which dead letters to redrive: by DLQ ``partition:offset`` refs, by reason, or all."""

    refs: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()
    everything: bool = False

    def __post_init__(self) -> None:
        if not (self.refs or self.reasons or self.everything):
            raise ValueError("choose dead letters by offset, by reason, or all")

    def matches(self, letter: DeadLetter) -> bool:
        return self.everything or letter.ref in self.refs or letter.reason in self.reasons


def parse_refs(values: Iterable[str]) -> frozenset[str]:
    """``12``, ``0:12`` or ``0:12,0:13``: DLQ offsets (partition 0 unless given)."""
    refs = set()
    for value in values:
        for part in filter(None, (p.strip() for p in value.split(","))):
            partition, sep, offset = part.rpartition(":")
            if not offset.isdigit() or (sep and not partition.isdigit()):
                raise ValueError(f"{part!r} is not OFFSET or PARTITION:OFFSET")
            refs.add(f"{int(partition) if sep else 0}:{int(offset)}")
    return frozenset(refs)


@dataclass
class RedrivePlan:
    chosen: list[DeadLetter]
    already: list[tuple[DeadLetter, Marker]]  # skipped: redriven before
    unsendable: list[DeadLetter]  # skipped: the DLQ kept only their headers
    not_found: list[str]  # refs asked for that are not dead letters


def plan_redrive(contents: DlqContents, selection: Selection, *, force: bool) -> RedrivePlan:
    plan = RedrivePlan([], [], [], [])
    for letter in contents.dead_letters:
        if not selection.matches(letter):
            continue
        marker = contents.redriven(letter)
        if letter.value_omitted:
            plan.unsendable.append(letter)
        elif marker is not None and not force:
            plan.already.append((letter, marker))
        else:
            plan.chosen.append(letter)
    known = {letter.ref for letter in contents.dead_letters}
    plan.not_found = sorted(selection.refs - known)
    return plan


def transactional_id(settings: Settings) -> str:
    return f"paybridge-dlq-redrive-{settings.topic_dlq}"


def redrive_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_kwargs(settings),
        transactional_id=transactional_id(settings),
        enable_idempotence=True,
        acks="all",
        max_request_size=MAX_REQUEST_BYTES,
    )


@dataclass
class RedriveResult:
    plan: RedrivePlan
    redriven: list[tuple[DeadLetter, str]]  # and where each copy went
    redrive_id: str


async def redrive(
    settings: Settings,
    selection: Selection,
    *,
    force: bool = False,
    dry_run: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> RedriveResult:
    """Send the selected dead letters back to their source topics, once (see module doc).

    ``on_progress(done, total)`` is called once the plan is made and after each transaction.
    """
    redrive_id = str(uuid.uuid4())
    if dry_run:
        plan = plan_redrive(await read_dlq(settings), selection, force=force)
        return RedriveResult(plan, [], redrive_id)
    producer = redrive_producer(settings)
    # start() initialises the transactional id: from here on, an earlier redrive that is still
    # running cannot commit any more, so the markers read next are complete.
    await producer.start()
    try:
        plan = plan_redrive(await read_dlq(settings), selection, force=force)
        redriven: list[tuple[DeadLetter, str]] = []
        if on_progress is not None:
            on_progress(0, len(plan.chosen))
        for start in range(0, len(plan.chosen), TRANSACTION_CHUNK):
            chunk = plan.chosen[start : start + TRANSACTION_CHUNK]
            redriven += await _redrive_chunk(producer, settings, chunk, redrive_id)
            if on_progress is not None:
                on_progress(len(redriven), len(plan.chosen))
        return RedriveResult(plan, redriven, redrive_id)
    finally:
        await producer.stop()


async def _redrive_chunk(
    producer: AIOKafkaProducer,
    settings: Settings,
    letters: Sequence[DeadLetter],
    redrive_id: str,
) -> list[tuple[DeadLetter, str]]:
    done: list[tuple[DeadLetter, str]] = []
    async with producer.transaction():
        copies = []
        for letter in letters:
            origin = f"{settings.topic_dlq}:{letter.ref}".encode()
            headers = [*letter.headers, (REDRIVEN_FROM, origin)]
            copies.append(
                await producer.send(
                    letter.source_topic, letter.value, key=letter.key, headers=headers
                )
            )
        for letter, copy in zip(letters, copies, strict=True):
            meta: Any = await copy
            to = f"{meta.topic}-{meta.partition}@{meta.offset}"
            marker = {
                "dead_letter": letter.ref,
                "source": letter.source,
                "redriven_to": to,
                "redrive_id": redrive_id,
                "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            }
            await producer.send(
                settings.topic_dlq,
                json.dumps(marker).encode(),
                key=f"dlq-redrive:{letter.ref}".encode(),
                headers=[(MARKER_HEADER, MARKER_REDRIVEN)],
                partition=letter.partition,
            )
            done.append((letter, to))
    return done
