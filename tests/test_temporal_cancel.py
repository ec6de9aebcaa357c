"""A cancellation through Temporal itself, on the dev server: the saga's cancel path runs.

``temporal workflow cancel`` (what an operator reaches for first, in the UI or the CLI) and
``handle.cancel()`` must compensate, publish exactly one CANCELLED outcome and end the
workflow Completed, not Canceled, so that a redelivered PaymentCreated cannot start the
payment again. The race table (tests/test_saga_races.py) covers every step boundary on the
time-skipping server; these are the outside checks on the real server.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from plumbing.settings import Settings
from schemas.codec import Codec
from schemas.events import OutcomeStatus, PaymentCreated, PaymentOutcome
from schemas.ids import payment_workflow_id
from schemas.workflow_api import PaymentPhase, PaymentState, PaymentWorkflowInput
from tests.saga_races import RecordingGateway
from tests.support import (
    Stack,
    payment,
    produce_raw,
    read_outcomes,
    running_bridge,
    running_worker,
)
from tools.producing import encode_record
from workflows.models import PublishOutcomeInput
from workflows.simulations.gateway import GatewayBehaviour
from workflows.simulations.ledger import Ledger
from workflows.worker import open_worker

TEMPORAL_CLI = str(Path(sys.executable).parent / "temporal")
SILENT = GatewayBehaviour(callbacks=False)  # accepts requests, never calls back


async def produce_payment(settings: Settings, p: PaymentCreated) -> None:
    await produce_raw(settings, settings.topic_payments, [encode_record(Codec(), p)])


async def wait_for_phase(client: Client, p: PaymentCreated, phase: PaymentPhase) -> None:
    handle = client.get_workflow_handle(payment_workflow_id(p.payment_id))
    for _ in range(600):
        try:
            state = await handle.query("status", result_type=PaymentState)
            if state.status == phase:
                return
        except RPCError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{p.payment_id} never reached {phase}")


def consumed(stack: Stack, topic: str) -> float:
    total = 0.0
    for family in stack.registry.collect():
        if family.name == "paybridge_events_consumed":
            total += sum(s.value for s in family.samples if s.labels.get("topic") == topic)
    return total


async def test_temporal_workflow_cancel_runs_the_saga_and_publishes_cancelled(
    stack: Stack,
) -> None:
    settings, ledger = stack.settings, stack.ledger
    p = payment(31, amount_minor=2_500)
    before = ledger.balance(p.account_id, p.currency)
    assert before is not None
    handle = stack.client.get_workflow_handle(payment_workflow_id(p.payment_id))
    async with running_worker(stack, gateway=SILENT) as gateway, running_bridge(stack):
        await produce_payment(settings, p)
        await wait_for_phase(stack.client, p, PaymentPhase.AWAITING_CALLBACK)
        assert ledger.balance(p.account_id, p.currency) == before - 2_500
        run_id = (await handle.describe()).run_id

        cancel = await asyncio.create_subprocess_exec(
            TEMPORAL_CLI,
            "workflow",
            "cancel",
            "--workflow-id",
            handle.id,
            "--address",
            settings.temporal_address,
            "--namespace",
            settings.temporal_namespace,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(cancel.communicate(), 60)
        assert cancel.returncode == 0, (out, err)
        [outcome] = await read_outcomes(settings, expect=1, timeout=60)

        # The payment is redelivered (a replay, a rewound group): it must not start again.
        await produce_payment(settings, p)
        for _ in range(300):
            if consumed(stack, settings.topic_payments) >= 2:
                break
            await asyncio.sleep(0.1)
        assert consumed(stack, settings.topic_payments) >= 2
        outcomes = await read_outcomes(settings, expect=2, timeout=5)
        voided_again = gateway.void(p.payment_id)
        state = await handle.query("status", result_type=PaymentState)

    assert outcome.status == OutcomeStatus.CANCELLED
    assert [o.event_id for o in outcomes] == [outcome.event_id]  # one outcome, no second run
    described = await handle.describe()
    assert described.status == WorkflowExecutionStatus.COMPLETED
    assert described.run_id == run_id
    assert ledger.balance(p.account_id, p.currency) == before
    assert [m.delta_minor for m in ledger.movements(p.payment_id)] == [-2_500, 2_500]
    assert voided_again is False  # the compensation voided the authorisation already
    assert [s.detail for s in state.steps if s.name == "compensated"] == [
        "void authorization",
        "credit back",
    ]
    assert next(s for s in state.steps if s.name == "cancel requested").detail == (
        "in AWAITING_CALLBACK: cancelled through Temporal"
    )


async def test_handle_cancel_with_the_authorisation_in_flight_voids_the_late_grant(
    client: Client, ledger: Ledger
) -> None:
    """On the real server: the request is on its way to the gateway when the workflow is
    cancelled; the gateway grants it afterwards, and the saga voids that grant."""
    outcomes: list[PaymentOutcome] = []

    @activity.defn(name="publish_outcome")
    async def publish_outcome(input: PublishOutcomeInput) -> None:
        outcomes.append(input.outcome)

    gateway = RecordingGateway()
    p = payment(32, amount_minor=1_700)
    gateway.plan(p.payment_id).hold_from_attempt = 1
    before = ledger.balance(p.account_id, p.currency)
    task_queue = f"cancel-{uuid.uuid4().hex[:10]}"
    async with open_worker(
        client,
        task_queue=task_queue,
        ledger=ledger,
        outcomes=None,
        gateway=gateway,
        extra_activities=[publish_outcome],
    ):
        handle = await client.start_workflow(
            "PaymentWorkflow",
            PaymentWorkflowInput(payment=p),
            id=payment_workflow_id(p.payment_id),
            task_queue=task_queue,
            result_type=PaymentOutcome,
        )
        for _ in range(600):
            if "request #1 sent" in gateway.events(p.payment_id):
                break
            await asyncio.sleep(0.05)
        gateway.record("event: cancel", p.payment_id)
        await handle.cancel()
        for _ in range(600):
            state = await handle.query("status", result_type=PaymentState)
            if any(s.name == "void deferred" for s in state.steps):
                break
            await asyncio.sleep(0.05)
        assert gateway.granted == set()
        gateway.release(p.payment_id)  # granted after the cancel
        outcome = await asyncio.wait_for(handle.result(), 60)
        state = await handle.query("status", result_type=PaymentState)

    assert outcome.status == OutcomeStatus.CANCELLED
    assert outcomes == [outcome]
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert gateway.granted == gateway.voided == {p.payment_id}
    log = gateway.events(p.payment_id)
    assert log.index("event: cancel") < log.index("granted") < log.index("voided")
    assert [s.detail for s in state.steps if s.name == "compensated"] == [
        "void authorization",
        "credit back",
    ]
    assert ledger.balance(p.account_id, p.currency) == before
