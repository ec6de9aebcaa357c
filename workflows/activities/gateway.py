"""The payment gateway's activities: authorise, void, and ask for a payment's status."""

from __future__ import annotations

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


class GatewayActivities:
    """Authorisation requests to the (simulated) payment gateway."""

    def __init__(self, gateway: SimulatedGateway) -> None:
        self.gateway = gateway

    @activity.defn(name="authorize_payment")
    async def authorize_payment(self, input: AuthorizeInput) -> Authorization:
        try:
            ref = await self.gateway.authorize(input.payment, attempt=activity.info().attempt)
        except GatewayDeclined as exc:
            raise ApplicationError(str(exc), type=GATEWAY_DECLINED, non_retryable=True) from exc
        except GatewayUnavailable as exc:
            raise ApplicationError(str(exc), type="GatewayUnavailable") from exc
        return Authorization(gateway_ref=ref)

    @activity.defn(name="void_authorization")
    def void_authorization(self, input: VoidInput) -> None:
        voided = self.gateway.void(input.payment_id)
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
