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

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import GatewayCallback, OutcomeStatus, PaymentCreated, PaymentMethod

TASK_QUEUE = "payments"

# Search attributes the workflows set (registered by `paybridge namespace register` and the
# dev stack): name -> Temporal indexed value type.
SEARCH_ATTRIBUTES = {"PaymentStatus": "Keyword", "MerchantId": "Keyword"}

DEFAULT_CALLBACK_TIMEOUT = timedelta(minutes=5)
DEFAULT_STALE_RETRY_DELAY = timedelta(minutes=30)
DEFAULT_ORPHAN_TIMEOUT = timedelta(minutes=10)

# Names on the wire: the workflow types, signals and query the bridge and operators use.
PAYMENT_WORKFLOW = "PaymentWorkflow"
RECURRING_WORKFLOW = "RecurringPaymentWorkflow"
SIGNAL_PAYMENT_CREATED = "payment_created"
SIGNAL_GATEWAY_CALLBACK = "gateway_callback"
SIGNAL_CANCEL = "cancel"
SIGNAL_RESOLVE = "resolve"
QUERY_STATUS = "status"


def manual_review_query(task_queue: str | None = None) -> str:
    """The visibility query of the payments waiting in manual review (of ``task_queue``)."""
    query = (
        f'WorkflowType = "{PAYMENT_WORKFLOW}" AND ExecutionStatus = "Running" '
        f'AND PaymentStatus = "MANUAL_REVIEW"'
    )
    return f'{query} AND TaskQueue = "{task_queue}"' if task_queue else query


class PaymentPhase(StrEnum):
    # PENDING: not processing yet; a run started by an early callback or cancel waits here for
    # its payment (step "waiting for payment").
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    AWAITING_CALLBACK = "AWAITING_CALLBACK"
    MANUAL_REVIEW = "MANUAL_REVIEW"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    # A run started by an early callback or cancel whose payment never came within the orphan
    # timeout: it moved no money, dead-lettered what it held, and ended Failed.
    ORPHANED = "ORPHANED"


# A signal carries its record's bytes up to this size; beyond it the value, then the headers
# stay on the source topic (their coordinates travel): Temporal refuses payloads over 2 MB, and
# a gRPC message over 4 MB is answered RESOURCE_EXHAUSTED, which is indistinguishable from
# overload and would be retried forever.
MAX_SOURCE_BYTES = 256 * 1024


class SourceRecord(BaseModel):
    """The Kafka record a signal came from: where it was and its bytes, untouched, so that
    the workflow can dead-letter it (an early callback whose payment never came) exactly as
    the bridge would have. A record larger than ``MAX_SOURCE_BYTES`` travels without its value
    (``value_omitted_bytes``) or also without its headers (``headers_omitted``)."""

    # Bytes travel as base64 in the JSON payload: they need not be UTF-8.
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None = None
    value: bytes | None = None
    headers: list[tuple[str, bytes | None]] = Field(default_factory=list)
    value_omitted_bytes: int | None = None
    headers_omitted: int | None = None


class PaymentWorkflowInput(BaseModel):
    # None: the run was started by a callback or cancel that came before its payment (the
    # bridge's signal-with-start); it waits for the ``payment_created`` signal.
    payment: PaymentCreated | None
    # Timers (PAYBRIDGE_CALLBACK_TIMEOUT, PAYBRIDGE_STALE_RETRY_DELAY,
    # PAYBRIDGE_ORPHAN_TIMEOUT); None = the defaults.
    callback_timeout: timedelta | None = None
    stale_retry_delay: timedelta | None = None
    orphan_timeout: timedelta | None = None


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


class PaymentCreatedSignal(BaseModel):
    """The payment itself, for a run that an early callback or cancel started."""

    payment: PaymentCreated
    source: SourceRecord | None = None


class GatewayCallbackSignal(BaseModel):
    callback: GatewayCallback
    # Set by the bridge: the record to dead-letter if the payment never comes.
    source: SourceRecord | None = None


class CancelSignal(BaseModel):
    event_id: str
    reason: str
    source: SourceRecord | None = None


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
    @property
    def orphan_timeout(self) -> timedelta: ...


def payment_input(settings: TimerSettings, payment: PaymentCreated | None) -> PaymentWorkflowInput:
    """The workflow input of ``payment`` (None: a run started by an early signal), with the
    timers of ``settings``."""
    return PaymentWorkflowInput(
        payment=payment,
        callback_timeout=settings.callback_timeout,
        stale_retry_delay=settings.stale_retry_delay,
        orphan_timeout=settings.orphan_timeout,
    )
