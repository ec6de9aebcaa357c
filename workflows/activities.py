"""Activities: everything the payment workflows do outside themselves (ledger, Kafka, ...).

Activities are methods of classes with injected clients, so a test can build them with fakes
or real clients and the worker wires the real ones.
"""

from __future__ import annotations

import time

from aiokafka import AIOKafkaProducer
from temporalio import activity

from bridge.codec import Codec
from bridge.events import PaymentOutcome
from bridge.metrics import WorkerMetrics
from workflows.ledger import Ledger
from workflows.shared import (
    SUPPORTED_CURRENCIES,
    PublishOutcomeInput,
    ValidatePaymentInput,
    ValidationVerdict,
)


class LedgerActivities:
    """Account checks and money movements against the worker's ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    @activity.defn(name="validate_payment")
    def validate_payment(self, input: ValidatePaymentInput) -> ValidationVerdict:
        payment = input.payment
        if payment.amount_minor <= 0:
            return ValidationVerdict(ok=False, reason="non-positive amount")
        if payment.currency not in SUPPORTED_CURRENCIES:
            return ValidationVerdict(ok=False, reason=f"unsupported currency {payment.currency}")
        if not self.ledger.account_exists(payment.account_id):
            return ValidationVerdict(ok=False, reason=f"unknown account {payment.account_id}")
        return ValidationVerdict(ok=True)


class OutcomeActivities:
    """Publishes each payment's terminal outcome to the outcomes topic."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        topic: str,
        codec: Codec,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.codec = codec
        self.metrics = metrics

    @activity.defn(name="publish_outcome")
    async def publish_outcome(self, input: PublishOutcomeInput) -> None:
        outcome: PaymentOutcome = input.outcome
        # The outcome's event_id is derived from payment id and status, so a retried
        # publish carries the same id and consumers can drop the copy.
        await self.producer.send_and_wait(
            self.topic,
            self.codec.encode(outcome),
            key=outcome.payment_id.encode(),
            headers=[("event_id", outcome.event_id.encode())],
        )
        if self.metrics is not None:
            self.metrics.outcome_published(
                outcome.status.value,
                seconds=max(0.0, time.time() - outcome.created_at.timestamp()),
            )
        activity.logger.debug("published %s for %s", outcome.status, outcome.payment_id)
