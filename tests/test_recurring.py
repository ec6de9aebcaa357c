"""RecurringPaymentWorkflow on the time-skipping server: a year of monthly terms in seconds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from schemas.events import CallbackStatus, OutcomeStatus
from schemas.ids import recurring_workflow_id, term_payment_id
from schemas.workflow_api import (
    GatewayCallbackSignal,
    PaymentPhase,
    RecurringCancelSignal,
    RecurringInput,
    RecurringState,
)
from tests.support import GATEWAY_SECRET, Harness, payment, time_skipping_worker
from tools.namespace import register_search_attributes
from workflows.simulations.gateway import GatewayBehaviour, signed_callback
from workflows.simulations.ledger import DEMO_BALANCE_MINOR, Ledger

MONTH = timedelta(days=30)


@pytest_asyncio.fixture(loop_scope="session")
async def harness(time_skipping: WorkflowEnvironment, ledger: Ledger) -> AsyncIterator[Harness]:
    await register_search_attributes(time_skipping.client, time_skipping.client.namespace)
    async with time_skipping_worker(time_skipping.client, ledger) as running:
        yield running


def contract(terms: int = 12, **overrides: object) -> RecurringInput:
    data: dict[str, object] = {
        "subscription_id": f"gym-{uuid.uuid4().hex[:8]}",
        "account_id": "acct-0042",
        "merchant_id": "merchant-gym",
        "amount_minor": 2_999,
        "currency": "EUR",
        "period": MONTH,
        "terms": terms,
    }
    data.update(overrides)
    return RecurringInput.model_validate(data)


async def start(harness: Harness, terms: RecurringInput) -> WorkflowHandle[object, RecurringState]:
    return await harness.client.start_workflow(
        "RecurringPaymentWorkflow",
        terms,
        id=recurring_workflow_id(terms.subscription_id),
        task_queue=harness.task_queue,
        result_type=RecurringState,
    )


async def charges(handle: WorkflowHandle[object, RecurringState], count: int) -> RecurringState:
    for _ in range(600):
        state = await handle.query("status", result_type=RecurringState)
        if len(state.charges) >= count:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"contract never reached {count} charges: {state}")


async def test_twelve_monthly_terms_run_to_completion(harness: Harness) -> None:
    terms = contract(12)
    handle = await start(harness, terms)
    state = await handle.result()

    assert state.done and not state.cancel_requested
    assert [c.term for c in state.charges] == list(range(1, 13))
    assert {c.status for c in state.charges} == {OutcomeStatus.SUCCEEDED}
    assert harness.ledger.balance("acct-0042", "EUR") == DEMO_BALANCE_MINOR - 12 * 2_999
    for charge in state.charges:
        assert [m.delta_minor for m in harness.ledger.movements(charge.payment_id)] == [-2_999]
    # Monthly: the last term was charged eleven periods after the first.
    first, last = harness.outcomes[0], harness.outcomes[-1]
    assert last.created_at - first.created_at >= 11 * MONTH
    # continue_as_new kept each run short: the first run ended after terms_per_run terms.
    first_run = harness.client.get_workflow_handle(
        handle.id, run_id=handle.first_execution_run_id or handle.result_run_id
    )
    history = await first_run.fetch_history()
    assert history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    assert len(history.events) < 200


async def test_cancel_after_term_three_leaves_exactly_three_charges(
    harness: Harness, time_skipping: WorkflowEnvironment
) -> None:
    terms = contract(12)
    handle = await start(harness, terms)
    await charges(handle, 1)
    for term in (2, 3):
        await time_skipping.sleep(MONTH)  # the next term falls due
        await charges(handle, term)
    await handle.signal("cancel", RecurringCancelSignal(reason="moving away"))
    state = await handle.result()

    assert state.cancel_requested and state.done
    assert [c.term for c in state.charges] == [1, 2, 3]
    assert harness.ledger.balance("acct-0042", "EUR") == DEMO_BALANCE_MINOR - 3 * 2_999
    assert len(harness.outcomes) == 3


async def test_cancel_during_a_term_lets_that_term_finish(
    time_skipping: WorkflowEnvironment, ledger: Ledger
) -> None:
    silent = GatewayBehaviour(callbacks=False)
    async with time_skipping_worker(time_skipping.client, ledger, gateway=silent) as harness:
        terms = contract(12)
        handle = await start(harness, terms)
        term_one = payment(0, payment_id=term_payment_id(terms.subscription_id, 1))
        await harness.wait_for(term_one, PaymentPhase.AWAITING_CALLBACK)
        # The contract is cancelled while term 1 waits for its gateway callback ...
        await handle.signal("cancel", RecurringCancelSignal())
        await harness.client.get_workflow_handle(f"payment-{term_one.payment_id}").signal(
            "gateway_callback",
            GatewayCallbackSignal(
                callback=signed_callback(
                    payment_id=term_one.payment_id,
                    gateway_ref=f"gw-{term_one.payment_id}",
                    status=CallbackStatus.AUTHORIZED,
                    secret=GATEWAY_SECRET,
                )
            ),
        )
        state = await handle.result()
    # ... and term 1 still completes; no term 2 follows.
    assert [(c.term, c.status) for c in state.charges] == [(1, OutcomeStatus.SUCCEEDED)]
    assert ledger.balance("acct-0042", "EUR") == DEMO_BALANCE_MINOR - 2_999


async def test_temporal_cancel_during_a_term_ends_the_contract_and_compensates_the_term(
    time_skipping: WorkflowEnvironment, ledger: Ledger
) -> None:
    """`temporal workflow cancel` on a contract reaches its running term, which compensates
    and publishes CANCELLED (issue 13); the contract charges no further term."""
    await register_search_attributes(time_skipping.client, time_skipping.client.namespace)
    silent = GatewayBehaviour(callbacks=False)
    async with time_skipping_worker(time_skipping.client, ledger, gateway=silent) as harness:
        terms = contract(3)
        handle = await start(harness, terms)
        term_one = payment(0, payment_id=term_payment_id(terms.subscription_id, 1))
        await harness.wait_for(term_one, PaymentPhase.AWAITING_CALLBACK)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(handle.result(), 60)
        described = await handle.describe()
    assert described.status == WorkflowExecutionStatus.CANCELED
    assert [(o.payment_id, o.status) for o in harness.outcomes] == [
        (term_one.payment_id, OutcomeStatus.CANCELLED)
    ]
    assert ledger.balance("acct-0042", "EUR") == DEMO_BALANCE_MINOR
