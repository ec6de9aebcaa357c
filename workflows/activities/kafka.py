"""The worker's Kafka I/O, all of it: the only module of ``workflows`` that touches Kafka.

- ``OutcomeActivities.publish_outcome``: each payment's terminal outcome, published once.
- ``KafkaCallbackEmitter``: the simulated gateway's callbacks, produced to the callbacks topic
  so that they reach the workflow through the bridge, the real path.
- ``OrphanActivities.dead_letter_orphan``: a callback or cancel held by a run whose payment
  never came, written to the DLQ as the bridge would have (reason ``orphan``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from temporalio import activity

from plumbing.dead_letters import DeadLetters
from plumbing.kafka import RecordSender, outcome_reader, recovering_producer, start_when_reachable
from plumbing.settings import Settings
from schemas.codec import Codec
from schemas.errors import OrphanError
from schemas.events import GatewayCallback, PaymentOutcome
from workflows.metrics import WorkerMetrics
from workflows.models import OrphanDeadLetterInput, PublishOutcomeInput


class OutcomeActivities:
    """Publishes each payment's terminal outcome to the outcomes topic, once.

    A retried attempt (the first one timed out, or its worker died after the send) first looks
    for the record on the topic: it flushes this process's producer, then scans the key's
    partition from the first attempt's scheduled time for a record with the same ``event_id``.
    ``reader`` makes the consumer for that search; without it a retry publishes again (the
    copy carries the same ``event_id``, so consumers can still drop it).
    """

    def __init__(
        self,
        producer: RecordSender,
        *,
        topic: str,
        codec: Codec,
        metrics: WorkerMetrics | None = None,
        reader: Callable[[], AIOKafkaConsumer] | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.codec = codec
        self.metrics = metrics
        self.reader = reader
        self._partitioner = DefaultPartitioner()

    async def _partition(self, key: bytes) -> int:
        partitions = sorted(await self.producer.partitions_for(self.topic))
        return int(self._partitioner(key, partitions, partitions))

    async def _already_published(self, outcome: PaymentOutcome, partition: int) -> bool:
        info = activity.info()
        if info.attempt <= 1 or self.reader is None:
            return False
        await self.producer.flush()
        since_ms = int(info.scheduled_time.timestamp() * 1000) - 5000
        reader = self.reader()
        await reader.start()
        try:
            tp = TopicPartition(self.topic, partition)
            return await published_since(reader, tp, since_ms=since_ms, event_id=outcome.event_id)
        finally:
            await reader.stop()

    @activity.defn(name="publish_outcome")
    async def publish_outcome(self, input: PublishOutcomeInput) -> None:
        outcome: PaymentOutcome = input.outcome
        key = outcome.payment_id.encode()
        # The partition is chosen here (as Kafka's default partitioner would) so that a retry
        # knows where an earlier attempt's record would be.
        partition = await self._partition(key)
        if await self._already_published(outcome, partition):
            activity.logger.info("outcome of %s already published", outcome.payment_id)
            return
        await self.producer.send_and_wait(
            self.topic,
            self.codec.encode(outcome),
            key=key,
            partition=partition,
            headers=[("event_id", outcome.event_id.encode())],
        )
        if self.metrics is not None:
            self.metrics.outcome_published(
                outcome.status.value,
                seconds=max(0.0, time.time() - outcome.created_at.timestamp()),
            )
        activity.logger.debug("published %s for %s", outcome.status, outcome.payment_id)


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


class KafkaCallbackEmitter:
    """Delivers callbacks as records on the callbacks topic, keyed by payment id."""

    def __init__(self, producer: RecordSender, *, topic: str, codec: Codec | None = None):
        self.producer = producer
        self.topic = topic
        self.codec = codec or Codec()

    async def emit(self, callback: GatewayCallback) -> None:
        await self.producer.send_and_wait(
            self.topic, self.codec.encode(callback), key=callback.payment_id.encode()
        )


class OrphanActivities:
    """Dead-letters the records of callbacks and cancels whose payment never came.

    The record goes to the DLQ with its original key, value and headers and the contract's
    ``dlq.*`` headers (source topic, partition and offset travel with the signal), reason
    ``orphan``, ``dlq.error.class`` ``OrphanError``. A retried attempt may write it twice (the
    DLQ is at least once; ``paybridge dlq redrive`` sends a record back once).
    """

    def __init__(self, dead_letters: DeadLetters, *, metrics: WorkerMetrics | None = None):
        self.dead_letters = dead_letters
        self.metrics = metrics

    @activity.defn(name="dead_letter_orphan")
    async def dead_letter_orphan(self, input: OrphanDeadLetterInput) -> None:
        source = input.source
        omitted = []  # what stayed on the source topic (see SourceRecord)
        if source.value_omitted_bytes is not None:
            omitted.append(("dlq.value.omitted_bytes", str(source.value_omitted_bytes).encode()))
        if source.headers_omitted is not None:
            omitted.append(("dlq.headers.omitted", str(source.headers_omitted).encode()))
        await self.dead_letters.send(
            source, reason="orphan", error=OrphanError(input.message), extra_headers=omitted
        )
        if self.metrics is not None:
            self.metrics.dlq_records.labels(topic=source.topic, reason="orphan").inc()
        activity.logger.warning(
            "%s-%s@%s -> DLQ (orphan): %s",
            source.topic,
            source.partition,
            source.offset,
            input.message,
        )


@dataclass(frozen=True)
class KafkaIO:
    """The worker process's Kafka side: one producer shared by outcomes, callbacks and
    orphans' dead letters."""

    producer: RecordSender
    outcomes: OutcomeActivities
    callbacks: KafkaCallbackEmitter
    orphans: OrphanActivities


@contextlib.asynccontextmanager
async def kafka_io(
    settings: Settings, *, metrics: WorkerMetrics, codec: Codec | None = None
) -> AsyncIterator[KafkaIO]:
    """A started producer (waiting while Kafka is unreachable), the outcome activities that
    publish with it, and the simulated gateway's callback emitter; the producer stops on exit."""
    codec = codec or Codec()
    producer = recovering_producer(
        settings, what="outcome producer", on_replace=metrics.producers_replaced.inc
    )
    try:
        await start_when_reachable(producer, settings, what="outcome producer")
        yield KafkaIO(
            producer=producer,
            outcomes=OutcomeActivities(
                producer,
                topic=settings.topic_outcomes,
                codec=codec,
                metrics=metrics,
                reader=outcome_reader(settings),
            ),
            callbacks=KafkaCallbackEmitter(producer, topic=settings.topic_callbacks, codec=codec),
            orphans=OrphanActivities(DeadLetters(producer, settings.topic_dlq), metrics=metrics),
        )
    finally:
        await producer.stop()
