"""The worker's Kafka I/O, all of it: the only module of ``workflows`` that touches Kafka.

- ``OutcomeActivities.publish_outcome``: each payment's terminal outcome, published once.
- ``KafkaCallbackEmitter``: the simulated gateway's callbacks, produced to the callbacks topic
  so that they reach the workflow through the bridge, the real path.
- ``OrphanActivities.dead_letter_orphan``: a callback or cancel held by a run whose payment
  never came, written to the DLQ as the bridge would have (reason ``orphan``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from temporalio import activity

from plumbing import tracing
from plumbing.dead_letters import DeadLetters
from plumbing.kafka import (
    RecordSender,
    RecoveringProducer,
    outcome_reader,
    recovering_producer,
    start_when_reachable,
)
from plumbing.settings import Settings
from schemas.codec import Codec
from schemas.errors import OrphanError
from schemas.events import GatewayCallback, PaymentOutcome
from workflows.metrics import WorkerMetrics
from workflows.models import OrphanDeadLetterInput, PublishOutcomeInput

# An attempt of publish_outcome ends (its record written, or given up and discarded) within this
# share of its start_to_close timeout: the server then starts a retry only once the previous
# attempt's send is resolved. The rest of the timeout covers discarding the producer (up to
# ABORT_WAIT_SECONDS) and reporting the failure.
ATTEMPT_SHARE = 0.7
DEFAULT_START_TO_CLOSE = timedelta(seconds=30)


@dataclass(frozen=True)
class PublishProgress:
    """What an attempt leaves for the next one in its heartbeat details (JSON).

    ``partition`` is where every attempt since sends (pinned, whatever the topic's partition
    count becomes). ``checked_from`` is an offset of that partition below which no earlier
    attempt's record can be, and no record of this outcome was found: the next attempt reads
    only from there (None: from the outcome's ``completed_at``, by timestamp).
    """

    partition: int
    checked_from: int | None = None

    def details(self) -> dict[str, int | None]:
        return {"partition": self.partition, "from": self.checked_from}

    @staticmethod
    def of(details: Sequence[Any]) -> PublishProgress | None:
        last = details[-1] if details else None
        if not isinstance(last, dict) or not isinstance(last.get("partition"), int):
            return None
        checked = last.get("from")
        return PublishProgress(last["partition"], checked if isinstance(checked, int) else None)


class OutcomeActivities:
    """Publishes each payment's terminal outcome to the outcomes topic, once.

    Every attempt writes the record with timestamp = the outcome's ``completed_at`` (a value
    every attempt knows, whatever the clocks of the workers) and ends within ``ATTEMPT_SHARE``
    of its timeout: by then its record is written, or the producer that held it was discarded
    (:meth:`RecoveringProducer.send_or_discard`). So when the server retries, the previous
    attempt's record is either on the topic or never will be (but for a request already on its
    way to the broker: docs/contract.md). A retry first looks for the record's ``event_id``:

    - in the partition pinned by an earlier attempt (heartbeat details, :class:`PublishProgress`),
      from the offset that attempt had checked up to, or, for the first retry, from the last
      offset this process saw written before attempt 1 sent, or by timestamp;
    - without details (attempt 1's worker died), in every partition the key could have gone
      to: the key's partition under each count from 1 to the current one (a count only grows),
      from the first offset at or after ``completed_at``.

    Each retry heartbeats where it looked up to before sending, so the next one reads only what
    was written since. ``reader`` makes the consumer for that search; without it a retry
    publishes again (the copy carries the same ``event_id``).
    """

    def __init__(
        self,
        producer: RecoveringProducer,
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
        # Per partition: the offset after the last record this process saw written there; any
        # record sent later lands at or above it.
        self._written_below: dict[int, int] = {}

    def _partition_of(self, key: bytes, count: int) -> int:
        partitions = list(range(count))
        return int(self._partitioner(key, partitions, partitions))

    async def _partition(self, key: bytes) -> int:
        """The key's partition as Kafka's default partitioner picks it, now."""
        return self._partition_of(key, len(await self.producer.partitions_for(self.topic)))

    @activity.defn(name="publish_outcome")
    async def publish_outcome(self, input: PublishOutcomeInput) -> None:
        outcome: PaymentOutcome = input.outcome
        info = activity.info()
        loop = asyncio.get_running_loop()
        budget = (info.start_to_close_timeout or DEFAULT_START_TO_CLOSE).total_seconds()
        deadline = loop.time() + budget * ATTEMPT_SHARE
        key = outcome.payment_id.encode()
        stamp = int(outcome.completed_at.timestamp() * 1000)
        earlier = PublishProgress.of(info.heartbeat_details)
        first = info.attempt <= 1 and earlier is None
        if first or self.reader is None:
            partition = await self._partition(key)
            sending = PublishProgress(partition, self._written_below.get(partition))
        else:
            found, sending = await asyncio.wait_for(
                self._look(outcome, key, stamp, earlier), max(deadline - loop.time(), 0.001)
            )
            if found:
                activity.logger.info(
                    "outcome of %s already published",
                    outcome.payment_id,
                    extra={"payment_id": outcome.payment_id, "topic": self.topic},
                )
                return
            # Before sending: the next attempt, if any, reads only from here.
            activity.heartbeat(sending.details())
        headers = [("event_id", outcome.event_id.encode())]
        tracing.inject(headers)  # this activity's span: the payment's trace, onto the record
        try:
            written = await self.producer.send_or_discard(
                self.topic,
                self.codec.encode(outcome),
                key=key,
                partition=sending.partition,
                timestamp_ms=stamp,
                headers=headers,
                timeout=max(deadline - loop.time(), 0.001),
            )
        except BaseException:
            if first:  # tell the retry where this attempt sent (one heartbeat, failures only)
                activity.heartbeat(sending.details())
            raise
        self._saw_written(sending.partition, written)
        if self.metrics is not None:
            self.metrics.outcome_published(
                outcome.status.value,
                seconds=max(0.0, time.time() - outcome.created_at.timestamp()),
            )
        activity.logger.debug(
            "published %s for %s",
            outcome.status,
            outcome.payment_id,
            extra={
                "payment_id": outcome.payment_id,
                "topic": self.topic,
                "partition": sending.partition,
            },
        )

    def _saw_written(self, partition: int, written: Any) -> None:
        offset = getattr(written, "offset", None)
        if isinstance(offset, int) and offset >= 0:
            below = max(self._written_below.get(partition, 0), offset + 1)
            self._written_below[partition] = below

    async def _look(
        self, outcome: PaymentOutcome, key: bytes, stamp: int, progress: PublishProgress | None
    ) -> tuple[bool, PublishProgress]:
        """Whether an earlier attempt's record is on the topic; if not, where this attempt
        sends and the offset up to which it looked."""
        assert self.reader is not None
        reader = self.reader()
        await reader.start()
        try:
            known = len(reader.partitions_for_topic(self.topic) or ())
            count = max(known, len(await self.producer.partitions_for(self.topic)))
            pinned = progress.partition if progress else self._partition_of(key, count)
            if progress is not None:
                starts: dict[int, int | None] = {progress.partition: progress.checked_from}
            else:  # attempt 1 left no word: wherever the key went under any count so far
                starts = dict.fromkeys(
                    {self._partition_of(key, n) for n in range(1, count + 1)}, None
                )
            tps = [TopicPartition(self.topic, p) for p in sorted(starts)]
            reader.assign(tps)
            ends = await reader.end_offsets(tps)
            # Offsets past the end belong to an earlier incarnation of the topic: by time then.
            by_time = [
                tp for tp in tps if starts[tp.partition] is None or starts[tp.partition] > ends[tp]
            ]
            if by_time:
                found = await reader.offsets_for_times(dict.fromkeys(by_time, stamp))
                for tp in by_time:
                    at = found.get(tp)
                    starts[tp.partition] = ends[tp] if at is None else at.offset
            for tp in tps:
                start = starts[tp.partition]
                assert start is not None
                if await holds_event(reader, tp, start, ends[tp], event_id=outcome.event_id):
                    return True, PublishProgress(pinned)
            return False, PublishProgress(pinned, ends[TopicPartition(self.topic, pinned)])
        finally:
            await reader.stop()


async def holds_event(
    reader: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int, *, event_id: str
) -> bool:
    """Whether a record with header ``event_id`` is in ``tp`` between offsets ``start`` and
    ``end`` (excluded). ``reader`` is a started consumer without a group, assigned ``tp``."""
    if start >= end:
        return False
    reader.seek(tp, start)
    wanted = event_id.encode()
    while await reader.position(tp) < end:
        batch = await reader.getmany(tp, timeout_ms=1000)
        for record in batch.get(tp, ()):
            if record.offset >= end:
                return False
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

    producer: RecoveringProducer
    outcomes: OutcomeActivities
    callbacks: KafkaCallbackEmitter
    orphans: OrphanActivities

    async def reachable(self) -> bool:
        """Whether Kafka answers now (the worker's readiness check)."""
        return await self.producer.reachable()


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
