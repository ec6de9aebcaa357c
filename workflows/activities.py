"""Activities: everything the payment workflows do outside themselves (ledger, Kafka, ...).

Activities are methods of classes with injected clients, so a test can build them with fakes
or real clients and the worker wires the real ones. Business failures raise a non-retryable
``ApplicationError`` whose ``type`` the workflow branches on; anything else is retried.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from temporalio import activity
from temporalio.exceptions import ApplicationError

from bridge.codec import Codec
from bridge.events import OutcomeStatus, PaymentOutcome
from bridge.kafka import RecordSender
from bridge.metrics import WorkerMetrics
from bridge.producing import published_since
from workflows.gateway import GatewayDeclined, GatewayUnavailable, SimulatedGateway
from workflows.ledger import Ledger
from workflows.notifications import Notification, NotificationSink
from workflows.shared import (
    GATEWAY_DECLINED,
    GATEWAY_STATUS_UNKNOWN,
    SUPPORTED_CURRENCIES,
    SUPPORTED_METHODS,
    Authorization,
    AuthorizeInput,
    CreditBackInput,
    DebitInput,
    DebitResult,
    FraudCheckInput,
    FraudScore,
    GatewayStatus,
    GatewayStatusInput,
    NotifyInput,
    PublishOutcomeInput,
    ValidatePaymentInput,
    ValidationVerdict,
    VoidInput,
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
        if payment.method not in SUPPORTED_METHODS:
            return ValidationVerdict(ok=False, reason=f"unsupported method {payment.method}")
        if not self.ledger.account_exists(payment.account_id):
            return ValidationVerdict(ok=False, reason=f"unknown account {payment.account_id}")
        return ValidationVerdict(ok=True)

    @activity.defn(name="debit_account")
    def debit_account(self, input: DebitInput) -> DebitResult:
        verdict = self.ledger.debit(
            input.payment_id, input.account_id, input.currency, input.amount_minor
        )
        if verdict in ("debited", "already_debited"):
            return DebitResult(ok=True)
        if verdict == "insufficient_funds":
            return DebitResult(ok=False, reason="insufficient funds")
        return DebitResult(ok=False, reason=f"no {input.currency} balance on {input.account_id}")

    @activity.defn(name="credit_back")
    def credit_back(self, input: CreditBackInput) -> None:
        verdict = self.ledger.credit_back(input.payment_id)
        activity.logger.info("credit back of %s: %s", input.payment_id, verdict)


class GatewayActivities:
    """Authorisation requests to the (simulated) payment gateway."""

    def __init__(self, gateway: SimulatedGateway) -> None:
        self.gateway = gateway

    @activity.defn(name="authorize_payment")
    async def authorize_payment(self, input: AuthorizeInput) -> Authorization:
        try:
            ref = await self.gateway.authorize(input.payment, attempt=activity.info().attempt)
        except GatewayDeclined as exc:
            raise ApplicationError(str(exc), type=GATEWAY_DECLINED, non_retryable=True) from exc
        except GatewayUnavailable as exc:
            raise ApplicationError(str(exc), type="GatewayUnavailable") from exc
        return Authorization(gateway_ref=ref)

    @activity.defn(name="void_authorization")
    def void_authorization(self, input: VoidInput) -> None:
        voided = self.gateway.void(input.payment_id)
        activity.logger.info("void of %s: %s", input.payment_id, voided)

    @activity.defn(name="query_gateway_status")
    def query_gateway_status(self, input: GatewayStatusInput) -> GatewayStatus:
        status = self.gateway.status(input.payment_id)
        if status is None:
            # Retryable on purpose: the workflow's retry policy decides how often to ask.
            raise ApplicationError(
                f"gateway does not know the status of {input.payment_id}",
                type=GATEWAY_STATUS_UNKNOWN,
            )
        return GatewayStatus(status=status)


class FraudActivities:
    """The simulated fraud scoring service."""

    @activity.defn(name="score_fraud")
    def score_fraud(self, input: FraudCheckInput) -> FraudScore:
        payment = input.payment
        if payment.metadata.get("fraud", "").lower() in ("1", "true", "yes"):
            return FraudScore(score=99)
        # A stable low score: the same payment always scores the same.
        digest = hashlib.sha256(payment.payment_id.encode()).digest()
        return FraudScore(score=digest[0] % 40)


_ENDED = {
    OutcomeStatus.FAILED: "failed",
    OutcomeStatus.REJECTED: "was rejected",
    OutcomeStatus.CANCELLED: "was cancelled",
    OutcomeStatus.TIMED_OUT: "timed out",
}


class NotificationActivities:
    """Tells the customer how their payment ended."""

    def __init__(self, sink: NotificationSink) -> None:
        self.sink = sink

    @activity.defn(name="notify_customer")
    def notify_customer(self, input: NotifyInput) -> None:
        amount = f"{input.amount_minor} {input.currency} (minor units)"
        if input.status == OutcomeStatus.SUCCEEDED:
            text = f"Your payment {input.payment_id} of {amount} went through."
        else:
            why = f": {input.reason}" if input.reason else ""
            text = f"Your payment {input.payment_id} of {amount} {_ENDED[input.status]}{why}."
        self.sink.send(
            Notification(
                channel="email",
                to=f"{input.account_id}@customers.example",
                payment_id=input.payment_id,
                status=input.status.value,
                text=text,
            )
        )


class OutcomeActivities:
    """Publishes each payment's terminal outcome to the outcomes topic, once.

    A retried attempt (the first one timed out, or its worker died after the send) first looks
    for the record on the topic: it flushes this process's producer, then scans the key's
    partition from the first attempt's scheduled time for a record with the same ``event_id``.
    ``reader`` makes the consumer for that search; without it a retry publishes again (the
    copy carries the same ``event_id``, so consumers can still drop it).
    """

    def __init__(
        self,
        producer: RecordSender,
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

    async def _partition(self, key: bytes) -> int:
        partitions = sorted(await self.producer.partitions_for(self.topic))
        return int(self._partitioner(key, partitions, partitions))

    async def _already_published(self, outcome: PaymentOutcome, partition: int) -> bool:
        info = activity.info()
        if info.attempt <= 1 or self.reader is None:
            return False
        await self.producer.flush()
        since_ms = int(info.scheduled_time.timestamp() * 1000) - 5000
        reader = self.reader()
        await reader.start()
        try:
            tp = TopicPartition(self.topic, partition)
            return await published_since(reader, tp, since_ms=since_ms, event_id=outcome.event_id)
        finally:
            await reader.stop()

    @activity.defn(name="publish_outcome")
    async def publish_outcome(self, input: PublishOutcomeInput) -> None:
        outcome: PaymentOutcome = input.outcome
        key = outcome.payment_id.encode()
        # The partition is chosen here (as Kafka's default partitioner would) so that a retry
        # knows where an earlier attempt's record would be.
        partition = await self._partition(key)
        if await self._already_published(outcome, partition):
            activity.logger.info("outcome of %s already published", outcome.payment_id)
            return
        await self.producer.send_and_wait(
            self.topic,
            self.codec.encode(outcome),
            key=key,
            partition=partition,
            headers=[("event_id", outcome.event_id.encode())],
        )
        if self.metrics is not None:
            self.metrics.outcome_published(
                outcome.status.value,
                seconds=max(0.0, time.time() - outcome.created_at.timestamp()),
            )
        activity.logger.debug("published %s for %s", outcome.status, outcome.payment_id)
