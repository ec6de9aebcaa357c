"""Writing what a well-behaved Kafka client refuses to: header keys that are not UTF-8.

Kafka's protocol allows any bytes in a header key and brokers store them; Java clients and
misbehaving producers write them. aiokafka's producer encodes keys as UTF-8 text, so to write
raw bytes a test swaps the producer's batch builder for aiokafka's pure-Python one (which
calls ``key.encode()``) and passes a ``str`` whose ``encode`` returns the raw bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import aiokafka.producer.message_accumulator as accumulator
import aiokafka.producer.producer as producer_module
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

from plumbing.kafka import idempotent_producer
from plumbing.settings import Settings

Header = tuple[str | bytes, bytes | None]


class RawKey(str):
    """A ``str`` whose ``encode()`` gives arbitrary bytes."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawKey:
        made = super().__new__(cls, raw.decode("latin-1"))
        made.raw = raw
        return made

    def encode(self, *_: Any, **__: Any) -> bytes:  # type: ignore[override]
        return self.raw


def raw_headers(headers: Sequence[Header]) -> list[tuple[str, bytes | None]]:
    return [(RawKey(k) if isinstance(k, bytes) else k, v) for k, v in headers]


@contextlib.contextmanager
def python_batch_builder() -> Iterator[None]:
    """aiokafka's producers build batches in Python while inside (restored on exit)."""
    saved = (accumulator.DefaultRecordBatchBuilder, producer_module.DefaultRecordBatchBuilder)
    accumulator.DefaultRecordBatchBuilder = _DefaultRecordBatchBuilderPy
    producer_module.DefaultRecordBatchBuilder = _DefaultRecordBatchBuilderPy
    try:
        yield
    finally:
        accumulator.DefaultRecordBatchBuilder, producer_module.DefaultRecordBatchBuilder = saved


async def produce_raw_headers(
    settings: Settings,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None, Sequence[Header]]],
    *,
    partition: int | None = None,
) -> list[int]:
    """Produce ``records`` (header keys may be bytes, written as they are); their offsets."""
    with python_batch_builder():
        producer = idempotent_producer(settings)
        await producer.start()
        try:
            futures = [
                await producer.send(
                    topic, value, key=key, partition=partition, headers=raw_headers(headers)
                )
                for key, value, headers in records
            ]
            return [(await future).offset for future in futures]
        finally:
            await producer.stop()


def build_batch(
    records: Sequence[tuple[bytes | None, bytes | None, Sequence[Header]]],
    *,
    base_offset: int = 0,
    compression_type: int = 0,
) -> bytes:
    """One v2 record batch as a broker would return it (header keys may be raw bytes)."""
    builder = _DefaultRecordBatchBuilderPy(
        magic=2,
        compression_type=compression_type,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=10**9,
    )
    for n, (key, value, headers) in enumerate(records):
        builder.append(
            n, timestamp=1_700_000_000_000 + n, key=key, value=value, headers=raw_headers(headers)
        )
    buffer = builder.build()
    buffer[0:8] = base_offset.to_bytes(8, "big", signed=True)
    return bytes(buffer)
