"""The Temporal side of the contract: what the bridge, operators and the workflows exchange.

Workflow inputs, signal payloads and the ``status`` query's answer of ``PaymentWorkflow`` and
``RecurringPaymentWorkflow``, with their names. The bridge builds these and the workflows read
them, so they live below both (the bridge and the workflows never import each other). Pure
pydantic models: the workflow sandbox passes this module through. One model per workflow and
signal, so that fields can be added compatibly.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, Field

from schemas.events import GatewayCallback, OutcomeStatus, PaymentCreated, PaymentMethod

TASK_QUEUE = "payments"

# Search attributes the workflows set (registered by `paybridge namespace register` and the
# dev stack): name -> Temporal indexed value type.
SEARCH_ATTRIBUTES = {"PaymentStatus": "Keyword", "MerchantId": "Keyword"}

DEFAULT_CALLBACK_TIMEOUT = timedelta(minutes=5)
DEFAULT_STALE_RETRY_DELAY = timedelta(minutes=30)


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
    # Timers (PAYBRIDGE_CALLBACK_TIMEOUT, PAYBRIDGE_STALE_RETRY_DELAY); None = the defaults.
    callback_timeout: timedelta | None = None
    stale_retry_delay: timedelta | None = None


class Step(BaseModel):
    name: str
    at: datetime
    detail: str | None = None


class PaymentState(BaseModel):
    """What the ``status`` query returns."""

    payment_id: str
    status: PaymentPhase
    reason: str | None = None
    gateway_ref: str | None = None
    steps: list[Step] = Field(default_factory=list)


# -- signals -------------------------------------------------------------------------------


class GatewayCallbackSignal(BaseModel):
    callback: GatewayCallback


class CancelSignal(BaseModel):
    event_id: str
    reason: str


class ResolveSignal(BaseModel):
    """An operator's verdict on a payment in manual review."""

    event_id: str
    approve: bool
    operator: str | None = None
    note: str | None = None


# -- recurring -----------------------------------------------------------------------------


class Charge(BaseModel):
    term: int
    payment_id: str
    status: OutcomeStatus


class RecurringInput(BaseModel):
    """A contract: ``terms`` payments of ``amount_minor`` every ``period``.

    ``next_term`` and ``charges`` carry the progress across ``continue_as_new``.
    """

    subscription_id: str
    account_id: str
    merchant_id: str
    amount_minor: int = Field(gt=0)
    currency: str
    method: PaymentMethod = PaymentMethod.CARD
    period: timedelta
    terms: int = Field(ge=1)
    callback_timeout: timedelta | None = None
    stale_retry_delay: timedelta | None = None
    next_term: int = 1
    charges: list[Charge] = Field(default_factory=list)
    cancel_requested: bool = False
    terms_per_run: int = Field(default=4, ge=1)


class RecurringState(BaseModel):
    subscription_id: str
    terms: int
    next_term: int
    charges: list[Charge]
    cancel_requested: bool
    done: bool = False


class RecurringCancelSignal(BaseModel):
    reason: str = "cancelled"


class TimerSettings(Protocol):
    @property
    def callback_timeout(self) -> timedelta: ...
    @property
    def stale_retry_delay(self) -> timedelta: ...


def payment_input(settings: TimerSettings, payment: PaymentCreated) -> PaymentWorkflowInput:
    """The workflow input of ``payment``, with the timers of ``settings``."""
    return PaymentWorkflowInput(
        payment=payment,
        callback_timeout=settings.callback_timeout,
        stale_retry_delay=settings.stale_retry_delay,
    )
