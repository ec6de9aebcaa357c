"""Client-side operations on the workflows: what `paybridge status|resolve|recurring` do.

Cancelling a payment goes through Kafka (a ``PaymentCancelRequested`` on the cancel topic, so
it takes the same path as every other producer's); the rest talks to Temporal directly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributeKey, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from plumbing.settings import Settings
from plumbing.temporal import connect, temporal_target
from schemas.errors import NotFoundError, UnreachableError, WrongStateError
from schemas.events import PaymentCancelRequested
from schemas.ids import payment_workflow_id, recurring_workflow_id
from schemas.workflow_api import (
    PaymentPhase,
    PaymentState,
    RecurringCancelSignal,
    RecurringInput,
    RecurringState,
    ResolveSignal,
    manual_review_query,
)
from tools.producing import send_events


async def connect_client(settings: Settings) -> Client:
    """The Temporal client of a one-shot command; an unreachable server is a plain error."""
    try:
        return await connect(settings)
    except RuntimeError as exc:
        raise UnreachableError(
            f"Temporal at {temporal_target(settings)} (TEMPORAL_ADDRESS) is not reachable: {exc}"
        ) from exc


async def _query(handle: WorkflowHandle[object, object], result_type: type) -> object:
    try:
        return await handle.query("status", result_type=result_type)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise NotFoundError(f"no workflow {handle.id}") from exc
        raise


async def payment_status(client: Client, payment_id: str) -> PaymentState:
    handle = client.get_workflow_handle(payment_workflow_id(payment_id))
    state = await _query(handle, PaymentState)
    assert isinstance(state, PaymentState)
    return state


async def resolve_payment(
    client: Client,
    payment_id: str,
    *,
    approve: bool,
    operator: str | None = None,
    note: str | None = None,
) -> None:
    """An operator's verdict on a payment waiting in manual review."""
    state = await payment_status(client, payment_id)
    if state.status != PaymentPhase.MANUAL_REVIEW:
        raise WrongStateError(
            f"payment {payment_id} is {state.status.value}, not MANUAL_REVIEW: nothing to resolve"
        )
    handle = client.get_workflow_handle(payment_workflow_id(payment_id))
    await handle.signal(
        "resolve",
        ResolveSignal(event_id=str(uuid.uuid4()), approve=approve, operator=operator, note=note),
    )


async def request_cancel(settings: Settings, payment_id: str, *, reason: str) -> str:
    """Produce a cancel request for ``payment_id``; returns its event id."""
    event = PaymentCancelRequested(
        event_id=str(uuid.uuid4()),
        payment_id=payment_id,
        reason=reason,
        requested_at=datetime.now(UTC),
    )
    await send_events(settings, settings.topic_cancels, [event])
    return event.event_id


async def start_recurring(client: Client, settings: Settings, contract: RecurringInput) -> str:
    """Start ``recurring-{subscription_id}``; raises if that contract already exists."""
    contract = contract.model_copy(
        update={
            "callback_timeout": contract.callback_timeout or settings.callback_timeout,
            "stale_retry_delay": contract.stale_retry_delay or settings.stale_retry_delay,
        }
    )
    workflow_id = recurring_workflow_id(contract.subscription_id)
    try:
        await client.start_workflow(
            "RecurringPaymentWorkflow",
            contract,
            id=workflow_id,
            task_queue=settings.temporal_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError as exc:
        raise WrongStateError(f"contract {workflow_id} already exists") from exc
    return workflow_id


async def recurring_status(client: Client, subscription_id: str) -> RecurringState:
    handle = client.get_workflow_handle(recurring_workflow_id(subscription_id))
    state = await _query(handle, RecurringState)
    assert isinstance(state, RecurringState)
    return state


async def cancel_recurring(client: Client, subscription_id: str, *, reason: str) -> None:
    """End the contract after its current term."""
    handle = client.get_workflow_handle(recurring_workflow_id(subscription_id))
    try:
        await handle.signal("cancel", RecurringCancelSignal(reason=reason))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise NotFoundError(f"no running contract {handle.id}") from exc
        raise


_MERCHANT_ID = SearchAttributeKey.for_keyword("MerchantId")
_PAYMENT_PREFIX = "payment-"


@dataclass(frozen=True)
class InReview:
    """A payment waiting in manual review, as Temporal's visibility store lists it."""

    payment_id: str
    workflow_id: str
    started_at: datetime
    merchant_id: str | None


async def review_queue(
    client: Client, *, task_queue: str | None = None, limit: int | None = None
) -> list[InReview]:
    """Payments waiting in MANUAL_REVIEW (the ``PaymentStatus`` search attribute), oldest
    first. Visibility is eventually consistent: a payment that just entered review may take a
    second to appear."""
    found = [
        InReview(
            payment_id=execution.id.removeprefix(_PAYMENT_PREFIX),
            workflow_id=execution.id,
            started_at=execution.start_time,
            merchant_id=execution.typed_search_attributes.get(_MERCHANT_ID),
        )
        async for execution in client.list_workflows(manual_review_query(task_queue))
    ]
    found.sort(key=lambda item: (item.started_at, item.workflow_id))
    return found[:limit] if limit is not None else found
