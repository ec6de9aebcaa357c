"""Kafka clients built from settings, and topic administration."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from bridge.settings import Settings

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
        kwargs["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            kwargs["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return kwargs


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


FETCH_API_KEY = 1
FETCH_MAX_WAIT_MS = 100


def consumer(settings: Settings, *topics: str, **extra: Any) -> AIOKafkaConsumer:
    """A consumer whose idle fetches wait like Kafka's long poll, whatever the broker does.

    Kafka holds a fetch that has no data for up to ``fetch_max_wait_ms``. A broker that
    answers at once (the embedded dev broker does) would make aiokafka's fetcher spin at
    thousands of empty fetches a second, a core's worth of CPU while idle. So an empty answer
    that came back early is held for the rest of that time here; against Kafka this is a no-op.
    """
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
    """Makes group-less consumers with which a retried outcome publish looks for its record."""
    return lambda: consumer(settings, enable_auto_commit=False)


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


async def create_topics(settings: Settings, specs: dict[str, int] | None = None) -> list[str]:
    """Create the missing topics; returns the names created (existing ones are left as they are)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = specs if specs is not None else topic_specs(settings)
        missing = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=1,
                topic_configs={"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)},
            )
            for name, partitions in wanted.items()
            if name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                log.info("topics created concurrently by another process")
        return [topic.name for topic in missing]
    finally:
        await admin.close()
