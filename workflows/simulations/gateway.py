"""The simulated payment gateway: what the authorisation activities talk to.

``SimulatedGateway`` is the activity-facing client (authorise, void, ask for a status). Each
accepted request gets a verdict drawn from :class:`GatewayBehaviour`'s ratios (approve,
decline, error, never answer); a :class:`CallbackEmitter` delivers the verdict later as a signed
``GatewayCallback``, as a real gateway's webhook would. The Kafka emitter produces it to
``gateway.callbacks`` so that it reaches the workflow through the bridge, the real path.

A payment's ``metadata["gateway"]`` (``approve``, ``decline``, ``error``, ``never``,
``reject``, ``flaky``) forces its verdict, for demos and tests.

Memory is bounded: a request is remembered (for idempotent authorisations, voids and status
queries) for ``retention`` after it was made, and at most ``max_requests`` of them are kept
(the oldest are forgotten first); ``sent`` keeps the last ``SENT_KEPT`` callbacks. A voided
request is kept like the others, so that a late authorisation attempt for a payment already
compensated gets the voided reference back instead of a fresh authorisation.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from schemas.errors import GatewayDeclined, GatewayUnavailable
from schemas.events import CallbackStatus, GatewayCallback, PaymentCreated

log = logging.getLogger(__name__)

# A payment's requests must outlive its authorisation retries (minutes) and, for the status
# query of a stale payment, its callback timeout plus stale-retry delay (35 min by default):
# ``simulated_gateway`` adds those settings to this.
RETENTION_SECONDS = 3600.0
# About 260 bytes each (tracemalloc, 20,000 requests): 100,000 requests are about 26 MB.
MAX_REQUESTS = 100_000
SENT_KEPT = 1000
# A callback that Kafka does not take is sent again, this many times, backing off from 0.5 s.
EMIT_ATTEMPTS = 5

Verdict = Literal["approve", "decline", "error", "never"]
_CALLBACK_NAMESPACE = uuid.UUID("0d7a4f57-5f62-4f43-8a53-6a0f0e9c7b21")
_STATUS: dict[Verdict, CallbackStatus] = {
    "approve": CallbackStatus.AUTHORIZED,
    "decline": CallbackStatus.DECLINED,
    "error": CallbackStatus.ERROR,
}


@dataclass(frozen=True)
class GatewayBehaviour:
    """How the simulated gateway answers: relative weights of the verdicts, and latency."""

    approve: float = 1.0
    decline: float = 0.0
    error: float = 0.0
    never: float = 0.0
    # Seconds between the request and its callback (uniform in [latency/2, latency]).
    latency: float = 0.2
    # Fraction of requests that fail transiently before reaching the gateway.
    transient_errors: float = 0.0
    # False: accept requests but send no callbacks (`paybridge dev --no-simulator`).
    callbacks: bool = True

    def __post_init__(self) -> None:
        weights = (self.approve, self.decline, self.error, self.never)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("gateway ratios must be >= 0 and not all zero")
        if not 0 <= self.transient_errors < 1:
            raise ValueError("transient error ratio must be in [0, 1)")


class CallbackEmitter(Protocol):
    async def emit(self, callback: GatewayCallback) -> None: ...


def signed_callback(
    *,
    payment_id: str,
    gateway_ref: str,
    status: CallbackStatus,
    secret: str,
    reason: str | None = None,
    occurred_at: datetime | None = None,
    event_id: str | None = None,
) -> GatewayCallback:
    """A callback as the gateway sends it, signed with ``secret``."""
    unsigned = GatewayCallback(
        event_id=event_id
        or str(uuid.uuid5(_CALLBACK_NAMESPACE, f"{payment_id}/{gateway_ref}/{status.value}")),
        payment_id=payment_id,
        gateway_ref=gateway_ref,
        status=status,
        reason=reason,
        occurred_at=occurred_at or datetime.now(UTC),
        signature="",
    )
    return unsigned.model_copy(update={"signature": unsigned.expected_signature(secret)})


@dataclass
class _Request:
    gateway_ref: str
    verdict: Verdict
    at: float  # when it was made (the gateway's clock)
    voided: bool = False


class SimulatedGateway:
    """A payment gateway in memory: idempotent per payment id, answers by callback."""

    def __init__(
        self,
        behaviour: GatewayBehaviour | None = None,
        *,
        emitter: CallbackEmitter | None = None,
        secret: str = "",
        seed: int | None = None,
        retention: float = RETENTION_SECONDS,
        max_requests: int = MAX_REQUESTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if retention <= 0 or max_requests < 1:
            raise ValueError("the gateway keeps requests for a positive time, at least one")
        self.behaviour = behaviour or GatewayBehaviour()
        self.emitter = emitter
        self.secret = secret
        self.retention = retention
        self.max_requests = max_requests
        self._clock = clock
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        # By age: the oldest first, so that forgetting takes from the front.
        self._requests: collections.OrderedDict[str, _Request] = collections.OrderedDict()
        self._pending: set[asyncio.Task[None]] = set()
        self.sent: collections.deque[GatewayCallback] = collections.deque(maxlen=SENT_KEPT)

    def remembered(self) -> int:
        """How many requests it remembers now. (Not ``__len__``: an empty gateway must stay
        truthy, callers write ``gateway or SimulatedGateway()``.)"""
        with self._lock:
            self._forget_old()
            return len(self._requests)

    def _known(self, payment_id: str) -> _Request | None:
        with self._lock:
            self._forget_old()
            return self._requests.get(payment_id)

    def _forget_old(self) -> None:
        """Drop requests older than ``retention``, then the oldest beyond ``max_requests``
        (called with the lock held)."""
        horizon = self._clock() - self.retention
        while self._requests:
            oldest = next(iter(self._requests.values()))
            if oldest.at > horizon and len(self._requests) <= self.max_requests:
                return
            self._requests.popitem(last=False)

    def _draw(self, payment: PaymentCreated) -> Verdict | Literal["reject", "flaky"]:
        forced = payment.metadata.get("gateway")
        if forced in ("approve", "decline", "error", "never", "reject", "flaky"):
            return forced  # type: ignore[return-value]
        b = self.behaviour
        if self._random.random() < b.transient_errors:
            return "flaky"
        verdicts: tuple[Verdict, ...] = ("approve", "decline", "error", "never")
        return self._random.choices(verdicts, weights=(b.approve, b.decline, b.error, b.never))[0]

    async def authorize(self, payment: PaymentCreated, *, attempt: int = 1) -> str:
        """Accept an authorisation request; returns the gateway reference.

        Raises :class:`GatewayDeclined` (final) or :class:`GatewayUnavailable` (retry).
        """
        known = self._known(payment.payment_id)
        if known is not None:
            return known.gateway_ref
        drawn = self._draw(payment)
        if drawn == "reject":
            raise GatewayDeclined("card declined by issuer")
        if drawn == "flaky":
            if attempt < 3:
                raise GatewayUnavailable("gateway timed out (simulated)")
            drawn = "approve"
        request = _Request(gateway_ref=f"gw-{payment.payment_id}", verdict=drawn, at=self._clock())
        with self._lock:
            request = self._requests.setdefault(payment.payment_id, request)
            self._forget_old()
        if not self.behaviour.callbacks or self.emitter is None or request.verdict == "never":
            return request.gateway_ref
        if self.behaviour.latency <= 0:
            # No latency: the callback is sent before the request returns.
            await self._answer(payment.payment_id, request)
        else:
            task = asyncio.create_task(self._answer(payment.payment_id, request))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return request.gateway_ref

    async def _answer(self, payment_id: str, request: _Request) -> None:
        assert self.emitter is not None
        latency = self.behaviour.latency
        if latency > 0:
            await asyncio.sleep(self._random.uniform(latency / 2, latency))
        callback = signed_callback(
            payment_id=payment_id,
            gateway_ref=request.gateway_ref,
            status=_STATUS[request.verdict],
            reason={"decline": "insufficient limit", "error": "issuer unavailable"}.get(
                request.verdict
            ),
            secret=self.secret,
        )
        delay = 0.5
        for attempt in range(1, EMIT_ATTEMPTS + 1):
            try:
                await self.emitter.emit(callback)
                break
            except Exception:
                if attempt == EMIT_ATTEMPTS:
                    log.exception(
                        "could not deliver the gateway callback of %s",
                        payment_id,
                        extra={"payment_id": payment_id},
                    )
                    return
                log.warning(
                    "gateway callback of %s not delivered; retrying",
                    payment_id,
                    extra={"payment_id": payment_id},
                )
                await asyncio.sleep(delay)
                delay *= 2
        self.sent.append(callback)

    def void(self, payment_id: str) -> bool:
        """Void the authorisation of ``payment_id``; False if there was none (idempotent)."""
        with self._lock:
            self._forget_old()
            request = self._requests.get(payment_id)
            if request is None or request.voided:
                return False
            request.voided = True
            return True

    def status(self, payment_id: str) -> CallbackStatus | None:
        """The gateway's final word on a payment, or None while it does not know."""
        request = self._known(payment_id)
        if request is None or request.verdict in ("error", "never"):
            return None
        return _STATUS[request.verdict]

    async def close(self) -> None:
        """Drop the callbacks not sent yet."""
        for task in list(self._pending):
            task.cancel()
        for task in list(self._pending):
            with contextlib.suppress(asyncio.CancelledError):
                await task
