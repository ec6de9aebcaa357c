"""``PaymentWorkflow``: one execution per payment, id ``payment-{payment_id}``.

This slice validates the payment and publishes its outcome; the saga steps (debit, fraud check,
gateway, callback, compensation, notification, escalation) are added in front of the publish.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from bridge.events import OutcomeStatus, PaymentOutcome, outcome_event_id
    from workflows.shared import (
        PaymentPhase,
        PaymentState,
        PaymentWorkflowInput,
        PublishOutcomeInput,
        Step,
        ValidatePaymentInput,
        ValidationVerdict,
    )

LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
# Publishing must eventually succeed: the outcome is the payment's only external result.
PUBLISH_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)


@workflow.defn(name="PaymentWorkflow")
class PaymentWorkflow:
    @workflow.init
    def __init__(self, input: PaymentWorkflowInput) -> None:
        self._payment = input.payment
        self._state = PaymentState(payment_id=input.payment.payment_id, status=PaymentPhase.PENDING)

    @workflow.run
    async def run(self, input: PaymentWorkflowInput) -> PaymentOutcome:
        self._enter(PaymentPhase.PROCESSING, "received")
        verdict: ValidationVerdict = await workflow.execute_activity(
            "validate_payment",
            ValidatePaymentInput(payment=self._payment),
            result_type=ValidationVerdict,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=LEDGER_RETRY,
        )
        if not verdict.ok:
            return await self._finish(OutcomeStatus.REJECTED, verdict.reason)
        return await self._finish(OutcomeStatus.SUCCEEDED, None)

    @workflow.query(name="status")
    def status(self) -> PaymentState:
        return self._state

    def _enter(self, phase: PaymentPhase, step: str, detail: str | None = None) -> None:
        self._state.status = phase
        self._state.steps.append(Step(name=step, at=workflow.now(), detail=detail))

    async def _finish(self, status: OutcomeStatus, reason: str | None) -> PaymentOutcome:
        payment = self._payment
        outcome = PaymentOutcome(
            event_id=outcome_event_id(payment.payment_id, status),
            payment_id=payment.payment_id,
            status=status,
            reason=reason,
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            workflow_id=workflow.info().workflow_id,
            created_at=payment.created_at,
            completed_at=workflow.now(),
        )
        await workflow.execute_activity(
            "publish_outcome",
            PublishOutcomeInput(outcome=outcome),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=PUBLISH_RETRY,
        )
        self._state.reason = reason
        self._enter(PaymentPhase(status.value), "outcome published", reason)
        workflow.logger.info("payment %s ended %s", payment.payment_id, status)
        return outcome
