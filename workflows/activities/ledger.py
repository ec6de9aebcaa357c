"""The ledger's activities: account checks and money movements, idempotent per payment.

Movements are keyed to the workflow run (``activity.info().workflow_run_id``): a retried
activity of the same run is idempotent, while a second run of the same payment id (a payment
started again after Temporal's retention forgot the first) is rejected as a duplicate and can
never credit back the first run's debit.
"""

from __future__ import annotations

from temporalio import activity

from workflows.models import (
    SUPPORTED_CURRENCIES,
    SUPPORTED_METHODS,
    CreditBackInput,
    DebitInput,
    DebitResult,
    ValidatePaymentInput,
    ValidationVerdict,
)
from workflows.simulations.ledger import Ledger

# The outcome's reason when a payment id was already debited by another workflow run.
DUPLICATE_PAYMENT = "duplicate payment id"


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
            input.payment_id,
            input.account_id,
            input.currency,
            input.amount_minor,
            run_id=activity.info().workflow_run_id,
        )
        if verdict in ("debited", "already_debited"):
            return DebitResult(ok=True)
        if verdict == "duplicate_payment":
            activity.logger.warning("%s was debited by another run: rejected", input.payment_id)
            return DebitResult(ok=False, reason=DUPLICATE_PAYMENT)
        if verdict == "insufficient_funds":
            return DebitResult(ok=False, reason="insufficient funds")
        return DebitResult(ok=False, reason=f"no {input.currency} balance on {input.account_id}")

    @activity.defn(name="credit_back")
    def credit_back(self, input: CreditBackInput) -> None:
        verdict = self.ledger.credit_back(input.payment_id, run_id=activity.info().workflow_run_id)
        activity.logger.info("credit back of %s: %s", input.payment_id, verdict)
