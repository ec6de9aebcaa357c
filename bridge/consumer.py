"""The bridge: consumes the input topics and applies each record to Temporal.

- Records with the same key (per partition) are applied in offset order; records with other
  keys run concurrently, also inside one partition, up to ``PAYBRIDGE_MAX_INFLIGHT``.
- A partition's committed offset is the lowest offset not yet done (see ``bridge.offsets``):
  a crash can redeliver records, never skip one. Temporal deduplicates the redelivery.
- When the in-flight limit is reached the bridge stops taking records until a batch of slots is
  free (records stay in the Kafka client's bounded fetch buffer). If that lasts (Temporal down,
  calls backing off), it pauses the partitions and keeps polling so that it stays in the group.
- A record that cannot be decoded, validated or verified goes to the DLQ and is done; the
  records behind it keep flowing.
- On revoke and on shutdown, in-flight work gets a grace period, the rest is abandoned (it
  will be redelivered) and what is done is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from bridge.metrics import BridgeMetrics
from bridge.offsets import PartitionOffsets
from bridge.routing import Route, waiting_for_payment
from plumbing import tracing
from plumbing.dead_letters import DeadLetters
from plumbing.logs import record_fields
from schemas.codec import Codec
from schemas.errors import DecodeError, OrphanError, TemporalRejected

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]


def check_key(key: bytes | None, payment_id: str) -> None:
    """Records are keyed by payment id (UTF-8): that key is what orders a payment's events."""
    if key is None:
        return
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("validation", f"record key {key!r} is not UTF-8") from exc
    if text != payment_id:
        raise DecodeError("validation", f"record key {text!r} is not the payment_id {payment_id!r}")


class _Slot:
    """One fetched record's claim on the bridge's capacity: an in-flight slot, or, once it waits
    for its payment to start (or queues behind a record of its key that does), a waiting one."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting = False


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.bridge._release(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.bridge._assigned(set(assigned))


class Bridge:
    """Consumes ``routes``' topics in one consumer group and applies records to Temporal."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        *,
        routes: Mapping[str, Route],
        dead_letters: DeadLetters,
        metrics: BridgeMetrics,
        codec: Codec,
        max_inflight: int = 1000,
        commit_interval: float = 1.0,
        grace: float = 10.0,
        revoke_grace: float = 3.0,
    ) -> None:
        self.consumer = consumer
        self.routes = dict(routes)
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.codec = codec
        self.max_inflight = max_inflight
        metrics.inflight_limit.set(max_inflight)
        self.commit_interval = commit_interval
        self.grace = grace
        # A revoke callback that runs long holds up the whole group's rebalance (and nears
        # the session timeout); abandoned records are redelivered and deduplicated anyway.
        self.revoke_grace = revoke_grace
        self.assigned = asyncio.Event()
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = defaultdict(set)
        self._tails: dict[tuple[TopicPartition, bytes], tuple[asyncio.Task[None], _Slot]] = {}
        self._inflight = 0
        # Callbacks and cancels waiting for their payment to start have a budget of their own
        # (as large as the in-flight one): if they held in-flight slots, a burst of them could
        # pause the very PaymentCreated records they wait for, until all became orphans.
        self.max_waiting = max_inflight
        self._waiting = 0
        self._waiting_full = False
        self._slots_free = asyncio.Event()
        self._paused = False
        self._paused_partitions: set[TopicPartition] = set()
        self._stopping = asyncio.Event()
        self._commit_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def subscribe(self) -> None:
        self.consumer.subscribe(topics=sorted(self.routes), listener=_Listener(self))

    async def run(self) -> None:
        """Consume until :meth:`stop` is called; then drain, commit and leave the group."""
        self.subscribe()
        committer = asyncio.create_task(self._commit_loop(), name="paybridge-commit")
        try:
            while not self._stopping.is_set():
                await self._poll_once()
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self._release(set(self._offsets), grace=self.grace)

    def stop(self) -> None:
        """Ask :meth:`run` to finish; safe to call more than once."""
        self._stopping.set()

    @property
    def inflight(self) -> int:
        """Records fetched and not done yet, including those waiting for their payment."""
        return self._inflight + self._waiting

    # -- fetching --------------------------------------------------------------------------

    async def _poll_once(self) -> None:
        if not await self._wait_for_slots():
            # Saturated for a while: pause fetching, but keep polling to stay in the group.
            self._set_paused(True)
            await self.consumer.getmany(timeout_ms=0)
            return
        self._set_paused(False)
        capacity = self.max_inflight - self._inflight
        if capacity <= 0:  # only when stopping: slots were not waited for
            return
        batch = await self.consumer.getmany(timeout_ms=200, max_records=min(capacity, 500))
        for tp, records in batch.items():
            offsets = self._offsets.get(tp)
            if offsets is None:
                offsets = self._offsets[tp] = PartitionOffsets()
            for record in records:
                self._dispatch(tp, offsets, record)

    async def _wait_for_slots(self, patience: float = 5.0) -> bool:
        """Wait until a batch of in-flight slots is free; False if none freed within
        ``patience`` seconds. Taking records in batches keeps fetches and polls large."""
        wanted = max(1, self.max_inflight // 10)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while self.max_inflight - self._inflight < wanted and not self._stopping.is_set():
            self._slots_free.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slots_free.wait(), remaining)
        return True

    def _set_paused(self, paused: bool) -> None:
        if paused != self._paused:
            if paused:
                log.warning("%d records in flight for %.0fs: pausing fetch", self._inflight, 5.0)
            else:
                log.info("resuming fetch (%d records in flight)", self._inflight)
            self._paused = paused
            self.metrics.paused.labels(reason="saturated").set(int(paused))
        if self._waiting >= self.max_waiting and not self._waiting_full:
            log.warning(
                "%d records wait for their payment to start: pausing the topics they come from",
                self._waiting,
            )
            self._waiting_full = True
            self.metrics.paused.labels(reason="waiting").set(1)
        elif self._waiting_full and self._waiting < self.max_waiting * 0.9:
            log.info("resuming the topics of records waiting for payments (%d)", self._waiting)
            self._waiting_full = False
            self.metrics.paused.labels(reason="waiting").set(0)
        self._apply_pauses()

    def _apply_pauses(self) -> None:
        assignment = set(self.consumer.assignment())
        wanted: set[TopicPartition] = set()
        if self._paused:
            wanted = assignment
        elif self._waiting_full:
            wanted = {tp for tp in assignment if self.routes[tp.topic].may_wait}
        current = self._paused_partitions & assignment
        if wanted - current:
            self.consumer.pause(*(wanted - current))
        if current - wanted:
            self.consumer.resume(*(current - wanted))
        self._paused_partitions = wanted

    def _start_waiting(self, slot: _Slot) -> None:
        """The record now waits for its payment: hand its in-flight slot back."""
        if slot.waiting:
            return
        slot.waiting = True
        self._inflight -= 1
        self._waiting += 1
        self._slots_free.set()

    def _dispatch(self, tp: TopicPartition, offsets: PartitionOffsets, record: Record) -> None:
        offsets.fetched(record.offset)
        self._inflight += 1
        self.metrics.inflight.set(self._inflight + self._waiting)
        ordering = (tp, record.key) if record.key is not None else None
        previous = self._tails.get(ordering) if ordering is not None else None
        slot = _Slot()
        task = asyncio.create_task(self._process(record, previous, slot))
        if ordering is not None:
            self._tails[ordering] = (task, slot)
        self._tasks[tp].add(task)

        def finished(task: asyncio.Task[None]) -> None:
            self._tasks[tp].discard(task)
            tail = self._tails.get(ordering) if ordering is not None else None
            if ordering is not None and tail is not None and tail[0] is task:
                del self._tails[ordering]
            if slot.waiting:
                self._waiting -= 1
            else:
                self._inflight -= 1
            self.metrics.inflight.set(self._inflight + self._waiting)
            self._slots_free.set()
            if not task.cancelled() and task.exception() is None:
                offsets.done(record.offset)

        task.add_done_callback(finished)

    # -- applying one record ---------------------------------------------------------------

    async def _process(
        self, record: Record, previous: tuple[asyncio.Task[None], _Slot] | None, slot: _Slot
    ) -> None:
        waiting_for_payment.set(lambda: self._start_waiting(slot))  # this task's context only
        if previous is not None:
            before, before_slot = previous
            while not before.done():
                if before_slot.waiting:  # queued behind a record that waits for its payment
                    self._start_waiting(slot)
                await asyncio.wait([before], timeout=1.0)
            if before.cancelled():
                raise asyncio.CancelledError  # the partition was released under us
        route = self.routes[record.topic]
        try:
            event = self.codec.decode(route.event_type, record.value, headers=record.headers)
            check_key(record.key, event.payment_id)
            if route.check is not None:
                route.check(event)
            with tracing.consume_span(record):  # the record's trace context, into Temporal
                result = await route.apply(event)
        except DecodeError as exc:
            await self._dead_letter(record, exc.kind, exc)
        except OrphanError as exc:
            await self._dead_letter(record, "orphan", exc)
        except TemporalRejected as exc:
            await self._dead_letter(record, "rejected_by_temporal", exc)
        except Exception as exc:  # a bug must not stall the partition: keep the record in the DLQ
            log.exception(
                "%s-%s@%s: unexpected error",
                record.topic,
                record.partition,
                record.offset,
                extra=record_fields(record),
            )
            await self._dead_letter(record, "processing_error", exc)
        else:
            self.metrics.event_to_temporal.observe(max(0.0, time.time() - record.timestamp / 1000))
            self.metrics.events_consumed.labels(topic=record.topic, result=result).inc()

    async def _dead_letter(self, record: Record, reason: str, error: BaseException) -> None:
        log.warning(
            "%s-%s@%s -> DLQ (%s): %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
            error,
            extra={**record_fields(record), "reason": reason},
        )
        await self.dead_letters.send(record, reason=reason, error=error)
        self.metrics.dlq_records.labels(topic=record.topic, reason=reason).inc()
        self.metrics.events_consumed.labels(topic=record.topic, result="dlq").inc()

    # -- committing ------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.commit_interval)
            await self.commit()
            self._report_lag()

    async def commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Commit, for each partition, the lowest offset that is not done yet."""
        async with self._commit_lock:
            chosen = self._offsets if partitions is None else partitions
            wanted: dict[TopicPartition, Any] = {}
            for tp in chosen:
                offsets = self._offsets.get(tp)
                offset = offsets.to_commit() if offsets is not None else None
                if offset is not None:
                    wanted[tp] = OffsetAndMetadata(offset, "")
            if not wanted:
                return
            try:
                await self.consumer.commit(wanted)
            except (CommitFailedError, IllegalStateError, KafkaError) as exc:
                log.warning("commit failed (will retry): %r", exc)
                return
            for tp, meta in wanted.items():
                self._offsets[tp].committed = meta.offset

    def _report_lag(self) -> None:
        for tp, offsets in self._offsets.items():
            highwater = self.consumer.highwater(tp)
            position = offsets.committable()
            if highwater is not None and position is not None:
                self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                    max(0, highwater - position)
                )

    # -- rebalance -------------------------------------------------------------------------

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %d partitions: %s", len(assigned), sorted(map(str, assigned)))
        if self._paused and assigned:
            self.consumer.pause(*assigned)
            self._paused_partitions |= assigned
        if assigned:
            self.assigned.set()

    async def _release(
        self, partitions: set[TopicPartition], *, grace: float | None = None
    ) -> None:
        """Finish (within the grace period) or abandon work on ``partitions``, then commit."""
        tasks = {task for tp in partitions for task in self._tasks.get(tp, ())}
        if tasks:
            _, pending = await asyncio.wait(
                tasks, timeout=self.revoke_grace if grace is None else grace
            )
            for task in pending:
                task.cancel()
            if pending:
                log.info("abandoned %d in-flight records (they will be redelivered)", len(pending))
                await asyncio.wait(pending)
        await self.commit(partitions)
        for tp in partitions:
            self._offsets.pop(tp, None)
            self._tasks.pop(tp, None)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        if partitions:
            log.info("released %d partitions", len(partitions))
