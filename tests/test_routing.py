"""Routing: each record is applied with one Temporal call, signal-with-start, whatever the
order in which payments and their callbacks arrive.

Temporal is the stand-in of tests/standins.py (the client boundary, with Temporal's semantics
for runs, id reuse, signal-with-start, signal and describe), so that a test can choose which
call completes first. The real server's answers are pinned in tests/test_early_signals.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCStatusCode

from bridge.metrics import BridgeMetrics
from bridge.routing import Route, build_routes
from bridge.temporal_calls import TemporalCalls
from plumbing.settings import Settings
from plumbing.temporal import Backoff
from schemas.codec import Codec
from schemas.events import CallbackStatus, PaymentCancelRequested, PaymentCreated
from schemas.workflow_api import (
    CancelSignal,
    GatewayCallbackSignal,
    PaymentCreatedSignal,
    PaymentWorkflowInput,
)
from tests.standins import FakeGroupConsumer, StandInTemporal, event_id_of, rpc_error
from tests.support import metric, payment
from workflows.simulations.gateway import signed_callback

SECRET = "routing-secret"
CODEC = Codec()
SETTINGS = Settings(
    PAYBRIDGE_TOPIC_PAYMENTS="payments",
    PAYBRIDGE_TOPIC_CALLBACKS="callbacks",
    PAYBRIDGE_TOPIC_CANCELS="cancels",
    PAYBRIDGE_ORPHAN_TIMEOUT="7m",
    PAYBRIDGE_CALLBACK_TIMEOUT="2m",
)


class Routed:
    """The routes of the three topics over a stand-in Temporal."""

    def __init__(self, *, answer_at_once: bool = True) -> None:
        self.temporal = StandInTemporal(answer_at_once=answer_at_once)
        self.registry = CollectorRegistry()
        metrics = BridgeMetrics(self.registry)
        self.calls = TemporalCalls(
            self.temporal,  # type: ignore[arg-type]
            task_queue="q",
            metrics=metrics,
            backoff=lambda: Backoff(initial=0.0, cap=0.0),
        )
        self.routes = build_routes(SETTINGS, self.calls, gateway_secret=SECRET, metrics=metrics)
        self.kafka = FakeGroupConsumer(partitions=1)

    async def apply(self, topic: str, event: Any) -> str:
        record = self.kafka.produce(topic, event.payment_id.encode(), CODEC.encode(event))
        route: Route = self.routes[topic]
        return await route.apply(event, record)


def callback(p: PaymentCreated, n: int = 0) -> Any:
    return signed_callback(
        payment_id=p.payment_id,
        gateway_ref=f"gw-{n}",
        status=CallbackStatus.AUTHORIZED,
        secret=SECRET,
        event_id=f"cb-{p.payment_id}-{n}",
    )


def cancel(p: PaymentCreated) -> PaymentCancelRequested:
    return PaymentCancelRequested(
        event_id=f"cancel-{p.payment_id}",
        payment_id=p.payment_id,
        reason="changed my mind",
        requested_at=datetime.now(UTC),
    )


async def test_a_payment_is_one_signal_with_start_carrying_the_payment() -> None:
    routed, p = Routed(), payment(1)
    assert await routed.apply("payments", p) == "started"
    [(call, how)] = routed.temporal.answered
    assert (call.kind, call.workflow_id, how) == (
        "signal_with_start",
        f"payment-{p.payment_id}",
        "lands",
    )
    assert call.reuse == WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY
    assert isinstance(call.arg, PaymentWorkflowInput) and call.arg.payment == p
    assert call.arg.orphan_timeout == timedelta(minutes=7)
    assert call.signal == "payment_created"
    assert isinstance(call.signal_arg, PaymentCreatedSignal) and call.signal_arg.payment == p


@pytest.mark.parametrize("topic", ["callbacks", "cancels"])
async def test_an_early_signal_starts_a_run_waiting_for_its_payment(topic: str) -> None:
    routed, p = Routed(), payment(2)
    event = callback(p) if topic == "callbacks" else cancel(p)
    assert await routed.apply(topic, event) == "started"
    [(call, _)] = routed.temporal.answered
    assert call.kind == "signal_with_start"
    assert call.arg.payment is None, "the run waits for its payment"
    assert call.arg.orphan_timeout == timedelta(minutes=7)
    assert call.arg.callback_timeout == timedelta(minutes=2)
    signal = call.signal_arg
    assert isinstance(signal, GatewayCallbackSignal if topic == "callbacks" else CancelSignal)
    source = signal.source
    assert source is not None, "the record travels with the signal, to be dead-lettered"
    record = routed.kafka.log[next(iter(routed.kafka.log))][0]
    assert (source.topic, source.partition, source.offset) == (topic, 0, record.offset)
    assert (source.key, source.value) == (record.key, record.value)
    # The payment joins the run: its signal hands it over, nothing else starts.
    assert await routed.apply("payments", p) == "deduplicated"
    [run] = routed.temporal.runs[f"payment-{p.payment_id}"]
    assert run.payment() == p and [name for name, _ in run.signals][-1] == "payment_created"
    assert metric(routed.registry, "paybridge_workflow_starts_total", result="deduplicated") == 1


async def test_results_follow_the_run_they_meet() -> None:
    routed, p = Routed(), payment(3)
    wid = f"payment-{p.payment_id}"
    assert await routed.apply("callbacks", callback(p, 1)) == "started"
    assert await routed.apply("callbacks", callback(p, 2)) == "signalled"
    # The orphan timer fired: the run ended Failed; the payment starts a fresh run.
    routed.temporal.finish(wid)
    assert await routed.apply("payments", p) == "started"
    assert await routed.apply("cancels", cancel(p)) == "signalled"
    routed.temporal.finish(wid)  # the saga completed
    assert await routed.apply("payments", p) == "deduplicated"
    assert await routed.apply("callbacks", callback(p, 3)) == "closed"
    runs = routed.temporal.runs[wid]
    assert [r.status for r in runs] == [
        WorkflowExecutionStatus.FAILED,
        WorkflowExecutionStatus.COMPLETED,
    ]
    labels = {
        (signal, result): metric(
            routed.registry, "paybridge_signals_total", signal=signal, result=result
        )
        for signal in ("gateway_callback", "cancel")
        for result in ("started", "signalled", "closed")
    }
    assert {k: v for k, v in labels.items() if v} == {
        ("gateway_callback", "started"): 1,
        ("gateway_callback", "signalled"): 1,
        ("gateway_callback", "closed"): 1,
        ("cancel", "signalled"): 1,
    }
    assert metric(routed.registry, "paybridge_workflow_starts_total", result="started") == 1
    assert metric(routed.registry, "paybridge_workflow_starts_total", result="deduplicated") == 1


async def answer_in_order(temporal: StandInTemporal, order: list[str]) -> None:
    """Answer the calls carrying these event ids, in this order, as they come."""
    for event_id in order:
        for _ in range(200):
            mine = [c for c in temporal.pending if event_id in c.event_ids]
            if mine:
                temporal.answer(mine[0])
                break
            await asyncio.sleep(0)
        else:
            raise AssertionError(f"no call for {event_id}")
        for _ in range(20):
            await asyncio.sleep(0)


async def test_a_callback_racing_its_payments_start_reaches_the_workflow() -> None:
    """Break 1 of issue 12: the callback's call is answered first (no workflow yet), then the
    payment's start lands, then whatever else the callback asks. Before signal-with-start the
    callback's describe found the running workflow and answered "closed": committed, never
    delivered, and the payment timed out although the gateway had authorised it."""
    routed, p = Routed(answer_at_once=False), payment(4)
    cb = callback(p)
    applying = asyncio.gather(routed.apply("callbacks", cb), routed.apply("payments", p))
    await answer_in_order(routed.temporal, [cb.event_id, p.event_id])
    while routed.temporal.pending:  # anything else the bridge still asks
        routed.temporal.answer(routed.temporal.pending[0])
        await asyncio.sleep(0)
    await asyncio.wait_for(applying, 5)
    runs = routed.temporal.runs[f"payment-{p.payment_id}"]
    with_payment = [r for r in runs if r.payment() is not None]
    assert len(with_payment) == 1
    assert cb.event_id in {event_id_of(arg) for _, arg in with_payment[0].signals}


@pytest.mark.parametrize(
    "status",
    [
        RPCStatusCode.NOT_FOUND,  # the namespace does not exist
        RPCStatusCode.FAILED_PRECONDITION,  # the namespace is not active here
        RPCStatusCode.PERMISSION_DENIED,
        RPCStatusCode.UNAVAILABLE,
    ],
)
async def test_misconfiguration_is_retried_and_reported_not_dead_lettered(
    status: RPCStatusCode,
) -> None:
    """Break 3 of issue 12: a wrong or inactive namespace dead-lettered every payment. Now the
    call is retried until the configuration is fixed, and readiness fails meanwhile."""
    routed, p = Routed(), payment(5)
    routed.temporal.fail_next = [rpc_error(status, "namespace x") for _ in range(3)]
    seen_unready: list[bool] = []
    original = routed.temporal.answer

    def answer(call: Any, how: str = "lands") -> None:
        seen_unready.append(routed.calls.misconfigured is not None)  # what /readyz would say
        original(call, how)

    routed.temporal.answer = answer  # type: ignore[method-assign]
    assert await routed.apply("payments", p) == "started"
    assert (
        metric(routed.registry, "paybridge_temporal_retries_total", reason=status.name.lower()) == 3
    )
    configuration = status != RPCStatusCode.UNAVAILABLE
    assert seen_unready == [False, configuration, configuration, configuration]
    assert routed.calls.misconfigured is None and await routed.calls.reachable()
