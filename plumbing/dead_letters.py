"""The dead-letter topic: bad records kept untouched, with headers that say why and from where.

Both services write dead letters: the bridge (records it cannot decode, validate or verify),
and the worker (early callbacks and cancels whose payment never came). Either way the record
goes as it was read, with the contract's ``dlq.*`` headers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from plumbing.kafka import RecordSender

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1000


class Source(Protocol):
    """A record as read from its topic: an aiokafka ``ConsumerRecord``, or the
    ``SourceRecord`` a signal carries to the workflow."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


def dlq_headers(record: Source, *, reason: str, error: BaseException) -> list[tuple[str, bytes]]:
    """The record's own headers followed by the contract's ``dlq.*`` headers."""
    failed_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    message = str(error)[:MAX_MESSAGE_CHARS]
    own = [(k, v) for k, v in (record.headers or ()) if not k.startswith("dlq.")]
    return [
        *own,
        ("dlq.source.topic", record.topic.encode()),
        ("dlq.source.partition", str(record.partition).encode()),
        ("dlq.source.offset", str(record.offset).encode()),
        ("dlq.error.class", type(error).__name__.encode()),
        ("dlq.error.message", message.encode("utf-8", errors="replace")),
        ("dlq.reason", reason.encode()),
        ("dlq.failed_at", failed_at.encode()),
    ]


class DeadLetters:
    """Writes records to the DLQ topic; retries until Kafka takes them (never drops one)."""

    def __init__(self, producer: RecordSender, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def send(self, record: Source, *, reason: str, error: BaseException) -> None:
        headers = dlq_headers(record, reason=reason, error=error)
        value = record.value
        delay = 0.2
        while True:
            try:
                await self.producer.send_and_wait(
                    self.topic, value, key=record.key, headers=headers
                )
                return
            except MessageSizeTooLargeError:
                # Larger than the broker takes: keep the coordinates so the original can be
                # found on the source topic, rather than block the partition forever.
                size = len(value or b"")
                log.error(
                    "%s-%s@%s: %d-byte value too large for the DLQ; writing headers only",
                    record.topic,
                    record.partition,
                    record.offset,
                    size,
                )
                headers = [*headers, ("dlq.value.omitted_bytes", str(size).encode())]
                value = None
            except KafkaError as exc:
                log.warning(
                    "DLQ write for %s-%s@%s failed, retrying: %r",
                    record.topic,
                    record.partition,
                    record.offset,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
