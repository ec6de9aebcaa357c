"""The bridge: consumes the input topics and applies each record to Temporal.

- Every record is applied with one Temporal call (signal-with-start, see ``bridge.routing``)
  or goes to the DLQ, and is then done: no record waits inside the bridge for another.
- Records with the same key (per partition) are applied in offset order; records with other
  keys run concurrently, also inside one partition, up to ``PAYBRIDGE_MAX_INFLIGHT``.
- A partition's committed offset is the lowest offset not yet done (see ``bridge.offsets``):
  a crash can redeliver records, never skip one. Temporal deduplicates the redelivery.
- When the in-flight limit is reached the bridge stops taking records until a batch of slots is
  free (records stay in the Kafka client's bounded fetch buffer). If that lasts (Temporal down,
  calls backing off), it pauses its partitions and keeps polling so that it stays in the group.
  The consumer's own pause state is the only one; whatever a poll returns is processed, never
  dropped.
- A record that cannot be decoded, validated or verified goes to the DLQ and is done; the
  records behind it keep flowing. A record that can be neither applied nor dead-lettered stops
  the bridge (``failure``): its supervisor reports it and exits, rather than let the partition
  stall behind it unseen.
- On revoke and on shutdown, in-flight work gets a grace period, the rest is abandoned (it
  will be redelivered) and what is done is committed; every commit has a time limit.
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
from bridge.routing import Route
from plumbing import tracing
from plumbing.dead_letters import DeadLetters
from plumbing.lenient_records import undecodable_header_keys
from plumbing.logs import record_fields
from schemas.codec import Codec
from schemas.errors import DecodeError, TemporalRejected

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]


def check_key(key: bytes | None, payment_id: str) -> None:
    """Records are keyed by payment id (UTF-8): that key is what orders a payment's events."""
    if key is None:
        raise DecodeError(
            "validation", f"record has no key; it must be the payment_id {payment_id!r}"
        )
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("validation", f"record key {key[:64]!r} is not UTF-8") from exc
    if text != payment_id:
        raise DecodeError(
            "validation", f"record key {text[:64]!r} is not the payment_id {payment_id!r}"
        )


def check_header_keys(record: Record) -> None:
    """A header key that is not UTF-8 (read by ``plumbing.lenient_records``) is refused."""
    bad = undecodable_header_keys(record)
    if bad:
        raw = ", ".join(repr(k.raw[:64]) for k in bad[:5])
        raise DecodeError("undecodable", f"{len(bad)} header key(s) are not UTF-8: {raw}")


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
        commit_timeout: float = 5.0,
        pause_after: float = 5.0,
    ) -> None:
        self.consumer = consumer
        self.routes = dict(routes)
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.codec = codec
        self.max_inflight = max_inflight
        metrics.inflight_limit.set(max_inflight)
        self.commit_interval = commit_interval
        # On shutdown, in-flight records get this long to finish (see run()).
        self.grace = grace
        # A revoke callback that runs long holds up the whole group's rebalance (and nears
        # the session timeout); abandoned records are redelivered and deduplicated anyway.
        self.revoke_grace = revoke_grace
        self.commit_timeout = commit_timeout
        self.pause_after = pause_after
        self.assigned = asyncio.Event()
        # The error that stopped the bridge (a record neither applied nor dead-lettered).
        self.failure: BaseException | None = None
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = defaultdict(set)
        self._tails: dict[tuple[TopicPartition, bytes], asyncio.Task[None]] = {}
        self._inflight = 0
        self._slots_free = asyncio.Event()
        self._saturated = False
        self._stopping = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._polled_at = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------

    def subscribe(self) -> None:
        self.consumer.subscribe(topics=sorted(self.routes), listener=_Listener(self))

    async def run(self) -> None:
        """Consume until :meth:`stop` is called (or a record fails for good: ``failure``);
        then finish in-flight records within ``grace``, commit, and return.

        At most ``grace`` + 2 s for abandoned records to unwind + ``commit_timeout``."""
        self.subscribe()
        committer = asyncio.create_task(self._commit_loop(), name="paybridge-commit")
        try:
            while not self._stopping.is_set():
                self._polled_at = time.monotonic()
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
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def idle_for(self) -> float:
        """Seconds since the poll loop last went round (it does at least every
        ``pause_after`` + 0.2 s while it runs)."""
        return time.monotonic() - self._polled_at

    @property
    def inflight(self) -> int:
        """Records fetched and not done yet."""
        return self._inflight

    # -- fetching --------------------------------------------------------------------------

    async def _poll_once(self) -> None:
        ready = await self._wait_for_slots(self.pause_after)
        if self._stopping.is_set():
            return
        # Saturated for a while: pause fetching, but keep polling to stay in the group.
        self._set_paused(not ready)
        capacity = self.max_inflight - self._inflight
        batch = await self.consumer.getmany(
            timeout_ms=200 if ready else 0, max_records=max(1, min(capacity, 500))
        )
        # Whatever the poll returned is processed, also from a partition that was to be paused
        # (e.g. assigned during the poll): the consumer's position has moved past it.
        for tp, records in batch.items():
            offsets = self._offsets.get(tp)
            if offsets is None:
                offsets = self._offsets[tp] = PartitionOffsets()
            for record in records:
                self._dispatch(tp, offsets, record)

    async def _wait_for_slots(self, patience: float) -> bool:
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
        """Pause every assigned partition, or resume them all. The consumer's own pause state
        is the only record of it (the bridge pauses nothing else)."""
        if paused != self._saturated:
            if paused:
                log.warning(
                    "%d records in flight for %.0fs: pausing fetch",
                    self._inflight,
                    self.pause_after,
                )
            else:
                log.info("resuming fetch (%d records in flight)", self._inflight)
            self._saturated = paused
            self.metrics.paused.labels(reason="saturated").set(int(paused))
        if paused:
            unpaused = set(self.consumer.assignment()) - set(self.consumer.paused())
            if unpaused:
                self.consumer.pause(*unpaused)
        else:
            paused_now = set(self.consumer.paused())
            if paused_now:
                self.consumer.resume(*paused_now)

    def _dispatch(self, tp: TopicPartition, offsets: PartitionOffsets, record: Record) -> None:
        offsets.fetched(record.offset)
        self._inflight += 1
        self.metrics.inflight.set(self._inflight)
        ordering = (tp, record.key) if record.key is not None else None
        previous = self._tails.get(ordering) if ordering is not None else None
        task = asyncio.create_task(self._process(record, previous))
        if ordering is not None:
            self._tails[ordering] = task
        self._tasks[tp].add(task)

        def finished(task: asyncio.Task[None]) -> None:
            self._tasks[tp].discard(task)
            if ordering is not None and self._tails.get(ordering) is task:
                del self._tails[ordering]
            self._inflight -= 1
            self.metrics.inflight.set(self._inflight)
            self._slots_free.set()
            if task.cancelled():
                return  # abandoned on revoke or shutdown: it will be redelivered
            error = task.exception()
            if error is None:
                offsets.done(record.offset)
                return
            # Neither applied nor dead-lettered: committing past it would lose it, and not
            # committing would stall the partition unseen. Stop, and let the supervisor say so.
            if self.failure is None:
                self.failure = error
            self.stop()

        task.add_done_callback(finished)

    # -- applying one record ---------------------------------------------------------------

    async def _process(self, record: Record, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])
            if previous.cancelled():
                raise asyncio.CancelledError  # the partition was released under us
        route = self.routes[record.topic]
        try:
            check_header_keys(record)
            event = self.codec.decode(route.event_type, record.value, headers=record.headers)
            check_key(record.key, event.payment_id)
            if route.check is not None:
                route.check(event)
            with tracing.consume_span(record):  # the record's trace context, into Temporal
                result = await route.apply(event, record)
        except DecodeError as exc:
            await self._dead_letter(record, exc.kind, exc)
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
            try:
                await self.commit()
                self._report_lag()
            except Exception:  # one bad round must not end periodic commits for good
                log.exception("periodic commit failed; trying again in %.0fs", self.commit_interval)

    async def commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Commit, for each partition, the lowest offset that is not done yet; gives up (to
        try again later) after ``commit_timeout`` seconds, so that no commit holds the lock or
        a shutdown for longer."""
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
                await asyncio.wait_for(self.consumer.commit(wanted), self.commit_timeout)
            except TimeoutError:
                log.warning("commit got no answer in %.0fs (will retry)", self.commit_timeout)
                return
            except (CommitFailedError, IllegalStateError, KafkaError) as exc:
                log.warning("commit failed (will retry): %r", exc)
                return
            for tp, meta in wanted.items():
                if tp in self._offsets:
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
        if self._saturated and assigned:
            self.consumer.pause(*assigned)
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
                _, stuck = await asyncio.wait(pending, timeout=2.0)
                if stuck:
                    log.error("%d abandoned records did not unwind in 2s", len(stuck))
        await self.commit(partitions)
        for tp in partitions:
            self._offsets.pop(tp, None)
            self._tasks.pop(tp, None)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        if partitions:
            log.info("released %d partitions", len(partitions))
