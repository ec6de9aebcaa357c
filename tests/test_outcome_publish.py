"""Publishing an outcome: a retried attempt does not write a second record."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from temporalio.testing import ActivityEnvironment

from plumbing.kafka import idempotent_producer, outcome_reader
from plumbing.settings import Settings
from schemas.codec import Codec
from schemas.events import OutcomeStatus, PaymentOutcome
from schemas.ids import outcome_event_id
from tests.support import read_topic
from workflows.activities.kafka import OutcomeActivities
from workflows.models import PublishOutcomeInput


def outcome(payment_id: str) -> PaymentOutcome:
    now = datetime.now(UTC)
    return PaymentOutcome(
        event_id=outcome_event_id(payment_id, OutcomeStatus.SUCCEEDED),
        payment_id=payment_id,
        status=OutcomeStatus.SUCCEEDED,
        amount_minor=1250,
        currency="EUR",
        workflow_id=f"payment-{payment_id}",
        created_at=now,
        completed_at=now,
    )


def attempt(env: ActivityEnvironment, n: int, scheduled: datetime) -> None:
    env.info = dataclasses.replace(env.info, attempt=n, scheduled_time=scheduled)


async def test_a_retried_publish_finds_its_record_and_writes_no_copy(settings: Settings) -> None:
    producer = idempotent_producer(settings)
    await producer.start()
    try:
        activities = OutcomeActivities(
            producer,
            topic=settings.topic_outcomes,
            codec=Codec(),
            reader=outcome_reader(settings),
        )
        env = ActivityEnvironment()
        first = datetime.now(UTC) - timedelta(seconds=1)
        published = outcome("retry-1")
        attempt(env, 1, first)
        await env.run(activities.publish_outcome, PublishOutcomeInput(outcome=published))
        # The worker lost track of attempt 1 (timed out, or died after the send): attempt 2.
        attempt(env, 2, first)
        await env.run(activities.publish_outcome, PublishOutcomeInput(outcome=published))
        # A payment whose first attempt never reached Kafka is published by its retry.
        never = outcome("retry-2")
        attempt(env, 3, datetime.now(UTC))
        await env.run(activities.publish_outcome, PublishOutcomeInput(outcome=never))
    finally:
        await producer.stop()

    records = await read_topic(settings, settings.topic_outcomes, expect=2, timeout=10)
    codec = Codec()
    ids = sorted(codec.decode(PaymentOutcome, r.value).payment_id for r in records)
    assert ids == ["retry-1", "retry-2"]
