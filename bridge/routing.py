"""The routing table: which topic carries which event, and what the bridge does with it.

A new event type is one entry here, not a new consumer. Each entry decodes the record, may
verify it (a gateway callback's signature), and applies it to Temporal with one call,
signal-with-start on ``payment-{payment_id}``:

- ``PaymentCreated`` starts the payment's workflow with the payment as input and the signal
  ``payment_created``; if a run exists (one an early callback or cancel started, waiting for
  its payment) the signal hands it the payment.
- A callback or cancel signals the payment's run; if there is none yet, it starts one that
  waits for its payment (input without payment) and holds the signal, with the record it came
  from. The wait is the workflow's, a durable timer of ``PAYBRIDGE_ORPHAN_TIMEOUT``: the
  bridge holds no record waiting for another, and commits each record at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from bridge.metrics import BridgeMetrics
from bridge.temporal_calls import TemporalCalls
from plumbing.settings import Settings
from schemas.errors import SignatureError
from schemas.events import Event, GatewayCallback, PaymentCancelRequested, PaymentCreated
from schemas.ids import payment_workflow_id
from schemas.workflow_api import (
    MAX_SOURCE_BYTES,
    SIGNAL_CANCEL,
    SIGNAL_GATEWAY_CALLBACK,
    SIGNAL_PAYMENT_CREATED,
    CancelSignal,
    GatewayCallbackSignal,
    PaymentCreatedSignal,
    SourceRecord,
    payment_input,
)


class Record(Protocol):
    """What routing reads of a consumed record (an aiokafka ``ConsumerRecord``)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


Handler = Callable[[Any, Record], Awaitable[str]]


@dataclass(frozen=True)
class Route:
    """One input topic: the event it carries, an optional check, and what to do with it."""

    topic: str
    event_type: type[Event]
    apply: Handler
    check: Callable[[Any], None] | None = None


def source_record(record: Record) -> SourceRecord:
    """Where ``record`` was, and its bytes: what the workflow needs to dead-letter it. Past
    ``MAX_SOURCE_BYTES`` the value, then the headers, stay behind (see ``SourceRecord``)."""
    headers = list(record.headers or ())
    value = record.value
    value_omitted = headers_omitted = None
    header_bytes = sum(len(k) + len(v or b"") for k, v in headers)
    size = len(record.key or b"") + len(value or b"") + header_bytes
    if size > MAX_SOURCE_BYTES and value:
        value_omitted, value = len(value), None
        size -= value_omitted
    if size > MAX_SOURCE_BYTES and headers:
        headers_omitted, headers = len(headers), []
    return SourceRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        value=value,
        headers=headers,
        value_omitted_bytes=value_omitted,
        headers_omitted=headers_omitted,
    )


def verify_signature(secret: str) -> Callable[[GatewayCallback], None]:
    def check(callback: GatewayCallback) -> None:
        if not callback.signature:
            raise SignatureError("gateway callback has no signature")
        if not callback.signature_valid(secret):
            raise SignatureError(
                f"signature of callback {callback.event_id} does not verify "
                "(HMAC-SHA256 with PAYBRIDGE_GATEWAY_SECRET)"
            )

    return check


def build_routes(
    settings: Settings,
    calls: TemporalCalls,
    *,
    gateway_secret: str,
    metrics: BridgeMetrics | None = None,
) -> dict[str, Route]:
    """The contract's three input topics, keyed by topic name (``metrics`` None: counted in a
    registry of their own, for callers that only read the table)."""
    metrics = metrics or BridgeMetrics(CollectorRegistry())
    waiting_input = payment_input(settings, None)

    async def start_payment(event: PaymentCreated, record: Record) -> str:
        try:
            applied = await calls.signal_with_start(
                payment_workflow_id(event.payment_id),
                workflow_input=payment_input(settings, event),
                signal=SIGNAL_PAYMENT_CREATED,
                arg=PaymentCreatedSignal(payment=event),
            )
        except Exception:
            metrics.workflow_starts.labels(result="error").inc()
            raise
        # "deduplicated": the workflow existed, running or completed (a redelivery or replay,
        # or a run an early callback or cancel started, which the payment now joins).
        result = "started" if applied == "started" else "deduplicated"
        metrics.workflow_starts.labels(result=result).inc()
        return result

    async def signal(event: Event, record: Record, name: str, arg: Any) -> str:
        try:
            applied = await calls.signal_with_start(
                payment_workflow_id(event.payment_id),
                workflow_input=waiting_input,
                signal=name,
                arg=arg,
            )
        except Exception:
            metrics.signals.labels(signal=name, result="error").inc()
            raise
        # "started": no run yet, so this signal started one that waits for its payment.
        result = {"started": "started", "existing": "signalled", "closed": "closed"}[applied]
        metrics.signals.labels(signal=name, result=result).inc()
        return result

    async def callback(event: GatewayCallback, record: Record) -> str:
        arg = GatewayCallbackSignal(callback=event, source=source_record(record))
        return await signal(event, record, SIGNAL_GATEWAY_CALLBACK, arg)

    async def cancel(event: PaymentCancelRequested, record: Record) -> str:
        arg = CancelSignal(
            event_id=event.event_id, reason=event.reason, source=source_record(record)
        )
        return await signal(event, record, SIGNAL_CANCEL, arg)

    routes = [
        Route(settings.topic_payments, PaymentCreated, start_payment),
        Route(
            settings.topic_callbacks,
            GatewayCallback,
            callback,
            check=verify_signature(gateway_secret),
        ),
        Route(settings.topic_cancels, PaymentCancelRequested, cancel),
    ]
    return {route.topic: route for route in routes}
