"""The payment gateway's activities: authorise, void, and ask for a payment's status.

What the saga relies on from the gateway: requests are idempotent per payment id (a retried
authorisation gets the first one's answer), and a void by payment id voids what the gateway
has authorised, again idempotently. What it does not rely on: that a request the worker stops
waiting for is never granted. So ``authorize_payment`` sees every request it sent through to
the gateway's answer, even when the workflow cancels it, and the workflow waits for that
answer before it voids (docs/workflows.md, "Races").
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from schemas.errors import GatewayDeclined, GatewayUnavailable
from workflows.models import (
    GATEWAY_DECLINED,
    GATEWAY_STATUS_UNKNOWN,
    Authorization,
    AuthorizeInput,
    GatewayStatus,
    GatewayStatusInput,
    VoidInput,
)
from workflows.simulations.gateway import SimulatedGateway

# Seconds between heartbeats while a request waits for the gateway (the SDK sends at most one
# per 80 % of the workflow's heartbeat timeout; the rest only keep the latest details).
HEARTBEAT_EVERY = 1.0


class GatewayActivities:
    """Authorisation requests to the (simulated) payment gateway."""

    def __init__(self, gateway: SimulatedGateway) -> None:
        self.gateway = gateway

    @activity.defn(name="authorize_payment")
    async def authorize_payment(self, input: AuthorizeInput) -> Authorization:
        """Ask the gateway to authorise the payment; a decline is final, the rest is retried.

        A cancel from the workflow does not abandon a request already sent: the gateway may
        still grant it, and the workflow must learn of that grant to void it. So the request
        is seen through to its answer (heartbeating meanwhile), until the attempt's own
        deadline; a timeout or a worker shutting down gives up at once (the next attempt asks
        the gateway again, which answers idempotently).
        """
        info = activity.info()
        request = asyncio.ensure_future(self.gateway.authorize(input.payment, attempt=info.attempt))
        deadline = (
            None
            if info.start_to_close_timeout is None
            else info.started_time + info.start_to_close_timeout
        )
        try:
            ref = await _see_through(request, deadline)
        except GatewayDeclined as exc:
            raise ApplicationError(str(exc), type=GATEWAY_DECLINED, non_retryable=True) from exc
        except GatewayUnavailable as exc:
            raise ApplicationError(str(exc), type="GatewayUnavailable") from exc
        return Authorization(gateway_ref=ref)

    @activity.defn(name="void_authorization")
    def void_authorization(self, input: VoidInput) -> None:
        try:
            voided = self.gateway.void(input.payment_id)
        except GatewayUnavailable as exc:
            # Retried by the workflow's policy until the gateway answers: a gateway still
            # working on the authorisation refuses its void until it has answered it.
            raise ApplicationError(str(exc), type="GatewayUnavailable") from exc
        activity.logger.info("void of %s: %s", input.payment_id, voided)

    @activity.defn(name="query_gateway_status")
    def query_gateway_status(self, input: GatewayStatusInput) -> GatewayStatus:
        status = self.gateway.status(input.payment_id)
        if status is None:
            # Retryable on purpose: the workflow's retry policy decides how often to ask.
            raise ApplicationError(
                f"gateway does not know the status of {input.payment_id}",
                type=GATEWAY_STATUS_UNKNOWN,
            )
        return GatewayStatus(status=status)


async def _see_through(request: asyncio.Future[str], deadline: datetime | None) -> str:
    """The request's answer, heartbeating while it comes; a cancel from the workflow waits
    for it too (until ``deadline``), any other cancel gives up."""
    cancelled = False
    while not request.done():
        activity.heartbeat()
        wait = HEARTBEAT_EVERY
        if cancelled and deadline is not None:
            wait = min(wait, (deadline - datetime.now(UTC)).total_seconds())
            if wait <= 0:
                break
        try:
            await asyncio.wait([request], timeout=wait)
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            if details is None or not details.cancel_requested or cancelled:
                request.cancel()
                raise
            if details.timed_out or details.worker_shutdown or details.paused or details.reset:
                request.cancel()
                raise
            cancelled = True  # the workflow cancelled: the request's answer still counts
    if not request.done():
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
        raise asyncio.CancelledError("no answer from the gateway before the attempt's deadline")
    return request.result()
