"""PaymentWorkflow's saga on the time-skipping server: every terminal status through its path.

The real workflows and activities run against a real SQLite ledger and the simulated gateway;
only ``publish_outcome`` (Kafka) is a fake, and the gateway's callbacks are delivered as
signals directly (the Kafka -> bridge path is covered by tests/test_workflow_end_to_end.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from schemas.events import (
    CallbackStatus,
    OutcomeStatus,
    PaymentCreated,
    PaymentMethod,
    PaymentOutcome,
)
from schemas.workflow_api import (
    CancelSignal,
    GatewayCallbackSignal,
    PaymentPhase,
    PaymentWorkflowInput,
    ResolveSignal,
)
from tests.support import GATEWAY_SECRET, Harness, payment, time_skipping_worker
from tools.namespace import register_search_attributes
from workflows.activities.ledger import LedgerActivities
from workflows.models import Authorization, AuthorizeInput, ValidatePaymentInput
from workflows.simulations.gateway import signed_callback
from workflows.simulations.ledger import Ledger


@pytest_asyncio.fixture(loop_scope="session")
async def ts_client(time_skipping: WorkflowEnvironment) -> Client:
    await register_search_attributes(time_skipping.client, time_skipping.client.namespace)
    return time_skipping.client


@pytest_asyncio.fixture(loop_scope="session")
async def harness(ts_client: Client, ledger: Ledger) -> AsyncIterator[Harness]:
    async with time_skipping_worker(ts_client, ledger) as running:
        yield running


def balance(ledger: Ledger, p: object) -> int | None:
    return ledger.balance(p.account_id, p.currency)  # type: ignore[attr-defined]


def cancel_signal(reason: str = "customer asked") -> CancelSignal:
    return CancelSignal(event_id=str(uuid.uuid4()), reason=reason)


async def test_success_debits_exactly_the_amount_and_notifies(harness: Harness) -> None:
    p = payment(1, merchant_id="merchant-ts")
    before = balance(harness.ledger, p)
    outcome = await harness.run(p)
    assert outcome.status == OutcomeStatus.SUCCEEDED
    assert outcome.reason is None
    assert balance(harness.ledger, p) == before - p.amount_minor  # type: ignore[operator]
    assert [o.status for o in harness.outcomes] == [OutcomeStatus.SUCCEEDED]
    [sent] = harness.notifications.for_payment(p.payment_id)
    assert sent.status == "SUCCEEDED" and "went through" in sent.text
    state = await harness.state(p)
    assert state.status == PaymentPhase.SUCCEEDED
    names = [s.name for s in state.steps]
    for expected in ("received", "debited", "fraud check", "authorization requested"):
        assert expected in names
    assert names[-1] == "outcome published"
    described = await harness.client.get_workflow_handle(f"payment-{p.payment_id}").describe()
    attrs = described.search_attributes
    assert attrs["PaymentStatus"] == ["SUCCEEDED"]
    assert attrs["MerchantId"] == ["merchant-ts"]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"account_id": "acct-9999"}, "unknown account acct-9999"),
        ({"currency": "JPY"}, "unsupported currency JPY"),
    ],
)
async def test_validation_rules_reject_at_once(
    harness: Harness, overrides: dict[str, str], reason: str
) -> None:
    p = payment(2, **overrides)
    outcome = await harness.run(p)
    assert (outcome.status, outcome.reason) == (OutcomeStatus.REJECTED, reason)
    assert harness.ledger.movements(p.payment_id) == []
    state = await harness.state(p)
    assert "debited" not in [s.name for s in state.steps]


def test_validation_rules_the_event_model_cannot_carry(ledger: Ledger) -> None:
    # A non-positive amount or an unknown method never reaches a workflow: the event model
    # refuses it (the bridge dead-letters the record). The activity still checks both.
    check = LedgerActivities(ledger).validate_payment
    env = ActivityEnvironment()
    zero = payment(3).model_copy(update={"amount_minor": 0})
    crypto = payment(3).model_copy(update={"method": "CRYPTO"})
    assert env.run(check, ValidatePaymentInput(payment=zero)).reason == "non-positive amount"
    assert (
        env.run(check, ValidatePaymentInput(payment=crypto)).reason == "unsupported method CRYPTO"
    )
    assert env.run(check, ValidatePaymentInput(payment=payment(3))).ok
    assert PaymentMethod.WALLET in {m for m in PaymentMethod}


async def test_insufficient_funds_is_rejected_and_nothing_moves(harness: Harness) -> None:
    harness.ledger.seed(accounts=["acct-poor"], currencies=["EUR"], balance_minor=500)
    p = payment(4, account_id="acct-poor", currency="EUR", amount_minor=501)
    outcome = await harness.run(p)
    assert (outcome.status, outcome.reason) == (OutcomeStatus.REJECTED, "insufficient funds")
    assert harness.ledger.balance("acct-poor", "EUR") == 500
    exact = payment(5, account_id="acct-poor", currency="EUR", amount_minor=500)
    assert (await harness.run(exact)).status == OutcomeStatus.SUCCEEDED
    assert harness.ledger.balance("acct-poor", "EUR") == 0


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"gateway": "decline"}, "declined: insufficient limit"),
        ({"gateway": "reject"}, "declined: card declined by issuer"),
        ({"fraud": "true"}, "fraud"),
    ],
)
async def test_failures_compensate_and_restore_the_balance(
    harness: Harness, metadata: dict[str, str], reason: str
) -> None:
    p = payment(6, metadata=metadata)
    before = balance(harness.ledger, p)
    outcome = await harness.run(p)
    assert (outcome.status, outcome.reason) == (OutcomeStatus.FAILED, reason)
    assert balance(harness.ledger, p) == before
    assert [m.delta_minor for m in harness.ledger.movements(p.payment_id)] == [
        -p.amount_minor,
        p.amount_minor,
    ]
    state = await harness.state(p)
    compensated = [s.detail for s in state.steps if s.name == "compensated"]
    assert compensated == ["void authorization", "credit back"]
    [sent] = harness.notifications.for_payment(p.payment_id)
    assert sent.status == "FAILED"


async def test_transient_gateway_errors_are_retried_with_backoff(harness: Harness) -> None:
    p = payment(7, metadata={"gateway": "flaky"})
    outcome = await harness.run(p)
    assert outcome.status == OutcomeStatus.SUCCEEDED
    history = await harness.client.get_workflow_handle(f"payment-{p.payment_id}").fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert 3 in attempts


async def test_no_callback_times_out_and_compensates(harness: Harness) -> None:
    p = payment(8, metadata={"gateway": "never"})
    before = balance(harness.ledger, p)
    outcome = await harness.run(p, callback_timeout=timedelta(minutes=5))
    assert outcome.status == OutcomeStatus.TIMED_OUT
    assert outcome.reason == "no gateway callback within 0:05:00"
    assert balance(harness.ledger, p) == before
    assert (outcome.completed_at - outcome.created_at) >= timedelta(minutes=5)


async def test_duplicate_and_late_callbacks_change_nothing(harness: Harness) -> None:
    p = payment(9, metadata={"gateway": "never"})
    handle = await harness.start(p)
    await harness.wait_for(p, PaymentPhase.AWAITING_CALLBACK)
    approve = signed_callback(
        payment_id=p.payment_id,
        gateway_ref=f"gw-{p.payment_id}",
        status=CallbackStatus.AUTHORIZED,
        secret=GATEWAY_SECRET,
    )
    decline = signed_callback(
        payment_id=p.payment_id,
        gateway_ref=f"gw-{p.payment_id}",
        status=CallbackStatus.DECLINED,
        secret=GATEWAY_SECRET,
    )
    for callback in (approve, approve, decline):
        await handle.signal("gateway_callback", GatewayCallbackSignal(callback=callback))
    await handle.signal("cancel", cancel_signal("too late"))
    outcome = await handle.result()
    assert outcome.status == OutcomeStatus.SUCCEEDED
    steps = [s.name for s in (await harness.state(p)).steps]
    assert steps.count("gateway callback") == 2  # the copy of `approve` was dropped
    assert "cancel ignored" in steps  # the authorisation came in before the cancel
    assert len(harness.outcomes) == 1


async def to_manual_review(
    harness: Harness, env: WorkflowEnvironment, p: PaymentCreated
) -> WorkflowHandle[Any, PaymentOutcome]:
    """Start ``p`` with a gateway that answers ERROR and never knows more, and skip time
    (status retries, the 30-minute stale delay) until it waits in manual review."""
    handle = await harness.start(p, stale_retry_delay=timedelta(minutes=30))
    await harness.wait_for(p, PaymentPhase.AWAITING_CALLBACK, step="gateway callback")
    await env.sleep(timedelta(hours=1))
    await harness.wait_for(p, PaymentPhase.MANUAL_REVIEW)
    return handle


@pytest.mark.parametrize("approve", [True, False])
async def test_stale_then_manual_review_resolved(
    harness: Harness, time_skipping: WorkflowEnvironment, approve: bool
) -> None:
    p = payment(10, metadata={"gateway": "error"})
    before = balance(harness.ledger, p)
    handle = await to_manual_review(harness, time_skipping, p)
    state = await harness.state(p)
    names = [s.name for s in state.steps]
    assert names.count("gateway status unknown") == 2
    stale = next(s for s in state.steps if s.name == "stale")
    review = next(s for s in state.steps if s.name == "manual review")
    assert review.at - stale.at >= timedelta(minutes=30)
    described = await handle.describe()
    assert described.search_attributes["PaymentStatus"] == ["MANUAL_REVIEW"]
    await handle.signal(
        "resolve", ResolveSignal(event_id=str(uuid.uuid4()), approve=approve, operator="ops")
    )
    outcome = await handle.result()
    if approve:
        assert outcome.status == OutcomeStatus.SUCCEEDED
        assert balance(harness.ledger, p) == before - p.amount_minor  # type: ignore[operator]
    else:
        assert (outcome.status, outcome.reason) == (
            OutcomeStatus.FAILED,
            "declined in manual review",
        )
        assert balance(harness.ledger, p) == before


async def test_stale_payment_answered_when_asked_again(ts_client: Client, ledger: Ledger) -> None:
    """The gateway does not know at first, but knows 30 minutes later: no manual review."""
    asked: list[str] = []

    @activity.defn(name="query_gateway_status")
    async def query_gateway_status(input: object) -> dict[str, str]:
        asked.append(activity.info().attempt.__str__())
        if len(asked) <= 3:
            raise RuntimeError("gateway does not know yet")
        return {"status": "AUTHORIZED"}

    async with time_skipping_worker(ts_client, ledger, fakes=[query_gateway_status]) as h:
        p = payment(11, metadata={"gateway": "error"})
        outcome = await h.run(p)
    assert outcome.status == OutcomeStatus.SUCCEEDED
    assert len(asked) == 4
    assert ledger.balance(p.account_id, p.currency) == 10_000_000_000 - p.amount_minor


async def test_cancel_while_pending_moves_nothing(ts_client: Client, ledger: Ledger) -> None:
    p = payment(12)
    task_queue = f"ts-{uuid.uuid4().hex[:10]}"
    # No worker yet: the cancel is in before the workflow's first step runs.
    handle = await ts_client.start_workflow(
        "PaymentWorkflow",
        PaymentWorkflowInput(payment=p),
        id=f"payment-{p.payment_id}",
        task_queue=task_queue,
        result_type=PaymentOutcome,
    )
    await handle.signal("cancel", cancel_signal("changed my mind"))
    async with time_skipping_worker(ts_client, ledger, task_queue=task_queue) as h:
        outcome = await handle.result()
        state = await h.state(p)
    assert (outcome.status, outcome.reason) == (OutcomeStatus.CANCELLED, "changed my mind")
    assert ledger.movements(p.payment_id) == []
    assert "debited" not in [s.name for s in state.steps]
    assert next(s for s in state.steps if s.name == "cancel requested").detail == (
        "in PENDING: changed my mind"
    )


async def test_cancel_while_processing_voids_and_credits_back(
    ts_client: Client, ledger: Ledger
) -> None:
    release = asyncio.Event()

    @activity.defn(name="authorize_payment")
    async def slow_authorize(input: AuthorizeInput) -> Authorization:
        await release.wait()  # the gateway takes its time
        return Authorization(gateway_ref="gw-slow")

    p = payment(13)
    before = balance(ledger, p)
    try:
        async with time_skipping_worker(ts_client, ledger, fakes=[slow_authorize]) as h:
            handle = await h.start(p)
            await h.wait_for(p, PaymentPhase.PROCESSING, step="debited")
            assert balance(ledger, p) == before - p.amount_minor  # type: ignore[operator]
            await handle.signal("cancel", cancel_signal())
            await h.wait_for(p, PaymentPhase.PROCESSING, step="cancel requested")
            # The request returns after all: an authorisation to void. (Letting it finish
            # also releases the test server's clock, which an abandoned activity holds.)
            release.set()
            outcome = await handle.result()
            state = await h.state(p)
    finally:
        release.set()
    assert outcome.status == OutcomeStatus.CANCELLED
    assert balance(ledger, p) == before
    assert [s.detail for s in state.steps if s.name == "compensated"] == [
        "void authorization",
        "credit back",
    ]
    assert "in PROCESSING" in (
        next(s for s in state.steps if s.name == "cancel requested").detail or ""
    )


async def test_cancel_while_awaiting_callback(harness: Harness) -> None:
    p = payment(14, metadata={"gateway": "never"})
    before = balance(harness.ledger, p)
    handle = await harness.start(p)
    await harness.wait_for(p, PaymentPhase.AWAITING_CALLBACK)
    await handle.signal("cancel", cancel_signal())
    outcome = await handle.result()
    assert outcome.status == OutcomeStatus.CANCELLED
    assert balance(harness.ledger, p) == before
    assert harness.gateway.void(p.payment_id) is False  # already voided by the compensation


async def test_cancel_in_manual_review(
    harness: Harness, time_skipping: WorkflowEnvironment
) -> None:
    p = payment(15, metadata={"gateway": "error"})
    before = balance(harness.ledger, p)
    handle = await to_manual_review(harness, time_skipping, p)
    await handle.signal("cancel", cancel_signal())
    outcome = await handle.result()
    assert outcome.status == OutcomeStatus.CANCELLED
    assert balance(harness.ledger, p) == before
    [sent] = harness.notifications.for_payment(p.payment_id)
    assert sent.status == "CANCELLED"
