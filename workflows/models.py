"""Inputs and results of the workflows' activities and of the fraud child workflow.

Internal to the Temporal side (the worker and its workflows); what the bridge and operators
exchange with the workflows is in ``schemas.workflow_api``. Pure pydantic models: the workflow
sandbox passes this module through.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from schemas.events import (
    CallbackStatus,
    OutcomeStatus,
    PaymentCreated,
    PaymentMethod,
    PaymentOutcome,
)
from schemas.workflow_api import SourceRecord

SUPPORTED_CURRENCIES = frozenset({"EUR", "USD", "GBP"})
SUPPORTED_METHODS = frozenset(PaymentMethod)

# ApplicationError types raised by activities that the workflows branch on.
GATEWAY_DECLINED = "GatewayDeclined"
GATEWAY_STATUS_UNKNOWN = "GatewayStatusUnknown"


class ValidatePaymentInput(BaseModel):
    payment: PaymentCreated


class ValidationVerdict(BaseModel):
    ok: bool
    reason: str | None = None


class PublishOutcomeInput(BaseModel):
    outcome: PaymentOutcome


class OrphanDeadLetterInput(BaseModel):
    """A callback or cancel record held by a run whose payment never came: to the DLQ with
    reason ``orphan``; ``message`` becomes its ``dlq.error.message``."""

    source: SourceRecord
    message: str


# -- ledger --------------------------------------------------------------------------------


class DebitInput(BaseModel):
    payment_id: str
    account_id: str
    currency: str
    amount_minor: int


class DebitResult(BaseModel):
    ok: bool
    reason: str | None = None


class CreditBackInput(BaseModel):
    """Compensation of a debit: gives back what ``payment_id``'s debit took, at most once."""

    payment_id: str


# -- gateway -------------------------------------------------------------------------------


class AuthorizeInput(BaseModel):
    payment: PaymentCreated


class Authorization(BaseModel):
    """The gateway accepted the request; its verdict comes later as a callback."""

    gateway_ref: str


class VoidInput(BaseModel):
    payment_id: str


class GatewayStatusInput(BaseModel):
    payment_id: str


class GatewayStatus(BaseModel):
    """What the gateway reports when asked; ``status`` None = it does not know (yet)."""

    status: CallbackStatus | None = None
    reason: str | None = None


# -- fraud and notifications ---------------------------------------------------------------


class FraudCheckInput(BaseModel):
    payment: PaymentCreated


class FraudScore(BaseModel):
    score: int = Field(ge=0, le=100)


class FraudVerdict(BaseModel):
    passed: bool
    score: int
    reason: str | None = None


class NotifyInput(BaseModel):
    payment_id: str
    account_id: str
    status: OutcomeStatus
    reason: str | None = None
    amount_minor: int
    currency: str
