"""The fraud scoring service's activity (run by ``FraudCheckWorkflow``)."""

from __future__ import annotations

import hashlib

from temporalio import activity

from workflows.models import FraudCheckInput, FraudScore


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
