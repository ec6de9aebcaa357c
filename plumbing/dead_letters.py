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
from typing import Protocol, cast

from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from plumbing.kafka import RecordSender
from plumbing.lenient_records import printable_key

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
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


def dlq_headers(
    record: Source, *, reason: str, error: BaseException
) -> list[tuple[str, bytes | None]]:
    """The record's own headers followed by the contract's ``dlq.*`` headers.

    A header key that is not UTF-8 (``plumbing.lenient_records``) is written with ``\\xNN``
    escapes: no producer can write it as it was read.
    """
    return [*_own_headers(record), *_contract_headers(record, reason=reason, error=error)]


def _own_headers(record: Source) -> list[tuple[str, bytes | None]]:
    return [(printable_key(k), v) for k, v in (record.headers or ()) if not k.startswith("dlq.")]


def _contract_headers(
    record: Source, *, reason: str, error: BaseException
) -> list[tuple[str, bytes | None]]:
    failed_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    message = str(error)[:MAX_MESSAGE_CHARS]
    return [
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

    async def send(
        self,
        record: Source,
        *,
        reason: str,
        error: BaseException,
        extra_headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Write ``record`` to the DLQ, retrying (with back-off) until Kafka takes it.

        A record too large for the DLQ topic is written smaller, once per step: first without
        its value (header ``dlq.value.omitted_bytes``), then also without its key and its own
        headers (``dlq.key.omitted_bytes``, ``dlq.headers.omitted``); the original stays on its
        source topic at ``dlq.source.*``. If even that is refused the topic's limit is
        misconfigured: that is logged as an error and retried with back-off, like any other
        failure, without growing the record. ``extra_headers`` (``dlq.*``) go with the
        contract's.
        """
        contract = [*_contract_headers(record, reason=reason, error=error), *extra_headers]
        own = _own_headers(record)
        key, value = record.key, record.value
        headers: list[tuple[str, bytes | None]] = [*own, *contract]
        shrunk = 0
        delay = 0.2
        while True:
            try:
                # A header value may be None (Kafka's null header value): aiokafka writes it.
                await self.producer.send_and_wait(
                    self.topic, value, key=key, headers=cast(list[tuple[str, bytes]], headers)
                )
                return
            except MessageSizeTooLargeError as exc:
                where = f"{record.topic}-{record.partition}@{record.offset}"
                if shrunk == 0 and value:
                    shrunk = 1
                    log.error(
                        "%s: too large for the DLQ; writing it without its %d-byte value",
                        where,
                        len(value),
                    )
                    headers = [*headers, ("dlq.value.omitted_bytes", str(len(value)).encode())]
                    value = None
                    continue
                if shrunk < 2:
                    shrunk = 2
                    log.error(
                        "%s: too large for the DLQ even without its value; writing the dlq.* "
                        "headers only (key of %d bytes and %d headers omitted)",
                        where,
                        len(key or b""),
                        len(own),
                    )
                    headers = [
                        *contract,
                        *(h for h in headers if h[0] == "dlq.value.omitted_bytes"),
                        ("dlq.key.omitted_bytes", str(len(key or b"")).encode()),
                        ("dlq.headers.omitted", str(len(own)).encode()),
                    ]
                    key, value = None, None
                    continue
                log.error(
                    "%s: the DLQ topic %s refuses even a headers-only record (%r): check its "
                    "max.message.bytes; retrying in %.1fs",
                    where,
                    self.topic,
                    exc,
                    delay,
                )
            except KafkaError as exc:
                log.warning(
                    "DLQ write for %s-%s@%s failed, retrying in %.1fs: %r",
                    record.topic,
                    record.partition,
                    record.offset,
                    delay,
                    exc,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
