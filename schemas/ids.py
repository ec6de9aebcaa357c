"""The id rules of the contract: workflow ids and derived event ids.

Never change these formats: a redelivered ``PaymentCreated`` is a duplicate start that Temporal
rejects only because its workflow id is the same, across versions of paybridge; a re-published
outcome is dropped by consumers only because its ``event_id`` is the same.
"""

from __future__ import annotations

import uuid

from schemas.events import OutcomeStatus

_OUTCOME_NAMESPACE = uuid.UUID("6b1f3f8e-4c55-4d1a-9b59-2f4f1c8f0a11")


def payment_workflow_id(payment_id: str) -> str:
    """``payment-{payment_id}``: one workflow execution per payment, ever."""
    return f"payment-{payment_id}"


def recurring_workflow_id(subscription_id: str) -> str:
    """``recurring-{subscription_id}``: one contract of recurring payments."""
    return f"recurring-{subscription_id}"


def term_payment_id(subscription_id: str, term: int) -> str:
    """The payment id of a recurring contract's term (its workflow is a payment like any other)."""
    return f"{subscription_id}-t{term:03d}"


def outcome_event_id(payment_id: str, status: OutcomeStatus) -> str:
    """Deterministic outcome id: the same payment and status always give the same id."""
    return str(uuid.uuid5(_OUTCOME_NAMESPACE, f"{payment_id}/{status.value}"))
