"""Input and result models of the workflows and activities (pure; safe inside the sandbox).

One model per workflow, activity and signal, so that fields can be added compatibly.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from bridge.events import GatewayCallback, PaymentCreated, PaymentOutcome

TASK_QUEUE = "payments"
SUPPORTED_CURRENCIES = frozenset({"EUR", "USD", "GBP"})


class PaymentPhase(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    AWAITING_CALLBACK = "AWAITING_CALLBACK"
    MANUAL_REVIEW = "MANUAL_REVIEW"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


class PaymentWorkflowInput(BaseModel):
    payment: PaymentCreated


class Step(BaseModel):
    name: str
    at: datetime
    detail: str | None = None


class PaymentState(BaseModel):
    """What the ``status`` query returns."""

    payment_id: str
    status: PaymentPhase
    reason: str | None = None
    steps: list[Step] = Field(default_factory=list)


class ValidatePaymentInput(BaseModel):
    payment: PaymentCreated


class ValidationVerdict(BaseModel):
    ok: bool
    reason: str | None = None


class PublishOutcomeInput(BaseModel):
    outcome: PaymentOutcome


class GatewayCallbackSignal(BaseModel):
    callback: GatewayCallback


class CancelSignal(BaseModel):
    event_id: str
    reason: str
