"""``paybridge loadgen``: produce payments, read their outcomes, and measure the round trip.

The outcomes topic is read from the end offsets taken *before* the first payment is produced,
without a consumer group, so every outcome of this run is seen and nothing older is. Outcomes
are matched to the run's payments by payment id; a second outcome for a payment is a duplicate
(counted by payment id, and by outcome ``event_id`` for a re-published copy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from aiokafka import TopicPartition

from plumbing.kafka import RecoveringProducer, recovering_producer, stop_consumer
from plumbing.kafka import consumer as kafka_consumer
from plumbing.settings import Settings
from schemas.codec import Codec
from schemas.errors import DecodeError, LoadError
from schemas.events import PaymentOutcome
from tools.load.mix import Mix, PaymentFactory, Planned
from tools.load.stats import Tracker
from tools.producing import encode_record

log = logging.getLogger(__name__)

FLUSH_EVERY = 500  # un-acknowledged sends before waiting for Kafka's acks


@dataclass(frozen=True)
class LoadConfig:
    """One run: ``count`` payments or ``duration`` seconds, at ``rate``/s (None: flat out)."""

    count: int | None = None
    duration: float | None = None
    rate: float | None = None
    mix: Mix = field(default_factory=Mix)
    timeout: float = 120.0  # give up when no outcome arrived for this long after the last send
    settle: float = 1.0  # keep reading this long after the last outcome, for duplicates
    seed: int | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        if self.count is None and self.duration is None:
            raise ValueError("give a count or a duration")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "mix": asdict(self.mix)}


class Sender(Protocol):
    """Where the payments go: Kafka (the bridge's input) or, for benchmarks, elsewhere."""

    async def send(self, planned: Planned) -> None: ...

    async def flush(self) -> None: ...


class KafkaSender:
    """Produces each payment (and its cancel request) keyed by payment id."""

    def __init__(self, producer: RecoveringProducer, settings: Settings, codec: Codec) -> None:
        self.producer = producer
        self.settings = settings
        self.codec = codec
        self._pending: list[asyncio.Future[Any]] = []

    async def send(self, planned: Planned) -> None:
        key, value, headers = encode_record(self.codec, planned.payment, as_json=planned.as_json)
        topic = self.settings.topic_payments
        self._pending.append(await self.producer.send(topic, value, key=key, headers=headers))
        if planned.cancel is not None:
            key, value, headers = encode_record(self.codec, planned.cancel)
            topic = self.settings.topic_cancels
            self._pending.append(await self.producer.send(topic, value, key=key, headers=headers))
        if len(self._pending) >= FLUSH_EVERY:
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)


class OutcomeReader:
    """Reads the outcomes topic from the offsets it had when :meth:`start` was called."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.settings = settings
        self.codec = codec
        self.consumer = kafka_consumer(settings, enable_auto_commit=False)

    async def start(self) -> dict[TopicPartition, int]:
        await self.consumer.start()
        topic = self.settings.topic_outcomes
        partitions = [
            TopicPartition(topic, p)
            for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            await stop_consumer(self.consumer)
            raise LoadError(f"outcomes topic {topic} does not exist (paybridge topics create)")
        self.consumer.assign(partitions)
        end: dict[TopicPartition, int] = await self.consumer.end_offsets(partitions)
        for tp, offset in end.items():
            self.consumer.seek(tp, offset)
        return end

    async def run(self, tracker: Tracker) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200)
            now = time.time()
            for records in batch.values():
                for record in records:
                    try:
                        outcome = self.codec.decode(PaymentOutcome, record.value)
                    except DecodeError:
                        tracker.undecodable += 1
                        continue
                    tracker.record_outcome(outcome, now=now)

    async def stop(self) -> None:
        await stop_consumer(self.consumer)


async def _produce(
    config: LoadConfig, factory: PaymentFactory, sender: Sender, tracker: Tracker
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while True:
        if config.count is not None and n >= config.count:
            break
        if config.duration is not None and loop.time() - start >= config.duration:
            break
        if config.rate is not None:
            delay = start + n / config.rate - loop.time()
            if delay > 0.001:
                await asyncio.sleep(delay)
        planned = factory.next()
        await sender.send(planned)
        tracker.record_sent(planned)
        n += 1
        if n % 100 == 0:
            await asyncio.sleep(0)  # let the outcome reader and the progress display run
    await sender.flush()


async def _tick(tracker: Tracker, on_tick: Callable[[Tracker], None]) -> None:
    while True:
        on_tick(tracker)
        await asyncio.sleep(0.25)


async def run_load(
    settings: Settings,
    config: LoadConfig,
    *,
    sender: Callable[[], contextlib.AbstractAsyncContextManager[Sender]] | None = None,
    on_tick: Callable[[Tracker], None] | None = None,
    codec: Codec | None = None,
    tracker: Tracker | None = None,
) -> Tracker:
    """Send the run's payments, wait for their outcomes (or ``config.timeout``), return them.

    Pass ``tracker`` to keep what was seen if the run is interrupted.
    """
    codec = codec or Codec()
    tracker = tracker if tracker is not None else Tracker()
    factory = PaymentFactory(config.mix, run_id=config.run_id, seed=config.seed)
    reader = OutcomeReader(settings, codec)
    await reader.start()
    background = [asyncio.create_task(reader.run(tracker), name="loadgen-outcomes")]
    if on_tick is not None:
        background.append(asyncio.create_task(_tick(tracker, on_tick), name="loadgen-tick"))
    try:
        open_sender = sender or (lambda: kafka_sender(settings, codec))
        async with open_sender() as chosen:
            await _produce(config, factory, chosen, tracker)
        await _wait(tracker, config, background)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await reader.stop()
    if on_tick is not None:
        on_tick(tracker)
    return tracker


async def _wait(tracker: Tracker, config: LoadConfig, background: list[asyncio.Task[None]]) -> None:
    """Until every outcome is in, or none has come for ``config.timeout`` (an idle timeout:
    a long run keeps waiting as long as outcomes keep arriving)."""
    while tracker.missing > 0:
        last = max(tracker.last_arrival or 0.0, tracker.last_sent or 0.0)
        if time.time() - last >= config.timeout:
            break
        await _sleep_watching(0.1, background)
    await _sleep_watching(config.settle, background)


async def _sleep_watching(seconds: float, tasks: list[asyncio.Task[None]]) -> None:
    """Sleep, but fail at once if a background task (the outcome reader) died."""
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.result()


@contextlib.asynccontextmanager
async def kafka_sender(settings: Settings, codec: Codec) -> AsyncIterator[Sender]:
    # Recovering: after a broker restart a plain idempotent producer can fail every send for
    # good (see RecoveringProducer), and the run would stall.
    producer = recovering_producer(settings, what="loadgen")
    await producer.start()
    try:
        yield KafkaSender(producer, settings, codec)
    finally:
        await producer.stop()
