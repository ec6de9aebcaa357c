"""Event and outcome models: pure pydantic types shared by the bridge and the workflows.

Field names are those of the Avro schemas beside this module (see docs/contract.md).
Validation here is what makes a record acceptable at all; business rules (known account,
supported currency, funds) are the workflow's and end in a ``REJECTED`` outcome, not in the DLQ.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from schemas.currencies import ISO_4217


class PaymentMethod(StrEnum):
    CARD = "CARD"
    WALLET = "WALLET"
    BANK_TRANSFER = "BANK_TRANSFER"


class CallbackStatus(StrEnum):
    AUTHORIZED = "AUTHORIZED"
    DECLINED = "DECLINED"
    ERROR = "ERROR"


class OutcomeStatus(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a time zone")
    # The wire format carries milliseconds: keep models equal across an encode/decode round trip.
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _iso_currency(value: str) -> str:
    if value not in ISO_4217:
        raise ValueError(f"{value!r} is not an ISO 4217 currency code (three upper-case letters)")
    return value


# Limits of docs/contract.md: every event is copied into several workflow and activity inputs,
# so a value outside them is a validation error (the DLQ), not a payment. The metadata limits
# are Stripe's published ones.
MAX_METADATA_ENTRIES = 50
MAX_METADATA_KEY_CHARS = 40
MAX_METADATA_VALUE_CHARS = 500
MAX_REASON_CHARS = 500

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Reason = Annotated[str, StringConstraints(max_length=MAX_REASON_CHARS)]
MetadataKey = Annotated[str, StringConstraints(max_length=MAX_METADATA_KEY_CHARS)]
MetadataValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE_CHARS)]
Timestamp = Annotated[datetime, AfterValidator(_utc)]
Currency = Annotated[str, AfterValidator(_iso_currency)]


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", use_enum_values=False)

    event_id: Id
    payment_id: Id


class PaymentCreated(Event):
    account_id: Id
    merchant_id: Id
    amount_minor: int = Field(gt=0, le=2**63 - 1)
    currency: Currency
    method: PaymentMethod
    created_at: Timestamp
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=MAX_METADATA_ENTRIES
    )


class GatewayCallback(Event):
    gateway_ref: Id
    status: CallbackStatus
    reason: Reason | None = None
    occurred_at: Timestamp
    signature: str

    def signed_payload(self) -> bytes:
        millis = to_millis(self.occurred_at)
        return (
            f"{self.event_id}|{self.payment_id}|{self.gateway_ref}|{self.status.value}|{millis}"
        ).encode()

    def expected_signature(self, secret: str) -> str:
        return hmac.new(secret.encode(), self.signed_payload(), hashlib.sha256).hexdigest()

    def signature_valid(self, secret: str) -> bool:
        # compare_digest raises on a str that is not ASCII: such a signature is simply wrong.
        if not self.signature.isascii():
            return False
        return hmac.compare_digest(self.expected_signature(secret), self.signature)


class PaymentCancelRequested(Event):
    reason: Reason
    requested_at: Timestamp


class PaymentOutcome(Event):
    status: OutcomeStatus
    reason: str | None = None
    amount_minor: int
    currency: str
    workflow_id: str
    created_at: Timestamp
    completed_at: Timestamp


def to_millis(value: datetime) -> int:
    """Epoch milliseconds, as the contract encodes timestamps."""
    return round(value.timestamp() * 1000)


def from_millis(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=UTC)
