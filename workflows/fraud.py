"""``FraudCheckWorkflow``: the payment's fraud check, run as a child of ``PaymentWorkflow``.

Id ``fraud-{payment_id}``, on the task queue ``{payments task queue}-fraud``: the fraud
service's own queue, so that it scales (and shows up in visibility) apart from the payments.
Scores the payment with the fraud service and passes it below the threshold; the parent runs
it alongside the gateway request.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.models import FraudCheckInput, FraudScore, FraudVerdict

FRAUD_THRESHOLD = 80


def fraud_workflow_id(payment_id: str) -> str:
    return f"fraud-{payment_id}"


def fraud_task_queue(payments_task_queue: str) -> str:
    return f"{payments_task_queue}-fraud"


@workflow.defn(name="FraudCheckWorkflow")
class FraudCheckWorkflow:
    @workflow.run
    async def run(self, input: FraudCheckInput) -> FraudVerdict:
        scored: FraudScore = await workflow.execute_local_activity(
            "score_fraud",
            input,
            result_type=FraudScore,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=200)),
        )
        if scored.score >= FRAUD_THRESHOLD:
            return FraudVerdict(passed=False, score=scored.score, reason="fraud")
        return FraudVerdict(passed=True, score=scored.score)
