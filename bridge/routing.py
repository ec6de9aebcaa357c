"""The routing table: which topic carries which event, and what the bridge does with it.

A new event type is one entry here, not a new consumer. Each entry decodes the record, may
verify it (a gateway callback's signature), and applies it to Temporal: start a workflow or
signal one. A signal whose workflow does not exist yet is retried until the payment starts,
and dead-lettered as ``orphan`` if it never does within ``PAYBRIDGE_ORPHAN_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from bridge.temporal_calls import TemporalCalls
from plumbing.settings import Settings
from plumbing.temporal import Backoff
from schemas.errors import OrphanError, SignatureError
from schemas.events import Event, GatewayCallback, PaymentCancelRequested, PaymentCreated
from schemas.ids import payment_workflow_id
from schemas.workflow_api import CancelSignal, GatewayCallbackSignal, payment_input

Handler = Callable[[Any], Awaitable[str]]


# Set by the bridge for the record being applied; called once when that record starts waiting
# for its payment to exist, so that the waiting record stops holding an in-flight slot: the
# PaymentCreated it waits for may be behind it and needs that slot.
waiting_for_payment: ContextVar[Callable[[], None] | None] = ContextVar(
    "waiting_for_payment", default=None
)


@dataclass(frozen=True)
class Route:
    """One input topic: the event it carries, an optional check, and what to do with it."""

    topic: str
    event_type: type[Event]
    apply: Handler
    check: Callable[[Any], None] | None = None
    # Its records may wait for a payment that has not started yet (see ``Orphans``).
    may_wait: bool = False


class Orphans:
    """Signals a payment workflow, waiting for the payment to start if it does not exist yet.

    A waiting signal is retried with capped back-off, and woken at once when this bridge
    starts its payment (``started``): keys are co-partitioned across the input topics, so the
    payment usually comes through the same bridge. Without the wake-up a cancel could sit out
    a long back-off while its payment ran on to a timeout.
    """

    def __init__(
        self,
        calls: TemporalCalls,
        *,
        timeout: float,
        retry_initial: float = 0.2,
        retry_cap: float = 15.0,
    ) -> None:
        self.calls = calls
        self.timeout = timeout
        self.retry_initial = retry_initial
        self.retry_cap = retry_cap
        self._wakeups: dict[str, set[asyncio.Event]] = {}

    def started(self, payment_id: str) -> None:
        """The payment's workflow exists now: wake every signal waiting for it."""
        for event in self._wakeups.get(payment_id, ()):
            event.set()

    async def signal(self, payment_id: str, signal: str, arg: Any) -> str:
        workflow_id = payment_workflow_id(payment_id)
        deadline = time.monotonic() + self.timeout
        backoff = Backoff(initial=self.retry_initial, cap=self.retry_cap)
        event = asyncio.Event()
        self._wakeups.setdefault(payment_id, set()).add(event)
        try:
            waiting = False
            while True:
                # Cleared before asking, so a start landing between the answer and the wait
                # still wakes this signal.
                event.clear()
                result = await self.calls.signal(workflow_id, signal, arg)
                if result != "not_found":
                    return result
                if not waiting:
                    waiting = True
                    hook = waiting_for_payment.get()
                    if hook is not None:
                        hook()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OrphanError(
                        f"no workflow {workflow_id} appeared within {self.timeout:.0f}s "
                        f"(PAYBRIDGE_ORPHAN_TIMEOUT) to receive {signal}"
                    )
                try:
                    delay = min(backoff.next_delay(), remaining)
                    await asyncio.wait_for(event.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            events = self._wakeups[payment_id]
            events.discard(event)
            if not events:
                del self._wakeups[payment_id]


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
    settings: Settings, calls: TemporalCalls, *, gateway_secret: str
) -> dict[str, Route]:
    """The contract's three input topics, keyed by topic name."""
    orphans = Orphans(calls, timeout=settings.orphan_timeout.total_seconds())

    async def start_payment(event: PaymentCreated) -> str:
        result = await calls.start_payment(event, workflow_input=payment_input(settings, event))
        orphans.started(event.payment_id)
        return result

    async def callback(event: GatewayCallback) -> str:
        return await orphans.signal(
            event.payment_id, "gateway_callback", GatewayCallbackSignal(callback=event)
        )

    async def cancel(event: PaymentCancelRequested) -> str:
        return await orphans.signal(
            event.payment_id,
            "cancel",
            CancelSignal(event_id=event.event_id, reason=event.reason),
        )

    routes = [
        Route(settings.topic_payments, PaymentCreated, start_payment),
        Route(
            settings.topic_callbacks,
            GatewayCallback,
            callback,
            check=verify_signature(gateway_secret),
            may_wait=True,
        ),
        Route(settings.topic_cancels, PaymentCancelRequested, cancel, may_wait=True),
    ]
    return {route.topic: route for route in routes}
