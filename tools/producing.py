"""Producing events and reading outcomes: used by the CLI, the load generator and the tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from plumbing.kafka import consumer as kafka_consumer
from plumbing.kafka import recovering_producer
from plumbing.settings import Settings
from schemas.codec import JSON_CONTENT_TYPE, Codec
from schemas.events import Event, PaymentOutcome


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


async def _reached(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> bool:
    return bool(await consumer.position(tp) >= offset)
