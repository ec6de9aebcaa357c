"""Kafka clients built from settings, and topic administration."""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bridge.settings import Settings

log = logging.getLogger(__name__)

# Large enough for the DLQ to keep an oversized bad record untouched.
MAX_REQUEST_BYTES = 16 * 1024 * 1024


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
            NewTopic(name, num_partitions=partitions, replication_factor=1)
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
