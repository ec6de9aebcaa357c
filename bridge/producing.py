"""Producing events and reading outcomes: used by the CLI, the load generator and the tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from bridge.codec import JSON_CONTENT_TYPE, Codec
from bridge.events import Event, PaymentOutcome
from bridge.kafka import consumer as kafka_consumer
from bridge.kafka import recovering_producer
from bridge.settings import Settings


def encode_record(
    codec: Codec, event: Event, *, as_json: bool = False
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of ``event`` as producers are expected to write it."""
    if as_json:
        return (
            event.payment_id.encode(),
            codec.encode_json(event),
            [("content-type", JSON_CONTENT_TYPE)],
        )
    return event.payment_id.encode(), codec.encode(event), []


async def send_events(
    settings: Settings,
    topic: str,
    events: Iterable[Event],
    *,
    as_json: bool = False,
    codec: Codec | None = None,
) -> None:
    """Produce ``events`` keyed by payment id, waiting until Kafka has them all."""
    codec = codec or Codec()
    producer = recovering_producer(settings, what="produce")
    await producer.start()
    try:
        futures = []
        for event in events:
            key, value, headers = encode_record(codec, event, as_json=as_json)
            futures.append(await producer.send(topic, value, key=key, headers=headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_outcomes(
    settings: Settings,
    show: Callable[[PaymentOutcome], None],
    *,
    follow: bool = False,
    payment_id: str | None = None,
    codec: Codec | None = None,
) -> None:
    """Read the outcomes topic from the start (no consumer group) and pass each to ``show``."""
    codec = codec or Codec()
    consumer = kafka_consumer(settings, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(settings.topic_outcomes, p)
            for p in sorted(consumer.partitions_for_topic(settings.topic_outcomes) or ())
        ]
        if not partitions:
            return
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    outcome = codec.decode(PaymentOutcome, record.value)
                    if payment_id is None or outcome.payment_id == payment_id:
                        show(outcome)
            if not follow and all(
                await asyncio.gather(*(_reached(consumer, tp, end[tp]) for tp in partitions))
            ):
                return
    finally:
        await consumer.stop()


async def published_since(
    reader: AIOKafkaConsumer,
    tp: TopicPartition,
    *,
    since_ms: int,
    event_id: str,
) -> bool:
    """Whether a record with header ``event_id`` reached ``tp`` at or after ``since_ms``.

    ``reader`` is a started consumer without a group; it is assigned ``tp`` for the search.
    """
    reader.assign([tp])
    found = await reader.offsets_for_times({tp: since_ms})
    start = found.get(tp)
    if start is None:  # nothing written since then
        return False
    end = (await reader.end_offsets([tp]))[tp]
    reader.seek(tp, start.offset)
    wanted = event_id.encode()
    while await reader.position(tp) < end:
        batch = await reader.getmany(tp, timeout_ms=1000)
        for record in batch.get(tp, ()):
            if dict(record.headers or ()).get("event_id") == wanted:
                return True
    return False


async def _reached(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> bool:
    return bool(await consumer.position(tp) >= offset)
