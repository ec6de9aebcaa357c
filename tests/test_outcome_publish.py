"""Publishing an outcome: a retried attempt never writes a second record, and reads little.

The attempts are played by the test, as Temporal would schedule them (attempt number, heartbeat
details of the last attempt, start_to_close timeout), against the real broker; a worker is an
``OutcomeActivities`` with its own producer. Where a broker must not answer one worker, a
stand-in at that producer's client boundary holds its produce requests (``Unanswered``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from temporalio.testing import ActivityEnvironment

from plumbing.kafka import (
    RecoveringProducer,
    client_kwargs,
    create_topics,
    outcome_reader,
    recovering_producer,
)
from plumbing.settings import Settings
from schemas.codec import Codec
from schemas.events import OutcomeStatus, PaymentOutcome
from schemas.ids import outcome_event_id
from tests.support import produce_raw, read_topic
from workflows.activities.kafka import OutcomeActivities
from workflows.models import PublishOutcomeInput

PRODUCE_API_KEY = 0


def outcome(payment_id: str, *, completed_at: datetime | None = None) -> PaymentOutcome:
    now = datetime.now(UTC)
    return PaymentOutcome(
        event_id=outcome_event_id(payment_id, OutcomeStatus.SUCCEEDED),
        payment_id=payment_id,
        status=OutcomeStatus.SUCCEEDED,
        amount_minor=1250,
        currency="EUR",
        workflow_id=f"payment-{payment_id}",
        created_at=now,
        completed_at=completed_at or now,
    )


@dataclasses.dataclass
class Worker:
    """One worker process's outcome publishing: its producer, and the records its retries read."""

    producer: RecoveringProducer
    activities: OutcomeActivities
    reads: list[int]


def counting(make: Callable[[], AIOKafkaConsumer], reads: list[int]) -> Callable[[], Any]:
    def made() -> AIOKafkaConsumer:
        reader = make()
        getmany = reader.getmany

        async def counted(*args: Any, **kwargs: Any) -> Any:
            batch = await getmany(*args, **kwargs)
            reads.append(sum(len(records) for records in batch.values()))
            return batch

        reader.getmany = counted  # type: ignore[method-assign]
        return reader

    return made


@contextlib.asynccontextmanager
async def workers(settings: Settings) -> AsyncIterator[Callable[[], Any]]:
    """``start()`` makes one more worker; all are stopped at the end."""
    made: list[Worker] = []

    async def start() -> Worker:
        producer = recovering_producer(settings, what=f"worker {len(made) + 1}")
        await producer.start()
        reads: list[int] = []
        activities = OutcomeActivities(
            producer,
            topic=settings.topic_outcomes,
            codec=Codec(),
            reader=counting(outcome_reader(settings), reads),
        )
        made.append(Worker(producer, activities, reads))
        return made[-1]

    try:
        yield start
    finally:
        for worker in made:
            await worker.producer.stop()


class Temporal:
    """Plays the server for one activity: numbers its attempts, gives each the start_to_close
    timeout and the heartbeat details last recorded by an earlier attempt."""

    def __init__(self, *, start_to_close: float = 4.0) -> None:
        self.start_to_close = timedelta(seconds=start_to_close)
        self.details: list[Any] = []
        self.attempts = 0
        self.scheduled = datetime.now(UTC)

    async def attempt(
        self, worker: Worker, published: PaymentOutcome, *, scheduled: datetime | None = None
    ) -> None:
        self.attempts += 1
        env = ActivityEnvironment()
        env.info = dataclasses.replace(
            env.info,
            attempt=self.attempts,
            heartbeat_details=list(self.details),
            start_to_close_timeout=self.start_to_close,
            scheduled_time=scheduled or self.scheduled,
            current_attempt_scheduled_time=datetime.now(UTC),
        )
        env.on_heartbeat = self._heartbeat
        await env.run(worker.activities.publish_outcome, PublishOutcomeInput(outcome=published))

    def _heartbeat(self, *details: Any) -> None:
        self.details = list(details)


class Unanswered:
    """The broker stops answering one worker's producer: the produce requests it sends wait
    here, unwritten, until ``release()`` forwards them. A request whose connection is closed
    meanwhile fails, as a request on a closed connection does; this stand-in models requests
    that had not left the worker's host (one already on the wire may still land: see
    docs/contract.md)."""

    def __init__(self, producer: RecoveringProducer) -> None:
        self.client = producer._producer.client
        self.held: list[tuple[Any, asyncio.Future[Any], Callable[[], Any]]] = []
        self.released = False
        real = self.client.send

        async def send(node_id: int, request: Any, **kwargs: Any) -> Any:
            if self.released or getattr(request, "API_KEY", None) != PRODUCE_API_KEY:
                return await real(node_id, request, **kwargs)
            await self.client.ready(node_id, **kwargs)
            conn = self.client._conns[(node_id, kwargs.get("group", 0))]
            self._watch(conn)
            held: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.held.append((conn, held, lambda: real(node_id, request, **kwargs)))
            return await held

        self.client.send = send

    def _watch(self, conn: Any) -> None:
        if getattr(conn, "_test_watched", False):
            return
        close = conn.close

        def closing(*args: Any, **kwargs: Any) -> Any:
            for held_on, held, _ in self.held:
                if held_on is conn and not held.done():
                    held.set_exception(KafkaConnectionError("connection closed"))
            return close(*args, **kwargs)

        conn.close = closing
        conn._test_watched = True

    async def release(self) -> int:
        """Forward what is still held; returns how many requests went to the broker."""
        self.released = True
        forwarded = 0
        for conn, held, forward in self.held:
            if held.done():
                continue
            if not conn.connected():
                held.set_exception(KafkaConnectionError("connection closed"))
                continue
            forwarded += 1
            try:
                held.set_result(await forward())
            except Exception as exc:
                held.set_exception(exc)
        return forwarded


async def copies(settings: Settings, payment_id: str, *, expect: int = 1) -> list[Any]:
    records = await read_topic(settings, settings.topic_outcomes, expect=expect, timeout=10)
    return [r for r in records if r.key == payment_id.encode()]


def partition_of(key: bytes, count: int) -> int:
    partitions = list(range(count))
    return int(DefaultPartitioner()(key, partitions, partitions))


@contextlib.contextmanager
def suppressed_kafka_errors() -> Iterator[list[BaseException]]:
    raised: list[BaseException] = []
    try:
        yield raised
    except KafkaError as exc:
        raised.append(exc)


async def test_a_retried_publish_finds_its_record_and_writes_no_copy(settings: Settings) -> None:
    async with workers(settings) as start:
        worker = await start()
        temporal = Temporal()
        published = outcome("retry-1")
        await temporal.attempt(worker, published)
        # The worker lost track of attempt 1 (timed out, or died after the send): attempt 2.
        await temporal.attempt(worker, published)
        # A payment whose first attempt never reached Kafka is published by its retry.
        never = Temporal()
        never.attempts = 2
        await never.attempt(worker, outcome("retry-2"))

    records = await read_topic(settings, settings.topic_outcomes, expect=2, timeout=10)
    codec = Codec()
    ids = sorted(codec.decode(PaymentOutcome, r.value).payment_id for r in records)
    assert ids == ["retry-1", "retry-2"]
    # Every attempt stamps the record with the outcome's completed_at, whatever its clock.
    for r in records:
        assert r.timestamp == int(
            codec.decode(PaymentOutcome, r.value).completed_at.timestamp() * 1000
        )


async def test_a_first_send_left_unanswered_is_given_up_before_the_retry(
    settings: Settings,
) -> None:
    """(a) The first attempt is still sending when Temporal retries it on another worker."""
    async with workers(settings) as start:
        a, b = await start(), await start()
        temporal = Temporal(start_to_close=4.0)
        published = outcome(f"slow-{uuid.uuid4().hex[:6]}")
        unanswered = Unanswered(a.producer)  # the broker does not answer worker A
        first = asyncio.create_task(temporal.attempt(a, published))
        try:
            # Temporal waits for attempt 1 up to its start_to_close timeout, then retries it
            # on worker B, whatever worker A is still doing.
            await asyncio.wait({first}, timeout=temporal.start_to_close.total_seconds())
            ended_in_time = first.done()
            await temporal.attempt(b, published)
        finally:
            # Worker A's link to the broker comes back: what it still holds goes out now.
            forwarded = await unanswered.release()
        await asyncio.wait({first}, timeout=10)
        assert first.done()
        attempt_1_error = first.exception()
    assert len(await copies(settings, published.payment_id)) == 1
    assert ended_in_time, "attempt 1 was still sending when its timeout ran out"
    assert forwarded == 0 and isinstance(attempt_1_error, KafkaError)


async def test_skewed_clocks_do_not_hide_the_first_record(settings: Settings) -> None:
    """(b) Temporal's clock is ten minutes ahead of the worker that wrote attempt 1's record."""
    ahead = datetime.now(UTC) + timedelta(minutes=10)
    published = outcome(f"skew-{uuid.uuid4().hex[:6]}", completed_at=ahead)
    async with workers(settings) as start:
        a, b = await start(), await start()
        temporal = Temporal()
        await temporal.attempt(a, published, scheduled=ahead)
        # Worker A died after its send, before reporting it: attempt 2 runs on B.
        await temporal.attempt(b, published, scheduled=ahead + timedelta(seconds=30))
    [record] = await copies(settings, published.payment_id)
    assert record.timestamp == int(ahead.timestamp() * 1000)


async def test_a_partition_count_change_between_attempts_writes_no_copy(
    settings: Settings,
) -> None:
    """(c) The outcomes topic grows from 2 to 6 partitions between attempt 1 and its retry."""
    settings = settings.model_copy(update={"topic_outcomes": f"{settings.topic_outcomes}-grown"})
    await create_topics(settings, {settings.topic_outcomes: 2})
    # A key whose partition under 6 partitions is not the one under 2.
    payment_id = next(
        pid
        for pid in (f"grow-{uuid.uuid4().hex[:6]}" for _ in range(100))
        if partition_of(pid.encode(), 2) != partition_of(pid.encode(), 6)
    )
    published = outcome(payment_id)
    async with workers(settings) as start:
        a = await start()
        temporal = Temporal()
        await temporal.attempt(a, published)  # to the key's partition of 2; then A dies
        admin = AIOKafkaAdminClient(**client_kwargs(settings))
        await admin.start()
        try:
            await admin.create_partitions({settings.topic_outcomes: NewPartitions(total_count=6)})
        finally:
            await admin.close()
        b = await start()  # sees 6 partitions
        assert len(await b.producer.partitions_for(settings.topic_outcomes)) == 6
        await temporal.attempt(b, published)
    records = await copies(settings, payment_id)
    assert [r.partition for r in records] == [partition_of(payment_id.encode(), 2)]


async def test_each_retry_reads_only_what_was_written_since_the_last_look(
    settings: Settings,
) -> None:
    """A retry's cost does not grow with the backlog since the first attempt."""
    published = outcome(f"cost-{uuid.uuid4().hex[:6]}")
    key = published.payment_id.encode()
    async with workers(settings) as start:
        a, b, c = await start(), await start(), await start()
        partition = await a.activities._partition(key)
        temporal = Temporal(start_to_close=3.0)

        async def fill(n: int, tag: str, *, here: bool = True) -> None:
            """n other records, in the key's partition (``here``) or in the others."""
            keys = (f"{tag}-{i}" for i in range(20 * n))
            other = [k for k in keys if (partition_of(k.encode(), 6) == partition) == here][:n]
            await produce_raw(
                settings, settings.topic_outcomes, [(k.encode(), b"other", []) for k in other]
            )

        Unanswered(a.producer)
        with suppressed_kafka_errors() as raised:
            await temporal.attempt(a, published)  # never answered: given up
        assert raised
        await fill(200, "before-2")
        Unanswered(b.producer)
        with suppressed_kafka_errors() as raised:
            await temporal.attempt(b, published)  # reads the 200, then is not answered either
        assert raised
        assert sum(b.reads) == 200
        await fill(300, "before-3")
        await fill(50, "elsewhere", here=False)  # other partitions are never read
        await temporal.attempt(c, published)
        assert sum(c.reads) == 300
    assert len(await copies(settings, published.payment_id, expect=551)) == 1
