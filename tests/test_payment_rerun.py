"""A payment started again as a new workflow run (after Temporal's retention forgot the first
run, or a replay past it) ends REJECTED as a duplicate and moves no money, on the time-skipping
server with the real workflows, activities and ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.testing import WorkflowEnvironment

from schemas.events import OutcomeStatus, PaymentOutcome
from schemas.ids import payment_workflow_id
from schemas.workflow_api import PaymentWorkflowInput
from tests.support import Harness, payment, time_skipping_worker
from tools.namespace import register_search_attributes
from workflows.simulations.ledger import Ledger


@pytest_asyncio.fixture(loop_scope="session")
async def harness(time_skipping: WorkflowEnvironment, ledger: Ledger) -> AsyncIterator[Harness]:
    client: Client = time_skipping.client
    await register_search_attributes(client, client.namespace)
    async with time_skipping_worker(client, ledger) as running:
        yield running


@pytest.mark.parametrize(
    ("verdict", "first_status", "first_net"),
    [("approve", OutcomeStatus.SUCCEEDED, -1), ("decline", OutcomeStatus.FAILED, 0)],
)
async def test_a_payment_started_again_as_a_new_run_is_rejected_and_moves_no_money(
    harness: Harness, verdict: str, first_status: OutcomeStatus, first_net: int
) -> None:
    p = payment(11, metadata={"gateway": verdict})
    start_balance = harness.ledger.balance(p.account_id, p.currency)
    assert start_balance is not None
    first_handle = await harness.start(p)
    first: PaymentOutcome = await first_handle.result()
    assert first.status == first_status
    net = sum(m.delta_minor for m in harness.ledger.movements(p.payment_id))
    assert net == first_net * p.amount_minor

    # The same payment id as a new run of the same workflow id: what a replay of its
    # PaymentCreated does once Temporal no longer keeps the closed run.
    again = await harness.client.start_workflow(
        "PaymentWorkflow",
        PaymentWorkflowInput(payment=p),
        id=payment_workflow_id(p.payment_id),
        task_queue=harness.task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        result_type=PaymentOutcome,
    )
    assert again.result_run_id != first_handle.result_run_id
    second: PaymentOutcome = await again.result()

    assert (second.status, second.reason) == (OutcomeStatus.REJECTED, "duplicate payment id")
    assert [o.status for o in harness.outcomes] == [first_status, OutcomeStatus.REJECTED]
    # No money moved by the second run, and the first run's movements are untouched.
    assert sum(m.delta_minor for m in harness.ledger.movements(p.payment_id)) == net
    assert harness.ledger.balance(p.account_id, p.currency) == start_balance + net
    assert {m.run_id for m in harness.ledger.movements(p.payment_id)} == {
        first_handle.result_run_id
    }
