"""Callbacks and cancels that come before their payment, on the real servers.

The bridge applies each with one signal-with-start and commits it at once: the run it starts
waits for its payment (a workflow timer of ``PAYBRIDGE_ORPHAN_TIMEOUT``), holds the signal,
and either runs the saga when the payment comes or dead-letters the held records as
``orphan`` and ends Failed, after which the payment still starts a fresh run.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from bridge.metrics import BridgeMetrics
from bridge.temporal_calls import TemporalCalls
from plumbing.settings import Settings
from schemas.codec import Codec
from schemas.events import CallbackStatus, GatewayCallback, PaymentCancelRequested, PaymentCreated
from schemas.ids import payment_workflow_id
from schemas.workflow_api import (
    SIGNAL_CANCEL,
    CancelSignal,
    PaymentPhase,
    PaymentState,
    payment_input,
)
from tests.support import (
    GATEWAY_SECRET,
    Stack,
    metric,
    payment,
    produce_raw,
    read_outcomes,
    read_topic,
    running_bridge,
    running_worker,
)
from tools.producing import encode_record
from workflows.simulations.gateway import GatewayBehaviour, signed_callback

SILENT = GatewayBehaviour(callbacks=False)  # the only callbacks are the ones a test produces
DLQ_HEADERS = {
    "dlq.source.topic",
    "dlq.source.partition",
    "dlq.source.offset",
    "dlq.error.class",
    "dlq.error.message",
    "dlq.reason",
    "dlq.failed_at",
}


def callback_for(p: PaymentCreated) -> GatewayCallback:
    return signed_callback(
        payment_id=p.payment_id,
        gateway_ref=f"gw-{p.payment_id}",
        status=CallbackStatus.AUTHORIZED,
        secret=GATEWAY_SECRET,
    )


def with_settings(stack: Stack, **update: object) -> Stack:
    return Stack(
        settings=stack.settings.model_copy(update=update), client=stack.client, ledger=stack.ledger
    )


async def state_of(client: Client, payment_id: str) -> PaymentState | None:
    handle = client.get_workflow_handle(payment_workflow_id(payment_id))
    try:
        state: PaymentState = await handle.query("status", result_type=PaymentState)
    except RPCError:
        return None
    return state


async def wait_until(predicate, timeout: float = 60.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_signal_with_start_says_whether_it_started_a_run(
    client: Client, settings: Settings
) -> None:
    """Pins the private ``started`` flag that ``signal_with_start_started`` reads (temporalio
    1.35 offers no public accessor), on the dev server: the time-skipping server always says
    False. No worker: nothing runs, the calls only start and signal."""
    registry = CollectorRegistry()
    calls = TemporalCalls(
        client, task_queue=settings.temporal_task_queue, metrics=BridgeMetrics(registry)
    )
    p = payment(1)
    workflow_id = payment_workflow_id(p.payment_id)

    async def cancel(n: int) -> str:
        return await calls.signal_with_start(
            workflow_id,
            workflow_input=payment_input(settings, None),
            signal=SIGNAL_CANCEL,
            arg=CancelSignal(event_id=f"c{n}", reason="test"),
        )

    assert await cancel(1) == "started"
    assert await cancel(2) == "existing"
    handle = client.get_workflow_handle(workflow_id)
    first_run = (await handle.describe()).run_id
    await handle.terminate("test")
    # A terminated run does not block the id (ALLOW_DUPLICATE_FAILED_ONLY): a new run starts.
    assert await cancel(3) == "started"
    assert (await handle.describe()).run_id != first_run
    await handle.terminate("test")


async def test_callbacks_before_their_payments_all_succeed(stack: Stack) -> None:
    """The issue's outside check at a small count: every callback produced before its payment
    reaches its workflow, each payment SUCCEEDS (a lost callback would time it out), nothing is
    dead-lettered, and each record was one Temporal call."""
    stack = with_settings(stack, orphan_timeout=timedelta(minutes=5))
    settings, codec = stack.settings, Codec()
    payments = [payment(n) for n in range(20)]
    callbacks = [encode_record(codec, callback_for(p)) for p in payments]
    async with running_worker(stack, gateway=SILENT), running_bridge(stack) as bridge:
        await produce_raw(settings, settings.topic_callbacks, callbacks)

        async def all_waiting() -> bool:
            states = [await state_of(stack.client, p.payment_id) for p in payments]
            return all(
                s is not None
                and s.status == PaymentPhase.PENDING
                and [step.name for step in s.steps]
                == ["gateway callback held", "waiting for payment"]
                for s in states
            )

        await wait_until(all_waiting, what="20 runs waiting for their payments")
        assert bridge.inflight == 0, "the bridge holds no record waiting for another"
        await produce_raw(
            settings, settings.topic_payments, [encode_record(codec, p) for p in payments]
        )
        outcomes = await read_outcomes(settings, expect=len(payments), timeout=120)
        applied = [await state_of(stack.client, p.payment_id) for p in payments]
        dead = await read_topic(settings, settings.topic_dlq, expect=0, timeout=1)
    assert sorted(o.payment_id for o in outcomes) == sorted(p.payment_id for p in payments)
    assert {o.status.value for o in outcomes} == {"SUCCEEDED"}
    for state in applied:
        assert state is not None
        assert Counter(s.name for s in state.steps)["gateway callback"] == 1
    assert dead == []
    registry = stack.registry
    cb = "gateway_callback"
    assert metric(registry, "paybridge_signals_total", signal=cb, result="started") == 20
    assert metric(registry, "paybridge_workflow_starts_total", result="deduplicated") == 20
    assert metric(registry, "paybridge_workflow_starts_total", result="started") == 0


async def test_a_callback_whose_payment_never_comes_is_an_orphan(stack: Stack) -> None:
    """The run the callback started waits PAYBRIDGE_ORPHAN_TIMEOUT (5 s here), moves no money,
    dead-letters the callback's record with reason orphan and every contract header, and ends
    Failed; the payment that comes afterwards starts a fresh run and completes."""
    settings, codec = stack.settings, Codec()
    late = payment(3)
    before = stack.ledger.balance(late.account_id, late.currency)
    cancel = PaymentCancelRequested.model_validate(
        {
            "event_id": "cancel-early",
            "payment_id": late.payment_id,
            "reason": "changed my mind",
            "requested_at": late.created_at,
        }
    )
    records = [encode_record(codec, callback_for(late)), encode_record(codec, cancel)]
    handle = stack.client.get_workflow_handle(payment_workflow_id(late.payment_id))
    async with running_worker(stack, gateway=SILENT), running_bridge(stack):
        await produce_raw(settings, settings.topic_callbacks, records[:1])
        await produce_raw(settings, settings.topic_cancels, records[1:])
        dead = await read_topic(settings, settings.topic_dlq, expect=2, timeout=60)
        first = await handle.describe()
        assert first.status == WorkflowExecutionStatus.FAILED
        assert stack.ledger.balance(late.account_id, late.currency) == before  # no money moved
        orphaned = await state_of(stack.client, late.payment_id)
        # The payment comes after all, with its callback again (as a redrive would send it).
        await produce_raw(settings, settings.topic_payments, [encode_record(codec, late)])
        await produce_raw(settings, settings.topic_callbacks, records[:1])
        [outcome] = await read_outcomes(settings, expect=1, timeout=60)
        second = await handle.describe()
    assert orphaned is not None and orphaned.status == PaymentPhase.ORPHANED
    assert len(dead) == 2
    sources = {settings.topic_callbacks: records[0], settings.topic_cancels: records[1]}
    for record in dead:
        headers = dict(record.headers)
        assert set(headers) >= DLQ_HEADERS, headers
        assert headers["dlq.reason"] == b"orphan"
        assert headers["dlq.error.class"] == b"OrphanError"
        assert late.payment_id.encode() in headers["dlq.error.message"]
        topic = headers["dlq.source.topic"].decode()
        key, value, _ = sources[topic]
        assert (record.key, record.value) == (key, value), "the record as it was read"
        assert int(headers["dlq.source.partition"]) in range(settings.input_partitions)
        assert int(headers["dlq.source.offset"]) == 0
        assert headers["dlq.failed_at"].endswith(b"Z")
    assert (
        metric(
            stack.registry,
            "paybridge_dlq_records_total",
            topic=settings.topic_callbacks,
            reason="orphan",
        )
        == 1
    )
    assert outcome.status.value == "SUCCEEDED"
    assert second.run_id != first.run_id and second.status == WorkflowExecutionStatus.COMPLETED
    assert stack.ledger.balance(late.account_id, late.currency) == before - late.amount_minor


@pytest.mark.parametrize("payment_first", [True, False])
async def test_a_completed_payment_stays_closed(stack: Stack, payment_first: bool) -> None:
    """A replayed PaymentCreated or a late callback for a payment that completed starts
    nothing: deduplicated / closed, as before signal-with-start, whichever record started the
    run."""
    settings, codec, registry = stack.settings, Codec(), stack.registry
    p = payment(4)
    cb = {"signal": "gateway_callback"}

    def starts(result: str) -> float:
        return metric(registry, "paybridge_workflow_starts_total", result=result)

    async with running_worker(stack, gateway=SILENT), running_bridge(stack):
        payment_record = (settings.topic_payments, encode_record(codec, p))
        callback_record = (settings.topic_callbacks, encode_record(codec, callback_for(p)))
        first, then = (
            (payment_record, callback_record)
            if payment_first
            else (callback_record, payment_record)
        )
        await produce_raw(settings, first[0], [first[1]])

        async def first_applied() -> bool:
            if payment_first:
                return starts("started") == 1
            return metric(registry, "paybridge_signals_total", **cb, result="started") == 1

        await wait_until(first_applied, what="the first record to start the run")
        await produce_raw(settings, then[0], [then[1]])
        await read_outcomes(settings, expect=1, timeout=60)
        handle = stack.client.get_workflow_handle(payment_workflow_id(p.payment_id))

        async def completed() -> bool:
            return (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED

        await wait_until(completed, what="the run to complete")  # it publishes, then ends
        for topic, record in (payment_record, callback_record):
            await produce_raw(settings, topic, [record])

        async def replays_refused() -> bool:
            closed = metric(registry, "paybridge_signals_total", **cb, result="closed")
            return closed == 1 and starts("deduplicated") == (1 if payment_first else 2)

        await wait_until(replays_refused, timeout=30, what="the replays to be refused")
        outcomes = await read_outcomes(settings, expect=1, timeout=3)
    assert len(outcomes) == 1
    assert starts("started") == (1 if payment_first else 0)
    runs = [w async for w in stack.client.list_workflows(f'WorkflowId = "payment-{p.payment_id}"')]
    assert len(runs) == 1
