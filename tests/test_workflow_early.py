"""A PaymentWorkflow run started by a callback or cancel that came before its payment, on the
time-skipping server: it waits (status PENDING), holds what it receives, runs the saga when the
payment comes, and otherwise moves no money, dead-letters the held records (reason orphan)
and ends Failed, so that the payment still starts a fresh run later.

Runs start as the bridge starts them (signal-with-start); ``dead_letter_orphan`` (Kafka) is a
fake that records what it was given. The Kafka path is in tests/test_early_signals.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from schemas.events import CallbackStatus, OutcomeStatus, PaymentCreated, PaymentOutcome
from schemas.ids import payment_workflow_id
from schemas.workflow_api import (
    CancelSignal,
    GatewayCallbackSignal,
    PaymentCreatedSignal,
    PaymentPhase,
    PaymentState,
    PaymentWorkflowInput,
    SourceRecord,
)
from tests.support import GATEWAY_SECRET, Harness, payment, time_skipping_worker
from tools.namespace import register_search_attributes
from workflows.models import OrphanDeadLetterInput
from workflows.simulations.gateway import GatewayBehaviour, signed_callback
from workflows.simulations.ledger import Ledger

ORPHAN = timedelta(minutes=10)


class DeadLetterRecorder:
    def __init__(self) -> None:
        self.inputs: list[OrphanDeadLetterInput] = []
        self.hold: asyncio.Event | None = None
        self.called = asyncio.Event()

    @activity.defn(name="dead_letter_orphan")
    async def dead_letter_orphan(self, input: OrphanDeadLetterInput) -> None:
        self.called.set()
        if self.hold is not None:
            await self.hold.wait()
        self.inputs.append(input)


@pytest_asyncio.fixture(loop_scope="session")
async def ts_client(time_skipping: WorkflowEnvironment) -> Client:
    await register_search_attributes(time_skipping.client, time_skipping.client.namespace)
    return time_skipping.client


@pytest.fixture
def dead_letters() -> DeadLetterRecorder:
    return DeadLetterRecorder()


def source(topic: str, offset: int) -> SourceRecord:
    return SourceRecord(
        topic=topic,
        partition=2,
        offset=offset,
        timestamp_ms=1_700_000_000_000,
        key=b"k",
        value=b"\x00\xffvalue",
        headers=[("h", b"\xfe"), ("n", None)],
    )


def callback_signal(p: PaymentCreated, status: CallbackStatus = CallbackStatus.AUTHORIZED) -> Any:
    callback = signed_callback(
        payment_id=p.payment_id,
        gateway_ref=f"gw-{p.payment_id}",
        status=status,
        secret=GATEWAY_SECRET,
    )
    return GatewayCallbackSignal(callback=callback, source=source("gateway.callbacks", 7))


def cancel_signal(p: PaymentCreated) -> CancelSignal:
    return CancelSignal(
        event_id=f"cancel-{p.payment_id}",
        reason="changed my mind",
        source=source("payments.cancel-requested", 3),
    )


async def start_early(
    harness: Harness, p: PaymentCreated, name: str, arg: Any
) -> WorkflowHandle[Any, Any]:
    """As the bridge applies an early signal: signal-with-start, no payment in the input."""
    return await harness.client.start_workflow(
        "PaymentWorkflow",
        PaymentWorkflowInput(
            payment=None, orphan_timeout=ORPHAN, callback_timeout=timedelta(minutes=1)
        ),
        id=payment_workflow_id(p.payment_id),
        task_queue=harness.task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        start_signal=name,
        start_signal_args=[arg],
        result_type=PaymentOutcome,
    )


async def join(harness: Harness, p: PaymentCreated) -> WorkflowHandle[Any, Any]:
    """As the bridge applies the PaymentCreated."""
    return await harness.client.start_workflow(
        "PaymentWorkflow",
        PaymentWorkflowInput(payment=p, orphan_timeout=ORPHAN),
        id=payment_workflow_id(p.payment_id),
        task_queue=harness.task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        start_signal="payment_created",
        start_signal_args=[PaymentCreatedSignal(payment=p)],
        result_type=PaymentOutcome,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def harness(
    ts_client: Client, ledger: Ledger, dead_letters: DeadLetterRecorder
) -> AsyncIterator[Harness]:
    silent = GatewayBehaviour(latency=0, callbacks=False)  # only the test's callbacks
    async with time_skipping_worker(
        ts_client, ledger, gateway=silent, fakes=[dead_letters.dead_letter_orphan]
    ) as running:
        yield running


async def state_of(handle: WorkflowHandle[Any, Any]) -> PaymentState:
    state: PaymentState = await handle.query("status", result_type=PaymentState)
    return state


async def test_an_early_callback_waits_for_its_payment_and_is_applied(harness: Harness) -> None:
    p = payment(1)
    before = harness.ledger.balance(p.account_id, p.currency)
    handle = await start_early(harness, p, "gateway_callback", callback_signal(p))
    waiting = await state_of(handle)
    assert waiting.payment_id == p.payment_id
    assert waiting.status == PaymentPhase.PENDING
    assert [s.name for s in waiting.steps] == ["gateway callback held", "waiting for payment"]
    await join(harness, p)
    outcome: PaymentOutcome = await handle.result()
    assert outcome.status == OutcomeStatus.SUCCEEDED, "the held callback was applied"
    assert harness.ledger.balance(p.account_id, p.currency) == before - p.amount_minor  # type: ignore[operator]
    names = [s.name for s in (await state_of(handle)).steps]
    assert (
        names.index("payment received") < names.index("gateway callback") < names.index("debited")
    )


async def test_an_early_cancel_cancels_the_payment_before_any_money_moves(harness: Harness) -> None:
    p = payment(2)
    handle = await start_early(harness, p, "cancel", cancel_signal(p))
    await join(harness, p)
    outcome: PaymentOutcome = await handle.result()
    assert outcome.status == OutcomeStatus.CANCELLED and outcome.reason == "changed my mind"
    assert harness.ledger.movements(p.payment_id) == []


async def test_a_payment_that_never_comes_is_an_orphan(
    harness: Harness, dead_letters: DeadLetterRecorder
) -> None:
    p = payment(3)
    handle = await start_early(harness, p, "gateway_callback", callback_signal(p))
    await handle.signal("cancel", cancel_signal(p))
    await handle.signal("gateway_callback", callback_signal(p))  # a redelivery: held once
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "Orphaned" and cause.non_retryable
    assert p.payment_id in cause.message and "2 held signal(s)" in cause.message
    assert sorted((i.source.topic, i.source.offset) for i in dead_letters.inputs) == [
        ("gateway.callbacks", 7),
        ("payments.cancel-requested", 3),
    ]
    [letter] = [i for i in dead_letters.inputs if i.source.topic == "gateway.callbacks"]
    assert letter.source.value == b"\x00\xffvalue" and letter.source.headers == [
        ("h", b"\xfe"),
        ("n", None),
    ]
    assert p.payment_id in letter.message and "0:10:00" in letter.message
    assert (await state_of(handle)).status == PaymentPhase.ORPHANED
    assert harness.ledger.movements(p.payment_id) == []
    # The payment comes after all: the failed run does not block it.
    later = await join(harness, p)
    assert later.result_run_id != handle.result_run_id
    await later.signal("gateway_callback", callback_signal(p))
    outcome: PaymentOutcome = await later.result()
    assert outcome.status == OutcomeStatus.SUCCEEDED


async def test_a_payment_that_comes_while_the_orphan_dead_letters_is_not_lost(
    harness: Harness, dead_letters: DeadLetterRecorder
) -> None:
    """Between the orphan timer and the run's end the payment arrives: the run processes it
    (what it had already dead-lettered stays in the DLQ; a redrive may still apply it)."""
    p = payment(4)
    dead_letters.hold = asyncio.Event()
    handle = await start_early(harness, p, "gateway_callback", callback_signal(p))
    result = asyncio.create_task(handle.result())
    await asyncio.wait_for(dead_letters.called.wait(), 60)
    await join(harness, p)
    # A callback after the payment is applied to it, while the held one goes to the DLQ.
    later = callback_signal(p)
    later.callback = signed_callback(
        payment_id=p.payment_id,
        gateway_ref="gw-later",
        status=CallbackStatus.AUTHORIZED,
        secret=GATEWAY_SECRET,
    )
    await handle.signal("gateway_callback", later)
    dead_letters.hold.set()
    outcome: PaymentOutcome = await asyncio.wait_for(result, 60)
    assert outcome.status == OutcomeStatus.SUCCEEDED
    assert len(dead_letters.inputs) == 1
    names = [s.name for s in (await state_of(handle)).steps]
    assert "orphaned" in names and "payment received late" in names


async def test_a_payment_for_another_id_is_ignored(harness: Harness) -> None:
    p, other = payment(5), payment(6)
    handle = await start_early(harness, p, "cancel", cancel_signal(p))
    await handle.signal("payment_created", PaymentCreatedSignal(payment=other))
    state = await state_of(handle)
    assert state.status == PaymentPhase.PENDING
    assert state.steps[-1].name == "payment ignored"
    await join(harness, p)
    outcome: PaymentOutcome = await handle.result()
    assert outcome.payment_id == p.payment_id and outcome.status == OutcomeStatus.CANCELLED


async def test_redeliveries_do_not_move_the_orphan_deadline(
    harness: Harness, time_skipping: WorkflowEnvironment
) -> None:
    """Break 4 of issue 12: the deadline was taken from each delivery attempt, so after every
    rebalance a waiting callback started a fresh 10 minutes. Now it is the run's timer: the
    callback delivered again 9 minutes in still ends the run 10 minutes after it started."""
    p = payment(7)
    handle = await start_early(harness, p, "gateway_callback", callback_signal(p))
    await time_skipping.sleep(timedelta(minutes=9))
    await handle.signal("gateway_callback", callback_signal(p))  # the redelivery
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    described = await handle.describe()
    assert described.close_time is not None
    lived = described.close_time - described.start_time
    assert ORPHAN <= lived < ORPHAN + timedelta(minutes=1), lived


async def test_a_cancellation_through_temporal_while_waiting_is_a_held_cancel(
    harness: Harness,
) -> None:
    """`temporal workflow cancel` on a run that waits for its payment: held like the cancel
    signal, so the payment, when it comes, ends CANCELLED without moving money (and the run
    Completes, so that a redelivered payment cannot start it again)."""
    p = payment(8)
    handle = await start_early(harness, p, "gateway_callback", callback_signal(p))
    await handle.cancel()
    for _ in range(200):
        if any(s.name == "cancel held" for s in (await state_of(handle)).steps):
            break
        await asyncio.sleep(0.05)
    await join(harness, p)
    outcome: PaymentOutcome = await handle.result()
    assert outcome.status == OutcomeStatus.CANCELLED
    assert harness.ledger.movements(p.payment_id) == []
    described = await handle.describe()
    assert described.status is not None and described.status.name == "COMPLETED"
