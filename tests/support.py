"""Helpers for tests that run paybridge against the real servers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry
from temporalio import activity
from temporalio.activity import _Definition as _ActivityDefinition
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.worker import Worker

from bridge.consumer import Bridge
from bridge.service import open_bridge
from plumbing.kafka import consumer as kafka_consumer
from plumbing.kafka import idempotent_producer
from plumbing.settings import Settings
from schemas.codec import Codec
from schemas.events import GatewayCallback, PaymentCreated, PaymentMethod, PaymentOutcome
from schemas.ids import payment_workflow_id
from schemas.workflow_api import (
    GatewayCallbackSignal,
    PaymentPhase,
    PaymentState,
    PaymentWorkflowInput,
)
from workflows.activities.kafka import kafka_io
from workflows.metrics import WorkerMetrics
from workflows.models import PublishOutcomeInput
from workflows.simulations.gateway import GatewayBehaviour, SimulatedGateway
from workflows.simulations.ledger import Ledger
from workflows.simulations.notifications import NotificationSink
from workflows.worker import WORKFLOWS, activities, fraud_worker, open_worker

GATEWAY_SECRET = "test-secret"


def isolated_settings(kafka: str, temporal: str, **extra: Any) -> Settings:
    """Settings with topics, consumer group and task queue of their own (a random tag)."""
    tag = uuid.uuid4().hex[:10]
    return Settings(
        KAFKA_BOOTSTRAP_SERVERS=kafka,
        TEMPORAL_ADDRESS=temporal,
        PAYBRIDGE_CONSUMER_GROUP=f"paybridge-{tag}",
        TEMPORAL_TASK_QUEUE=f"payments-{tag}",
        PAYBRIDGE_TOPIC_PAYMENTS=f"payments.created-{tag}",
        PAYBRIDGE_TOPIC_CALLBACKS=f"gateway.callbacks-{tag}",
        PAYBRIDGE_TOPIC_CANCELS=f"payments.cancel-requested-{tag}",
        PAYBRIDGE_TOPIC_OUTCOMES=f"payments.outcomes-{tag}",
        PAYBRIDGE_TOPIC_DLQ=f"payments.dlq-{tag}",
        **extra,
    )


def payment(n: int = 0, **overrides: Any) -> PaymentCreated:
    """A valid payment on a demo account; ``overrides`` replace fields."""
    data: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "payment_id": f"p{n:06d}-{uuid.uuid4().hex[:8]}",
        "account_id": f"acct-{n % 1000 + 1:04d}",
        "merchant_id": f"merchant-{n % 7:02d}",
        "amount_minor": 100 + n,
        "currency": ("EUR", "USD", "GBP")[n % 3],
        "method": PaymentMethod.CARD,
        "created_at": datetime.now(UTC),
    }
    data.update(overrides)
    return PaymentCreated.model_validate(data)


async def produce_raw(
    settings: Settings,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
) -> None:
    producer = idempotent_producer(settings)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value, headers in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(
    settings: Settings, topic: str, *, expect: int, timeout: float = 300.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the start until ``expect`` records arrived (or time ran out),
    then a little longer to catch any extra (duplicate) record."""
    consumer = kafka_consumer(settings, enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        settle: float | None = None
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for batch_records in batch.values():
                records.extend(batch_records)
            if len(records) >= expect:
                settle = settle or loop.time() + 1.0
                if loop.time() >= settle:
                    break
        return records
    finally:
        await consumer.stop()


async def read_outcomes(
    settings: Settings, *, expect: int, timeout: float = 300.0
) -> list[PaymentOutcome]:
    codec = Codec()
    records = await read_topic(settings, settings.topic_outcomes, expect=expect, timeout=timeout)
    return [codec.decode(PaymentOutcome, r.value) for r in records]


async def count_workflows(client: Client, query: str) -> int:
    return (await client.count_workflows(query)).count


@dataclass
class Stack:
    """Worker and bridge of one test, in this process, against the session's servers."""

    settings: Settings
    client: Client
    ledger: Ledger
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    bridges: list[Bridge] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running_worker(
    stack: Stack,
    *,
    gateway: GatewayBehaviour | None = None,
    notifications: NotificationSink | None = None,
) -> AsyncIterator[SimulatedGateway]:
    """The worker of one test, with a simulated gateway whose signed callbacks travel through
    the callbacks topic and the bridge (by default it approves every payment after ~50 ms)."""
    async with kafka_io(stack.settings, metrics=WorkerMetrics(stack.registry)) as kafka:
        simulator = SimulatedGateway(
            gateway or GatewayBehaviour(latency=0.05),
            emitter=kafka.callbacks,
            secret=GATEWAY_SECRET,
        )
        try:
            async with open_worker(
                stack.client,
                task_queue=stack.settings.temporal_task_queue,
                ledger=stack.ledger,
                outcomes=kafka.outcomes,
                gateway=simulator,
                notifications=notifications,
                orphans=kafka.orphans,
            ):
                yield simulator
        finally:
            await simulator.close()


@contextlib.asynccontextmanager
async def running_bridge(
    stack: Stack, *, registry: CollectorRegistry | None = None
) -> AsyncIterator[Bridge]:
    async with open_bridge(
        stack.settings,
        stack.client,
        registry=registry or stack.registry,
        gateway_secret=GATEWAY_SECRET,
    ) as bridge:
        runner = asyncio.create_task(bridge.run())
        stack.bridges.append(bridge)
        try:
            await asyncio.wait_for(bridge.assigned.wait(), timeout=30)
            yield bridge
        finally:
            bridge.stop()
            await runner


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- workflows on the time-skipping server ---------------------------------------------------


class SignalEmitter:
    """Delivers the simulated gateway's callbacks straight to the workflow as signals: the
    stand-in for Kafka and the bridge in time-skipping tests (the real path is covered by
    the end-to-end tests)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def emit(self, callback: GatewayCallback) -> None:
        handle = self.client.get_workflow_handle(payment_workflow_id(callback.payment_id))
        await handle.signal("gateway_callback", GatewayCallbackSignal(callback=callback))


@dataclass
class Harness:
    """A worker of the real workflows and activities on the time-skipping server; only
    ``publish_outcome`` (Kafka) is replaced, by a fake that records the outcomes."""

    client: Client
    task_queue: str
    ledger: Ledger
    gateway: SimulatedGateway
    notifications: NotificationSink
    outcomes: list[PaymentOutcome]

    async def start(self, payment: PaymentCreated, **timers: Any) -> WorkflowHandle[Any, Any]:
        return await self.client.start_workflow(
            "PaymentWorkflow",
            PaymentWorkflowInput(payment=payment, **timers),
            id=payment_workflow_id(payment.payment_id),
            task_queue=self.task_queue,
            result_type=PaymentOutcome,
        )

    async def run(self, payment: PaymentCreated, **timers: Any) -> PaymentOutcome:
        handle = await self.start(payment, **timers)
        outcome: PaymentOutcome = await handle.result()
        return outcome

    async def state(self, payment: PaymentCreated) -> PaymentState:
        handle = self.client.get_workflow_handle(payment_workflow_id(payment.payment_id))
        state: PaymentState = await handle.query("status", result_type=PaymentState)
        return state

    async def wait_for(
        self, payment: PaymentCreated, phase: PaymentPhase, *, step: str | None = None
    ) -> PaymentState:
        """Poll the ``status`` query until the payment is in ``phase`` (and took ``step``)."""
        for _ in range(600):
            try:
                state = await self.state(payment)
            except RPCError:
                state = None
            if (
                state is not None
                and state.status == phase
                and (step is None or any(s.name == step for s in state.steps))
            ):
                return state
            await asyncio.sleep(0.05)
        raise AssertionError(f"{payment.payment_id} never reached {phase} ({state})")


def activity_name(fn: Callable[..., Any]) -> str:
    defn = _ActivityDefinition.from_callable(fn)
    assert defn is not None and defn.name is not None
    return defn.name


@contextlib.asynccontextmanager
async def time_skipping_worker(
    client: Client,
    ledger: Ledger,
    *,
    gateway: GatewayBehaviour | None = None,
    fakes: Sequence[Callable[..., Any]] = (),
    task_queue: str | None = None,
) -> AsyncIterator[Harness]:
    """The workflows on a fresh task queue; ``fakes`` replace real activities of the same
    name. The default gateway approves at once (a callback sent before the request returns,
    so no real time passes while the server skips time)."""
    outcomes: list[PaymentOutcome] = []

    @activity.defn(name="publish_outcome")
    async def publish_outcome(input: PublishOutcomeInput) -> None:
        outcomes.append(input.outcome)

    notifications = NotificationSink()
    simulator = SimulatedGateway(
        gateway or GatewayBehaviour(latency=0), emitter=SignalEmitter(client), secret=GATEWAY_SECRET
    )
    replaced = {activity_name(fake) for fake in [publish_outcome, *fakes]}
    real = activities(ledger=ledger, gateway=simulator, notifications=notifications, outcomes=None)
    task_queue = task_queue or f"ts-{uuid.uuid4().hex[:10]}"
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        async with (
            Worker(
                client,
                task_queue=task_queue,
                workflows=WORKFLOWS,
                activities=[
                    *(fn for fn in real if activity_name(fn) not in replaced),
                    publish_outcome,
                    *fakes,
                ],
                activity_executor=executor,
            ),
            fraud_worker(client, task_queue=task_queue, executor=executor),
        ):
            yield Harness(client, task_queue, ledger, simulator, notifications, outcomes)
    await simulator.close()
