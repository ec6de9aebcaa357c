"""Kafka clients built from settings, and topic administration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    TopicAlreadyExistsError,
    UnknownProducerId,
)

from plumbing import lenient_records
from plumbing.settings import Settings
from schemas.errors import ConfigError, TopicError

log = logging.getLogger(__name__)

# Large enough for the DLQ to keep an oversized bad record untouched.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
# Input and DLQ topics accept records this large, so that an oversized bad record reaches the
# bridge and the DLQ (untouched) instead of failing at its producer or being lost on the way.
TOPIC_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection arguments shared by every aiokafka client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = ssl_context(settings)
    elif settings.kafka_ssl_certfile:
        raise ConfigError("KAFKA_SECURITY_PROTOCOL", "KAFKA_SSL_CERTFILE needs SSL or SASL_SSL")
    if settings.kafka_security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            kwargs["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return kwargs


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS to Kafka: the CA bundle of ``KAFKA_SSL_CAFILE`` (default: the system's), and for
    mTLS the client certificate ``KAFKA_SSL_CERTFILE`` with its key ``KAFKA_SSL_KEYFILE``
    (``KAFKA_SSL_KEY_PASSWORD`` if it is encrypted)."""
    try:
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        problem = f"cannot load {settings.kafka_ssl_cafile}: {exc}"
        raise ConfigError("KAFKA_SSL_CAFILE", problem) from exc
    if settings.kafka_ssl_keyfile and not settings.kafka_ssl_certfile:
        raise ConfigError("KAFKA_SSL_CERTFILE", "is required with KAFKA_SSL_KEYFILE")
    if settings.kafka_ssl_certfile:
        password = settings.kafka_ssl_key_password
        try:
            context.load_cert_chain(
                settings.kafka_ssl_certfile,
                settings.kafka_ssl_keyfile,
                password.get_secret_value() if password is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "KAFKA_SSL_CERTFILE",
                f"cannot load {settings.kafka_ssl_certfile} with key "
                f"{settings.kafka_ssl_keyfile or '(in the same file)'}: {exc}",
            ) from exc
    return context


def idempotent_producer(settings: Settings, **extra: Any) -> AIOKafkaProducer:
    """A producer that never writes a retried send twice (acks=all, idempotence on)."""
    return AIOKafkaProducer(
        **client_kwargs(settings),
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_request_size=MAX_REQUEST_BYTES,
        **extra,
    )


class RecordSender(Protocol):
    """What publishing code needs of a producer: an aiokafka producer or a
    :class:`RecoveringProducer`."""

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any: ...

    async def partitions_for(self, topic: str) -> set[int]: ...

    async def flush(self) -> None: ...


# The broker no longer knows this producer's id or sequence numbers (it lost its producer state,
# e.g. across a restart). aiokafka's idempotent producer never recovers from these: every later
# send to the partition fails the same way. The batch was rejected, so nothing was written.
PRODUCER_STATE_ERRORS: tuple[type[KafkaError], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
)
SEND_TIMEOUT_SECONDS = 60.0
# How long discarding a producer waits for the requests it already sent to be answered (or to
# fail with its closed connections).
ABORT_WAIT_SECONDS = 5.0


async def abort_producer(producer: AIOKafkaProducer, error: KafkaError) -> None:
    """Stop ``producer`` without delivering what it still holds.

    aiokafka's ``stop()`` flushes first, and an idempotent producer retries a batch until the
    broker takes it, for ever: a producer stopped while the broker is unreachable or hangs
    keeps trying in the background (a ``wait_for`` around ``stop()`` abandons the wait, not the
    sending), and its records can land minutes later. Here no new request is sent, the
    connections are closed, which fails the requests in flight (a record whose answer came
    first resolves its send as written), and every record still held fails with ``error``.
    Afterwards this producer writes nothing; only a request already on its way to the broker
    may still be appended by it.
    """
    # aiokafka has no public abort: these are its producer's sender task, accumulator and
    # client internals (aiokafka 0.14).
    loop = asyncio.get_running_loop()
    producer._closed = True  # stop() becomes a no-op
    sender = producer._sender
    task = sender.sender_task if sender is not None else None
    if task is not None and not task.done():
        task.cancel()  # no new produce requests
    client = producer.client
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), ABORT_WAIT_SECONDS)
    # The requests in flight fail with their connections and their batches go back to the
    # accumulator after the retry back-off; wait for that (or for their answers).
    accumulator = producer._message_accumulator
    deadline = loop.time() + ABORT_WAIT_SECONDS
    # (polled: aiokafka signals no event when a batch goes back to the accumulator)
    while accumulator._pending_batches and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    _fail_held(accumulator, error)
    # Requests that failed wait for a metadata refresh that the closed client never makes:
    # release them, so that the sender task ends instead of lingering.
    waiting = client._md_update_fut
    if waiting is not None and not waiting.done():
        waiting.set_result(False)
    if task is not None and not task.done():
        await asyncio.wait({task}, timeout=1.0)


# aiokafka's sender task can die of an unexpected error (its routine re-raises anything it
# did not expect as "Unexpected error during batch delivery"; seen in a loaded test run after
# a request timed out). The producer then fails every send at once, for good: replace it.
SENDER_STOPPED = KafkaError("the producer's sender task stopped")


def sender_stopped(producer: AIOKafkaProducer) -> bool:
    """Whether ``producer`` was started and its background sender has since ended (it will
    never send again). aiokafka 0.14's sender task, which it does not expose publicly."""
    sender = getattr(producer, "_sender", None)
    task = sender.sender_task if sender is not None else None
    return task is not None and task.done() and not getattr(producer, "_closed", False)


def _fail_held(accumulator: Any, error: KafkaError) -> None:
    """Fail every record ``accumulator`` holds, and every later send. (Its own ``fail_all``
    trips over batches that went back to it after a failed request: their done callbacks
    expect them among the pending ones.)"""
    held = [batch for batches in accumulator._batches.values() for batch in batches]
    held += list(accumulator._pending_batches)
    accumulator._pending_batches.update(held)
    accumulator._batches.clear()
    accumulator._exception = error
    for batch in held:
        batch.failure(error)
        for signal in (batch.future, batch._drain_waiter):  # the senders' own futures carry it
            if signal.done() and not signal.cancelled():
                signal.exception()


class RecoveringProducer:
    """A long-lived idempotent producer that replaces itself when the broker forgets it.

    Seen on the embedded broker after two clean restarts: every send failed with
    OutOfOrderSequenceNumber, for good, so the worker published no more outcomes. Kafka's Java
    client recovers from this by bumping its epoch (KIP-360); aiokafka does not. Here a send
    failing with a producer-state error gets a fresh producer (new producer id) and is sent again
    once; one that hangs past ``send_timeout`` also replaces the producer, then raises
    :class:`KafkaTimeoutError` because it may have been written. A replaced producer is
    aborted (:func:`abort_producer`): its pending sends fail and nothing it held is written
    later. Callers already retry Kafka errors (the DLQ writer, the outcome activity, which first
    looks for its record; the outcome activity uses :meth:`send_or_discard`).
    """

    def __init__(
        self,
        make: Callable[[], AIOKafkaProducer],
        *,
        what: str,
        send_timeout: float = SEND_TIMEOUT_SECONDS,
        on_replace: Callable[[], None] | None = None,
    ) -> None:
        self._make = make
        self._what = what
        self._send_timeout = send_timeout
        self._on_replace = on_replace
        self._producer = make()
        self._started = False
        self._lock = asyncio.Lock()
        self._aborts: dict[AIOKafkaProducer, asyncio.Future[None]] = {}
        self.replaced = 0

    async def start(self) -> None:
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        await self._producer.stop()

    async def flush(self) -> None:
        await (await self._current()).flush()

    async def partitions_for(self, topic: str) -> set[int]:
        return set(await (await self._current()).partitions_for(topic))

    async def topics(self) -> set[str]:
        """The topics of fresh cluster metadata (not the cache): raises :class:`KafkaError`
        when no broker answers. For readiness checks."""
        metadata = await (await self._current()).client.fetch_all_metadata()
        return set(metadata.topics())

    async def reachable(self) -> bool:
        """Whether Kafka answers a metadata request now (a readiness check)."""
        await self.topics()  # raises when unreachable
        return True

    async def send_or_discard(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes,
        partition: int,
        timestamp_ms: int,
        headers: list[tuple[str, bytes]],
        timeout: float,
    ) -> Any:
        """Send one record and wait at most ``timeout`` seconds for Kafka to take it.

        When this returns, the record is written (its ``RecordMetadata``). When it raises (a
        :class:`KafkaError`, or the caller's cancellation), this process will never write the
        record afterwards: a send that was not answered in time, or failed in a way that leaves
        it unknown, discards the producer that held it (:func:`abort_producer`; later sends get
        a fresh one). Only a request already on its way to the broker may still be appended
        by the broker. Unlike :meth:`send_and_wait` it never sends a record a second time.
        """
        producer = await self._current()
        sending = asyncio.ensure_future(
            producer.send_and_wait(topic, value, key, partition, timestamp_ms, headers)
        )
        try:
            done, _ = await asyncio.wait({sending}, timeout=timeout)
        except asyncio.CancelledError:
            await self._replace(producer, KafkaTimeoutError(f"{self._what}: send cancelled"))
            raise
        if not done:
            late = f"{self._what}: no answer to a send to {topic} in {timeout:.1f}s"
            await self._replace(producer, KafkaTimeoutError(late))
        try:
            return await sending  # written, also if it was written while being discarded
        except PRODUCER_STATE_ERRORS as exc:
            # The broker forgot this producer; an earlier request of the same batch may have
            # been written before it did. Not sent again: the caller finds out which.
            await self._replace(producer, exc)
            raise

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Task[Any]:
        """Pipelined send, like aiokafka's: the task resolves once Kafka has the record.

        Callers bound how many they leave pending (the load generator, replay and the CLI
        flush every few hundred), since this does not wait for buffer space.
        """
        task = asyncio.create_task(
            self.send_and_wait(topic, value, key, partition, timestamp_ms, headers)
        )
        await asyncio.sleep(0)  # let it reach the producer's buffer, in order of sending
        return task

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        for attempt in (1, 2):
            producer = await self._current()
            try:
                return await asyncio.wait_for(
                    producer.send_and_wait(topic, value, key, partition, timestamp_ms, headers),
                    self._send_timeout,
                )
            except PRODUCER_STATE_ERRORS as exc:
                await self._replace(producer, exc)
                if attempt == 2:
                    raise
            except KafkaError as exc:
                if not sender_stopped(producer):
                    raise  # the caller's to retry; this producer still works
                # Its sender died: the record failed with it, and so will every later send.
                await self._replace(producer, exc)
                if attempt == 2:
                    raise
            except TimeoutError as exc:
                await self._replace(producer, exc)
                raise KafkaTimeoutError(
                    f"{self._what}: no answer to a send to {topic} in {self._send_timeout:.0f}s"
                ) from exc
        raise AssertionError("unreachable")

    async def _current(self) -> AIOKafkaProducer:
        if self._started and sender_stopped(self._producer):
            await self._replace(self._producer, SENDER_STOPPED)
        if not self._started:  # a replacement made while Kafka was unreachable
            async with self._lock:
                if not self._started:
                    await self._producer.start()
                    self._started = True
        return self._producer

    async def _replace(self, failed: AIOKafkaProducer, error: BaseException) -> None:
        """Put a fresh producer in ``failed``'s place (once) and return when ``failed`` has
        been aborted, also when another send started the abort."""
        async with self._lock:
            if self._producer is failed:
                log.warning("%s: replacing the Kafka producer after %r", self._what, error)
                self._producer, self._started = self._make(), False
                self.replaced += 1
                if self._on_replace is not None:
                    self._on_replace()
                # Its pending sends fail (and come back to their callers); nothing it held is
                # written afterwards.
                reason = error if isinstance(error, KafkaError) else KafkaTimeoutError(repr(error))
                started = asyncio.ensure_future(abort_producer(failed, reason))
                self._aborts[failed] = started
                started.add_done_callback(lambda _: self._aborts.pop(failed, None))
                with contextlib.suppress(KafkaError):
                    await self._producer.start()
                    self._started = True
            aborting = self._aborts.get(failed)
        if aborting is not None:
            await asyncio.shield(aborting)


def recovering_producer(
    settings: Settings, *, what: str, on_replace: Callable[[], None] | None = None
) -> RecoveringProducer:
    """An :func:`idempotent_producer` for a long-lived process (bridge DLQ, worker)."""
    return RecoveringProducer(
        lambda: idempotent_producer(settings), what=what, on_replace=on_replace
    )


FETCH_API_KEY = 1
FETCH_MAX_WAIT_MS = 100


def consumer(settings: Settings, *topics: str, **extra: Any) -> AIOKafkaConsumer:
    """A consumer whose idle fetches wait like Kafka's long poll, whatever the broker does.

    Kafka holds a fetch that has no data for up to ``fetch_max_wait_ms``. A broker that
    answers at once (the embedded dev broker does) would make aiokafka's fetcher spin at
    thousands of empty fetches a second, a core's worth of CPU while idle. So an empty answer
    that came back early is held for the rest of that time here; against Kafka this is a no-op.

    A record whose header key is not UTF-8 does not stop it (``plumbing.lenient_records``):
    the record is returned with that key as an ``UndecodableHeaderKey``.
    """
    lenient_records.install()
    kwargs: dict[str, Any] = {"fetch_max_wait_ms": FETCH_MAX_WAIT_MS, **extra}
    created = AIOKafkaConsumer(*topics, **client_kwargs(settings), **kwargs)
    _hold_empty_fetches(created, kwargs["fetch_max_wait_ms"] / 1000)
    return created


async def stop_and_leave_group(created: AIOKafkaConsumer) -> None:
    """Stop a group consumer and leave its group, also when it has a static identity.

    A static member (``group_instance_id``) does not send LeaveGroup on close, so the group
    keeps its partitions for it: on Kafka until ``session.timeout.ms`` passes, on the embedded
    broker for good. A bridge stopped on purpose has committed what it finished, so it hands its
    partitions over now; only a crashed bridge relies on its static id to take them back.
    LeaveGroup by member id is valid for a static member (Kafka removes it and its instance id).
    """
    coordinator = getattr(created, "_coordinator", None)
    if coordinator is not None:
        coordinator._group_instance_id = None  # aiokafka has no close option for this
    await created.stop()


def outcome_reader(settings: Settings) -> Callable[[], AIOKafkaConsumer]:
    """Makes group-less consumers with which a retried outcome publish looks for its record
    (from the earliest offset if the one it asks for is gone)."""
    return lambda: consumer(settings, enable_auto_commit=False, auto_offset_reset="earliest")


def _hold_empty_fetches(created: AIOKafkaConsumer, wait: float) -> None:
    client = created._client  # aiokafka offers no hook for this: wrap the client's send
    send = client.send

    async def held_send(node_id: int, request: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(request, "API_KEY", None) != FETCH_API_KEY:
            return await send(node_id, request, *args, **kwargs)
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await send(node_id, request, *args, **kwargs)
        remaining = wait - (loop.time() - started)
        if remaining > 0 and _no_records(response):
            await asyncio.sleep(remaining)
        return response

    client.send = held_send


def _no_records(response: Any) -> bool:
    for _topic, partitions in response.topics:
        for _partition, _error, _highwater, *data in partitions:
            if data and data[-1]:
                return False
    return True


async def start_when_reachable(client: Any, settings: Settings, *, what: str) -> None:
    """Start an aiokafka client, waiting (and saying so) while Kafka cannot be reached, so that
    a process started during a broker restart waits for it instead of exiting."""
    delay = 0.5
    while True:
        try:
            await client.start()
            return
        except KafkaConnectionError as exc:
            log.warning(
                "%s: Kafka at %s (KAFKA_BOOTSTRAP_SERVERS) not reachable (%s); retrying in %.1fs",
                what,
                settings.kafka_bootstrap_servers,
                exc,
                delay,
            )
            await asyncio.sleep(delay)  # a stopped aiokafka client cannot start again: retry
            delay = min(delay * 2, 10.0)


def topic_specs(settings: Settings) -> dict[str, int]:
    """Every topic paybridge uses, with its partition count."""
    specs = dict.fromkeys(settings.input_topics, settings.input_partitions)
    specs[settings.topic_outcomes] = settings.input_partitions
    specs[settings.topic_dlq] = 1
    return specs


async def create_topics(
    settings: Settings,
    specs: dict[str, int] | None = None,
    *,
    replication_factor: int = 1,
    min_insync_replicas: int = 1,
) -> list[str]:
    """Create the missing topics; returns the names created (existing ones are left as they are).

    ``replication_factor`` and ``min_insync_replicas`` apply to the topics created: 1 and 1 in
    development, 3 and 2 in production (with ``acks=all`` producers, a write then survives the
    loss of one broker, and is refused rather than kept on one broker alone). Raises
    :class:`TopicError` with Kafka's message when it refuses a topic.
    """
    if not 1 <= min_insync_replicas <= replication_factor:
        raise TopicError(
            f"min.insync.replicas {min_insync_replicas} must be between 1 and the "
            f"replication factor {replication_factor}"
        )
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = specs if specs is not None else topic_specs(settings)
        missing = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=replication_factor,
                topic_configs={
                    "max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES),
                    "min.insync.replicas": str(min_insync_replicas),
                },
            )
            for name, partitions in wanted.items()
            if name not in existing
        ]
        created: list[str] = []
        if missing:
            try:
                response = await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                log.info("topics created concurrently by another process")
                response = None
            for name, code, *rest in getattr(response, "topic_errors", ()):
                if code == TopicAlreadyExistsError.errno:
                    continue
                if code:
                    message = rest[0] if rest and rest[0] else f"error code {code}"
                    raise TopicError(f"Kafka refused to create {name}: {message}")
                created.append(name)
        return created
    finally:
        await admin.close()


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()``, for a consumer that may be stopped right after it started.

    aiokafka 0.14 lets the cancellation of an internal task (``_reset_committed_routine``)
    escape ``stop()`` when it comes right after ``start()`` (e.g. a tool that finds its topic
    missing); that would hide the tool's own error. Our own cancellation still propagates.
    """
    task = asyncio.current_task()
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        if task is not None and task.cancelling():
            raise
        await consumer.stop()  # the rest of the shutdown
