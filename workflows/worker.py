"""The Temporal worker: registers the payment workflows and their activities on ``payments``."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from bridge.codec import Codec
from bridge.kafka import RecordSender
from bridge.metrics import WorkerMetrics
from workflows.activities import (
    FraudActivities,
    GatewayActivities,
    LedgerActivities,
    NotificationActivities,
    OutcomeActivities,
)
from workflows.fraud import FraudCheckWorkflow, fraud_task_queue
from workflows.gateway import SimulatedGateway
from workflows.ledger import Ledger
from workflows.notifications import NotificationSink
from workflows.payment import PaymentWorkflow
from workflows.recurring import RecurringPaymentWorkflow

# Workflows of the payments task queue; the fraud check has a queue of its own.
WORKFLOWS = [PaymentWorkflow, RecurringPaymentWorkflow]
FRAUD_WORKFLOWS = [FraudCheckWorkflow]

# Workflow activations are pure Python and share one GIL: hundreds of them in flight at once
# (the SDK's default) only make each slower, until workflow tasks outlive their 10 s timeout
# and are redone. Measured on 2 busy cores, 200 payments through the bridge: default 60-83 s
# with up to 17 timed-out and 234 over-5 s workflow tasks; 16 slots 68-73 s with none.
WORKFLOW_TASK_SLOTS = 16

# The sandbox re-imports every module a workflow uses for each run, unless passed through.
# pydantic (our models and the data converter) is deterministic and the costliest to import:
# passing it through cut the worker's CPU per payment from 159 ms to 67 ms (200 payments
# through the bridge, 2 cores), with the sandbox's checks still on for workflow code.
SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(
        "pydantic",
        "pydantic_core",
        "annotated_types",
        "bridge.events",
        "bridge.currencies",
        "workflows.shared",
    )
)


def activities(
    *,
    ledger: Ledger,
    gateway: SimulatedGateway,
    notifications: NotificationSink,
    outcomes: OutcomeActivities | None,
) -> list[Callable[..., Any]]:
    """The activities of the payments task queue, bound to their clients (``outcomes`` None:
    left out, for tests that register their own ``publish_outcome``)."""
    book = LedgerActivities(ledger)
    gate = GatewayActivities(gateway)
    found: list[Callable[..., Any]] = [
        book.validate_payment,
        book.debit_account,
        book.credit_back,
        gate.authorize_payment,
        gate.void_authorization,
        gate.query_gateway_status,
        NotificationActivities(notifications).notify_customer,
    ]
    if outcomes is not None:
        found.append(outcomes.publish_outcome)
    return found


@contextlib.asynccontextmanager
async def open_worker(
    client: Client,
    *,
    task_queue: str,
    ledger: Ledger,
    producer: RecordSender,
    outcomes_topic: str,
    metrics: WorkerMetrics | None = None,
    codec: Codec | None = None,
    gateway: SimulatedGateway | None = None,
    notifications: NotificationSink | None = None,
    extra_activities: Sequence[Callable[..., Any]] = (),
    outcome_reader: Callable[[], AIOKafkaConsumer] | None = None,
) -> AsyncIterator[Worker]:
    """A running worker; on exit it finishes its tasks and stops polling.

    Without ``gateway`` the simulated gateway accepts authorisation requests and sends no
    callbacks: callbacks then come only from producers of the callbacks topic.
    """
    outcome_activities = OutcomeActivities(
        producer,
        topic=outcomes_topic,
        codec=codec or Codec(),
        metrics=metrics,
        reader=outcome_reader,
    )
    gateway = gateway or SimulatedGateway()
    # Ledger calls are short blocking SQLite calls: a small thread pool runs them.
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        worker = Worker(
            client,
            task_queue=task_queue,
            workflows=WORKFLOWS,
            activities=[
                *activities(
                    ledger=ledger,
                    gateway=gateway,
                    notifications=notifications or NotificationSink(),
                    outcomes=outcome_activities,
                ),
                *extra_activities,
            ],
            activity_executor=executor,
            max_concurrent_workflow_tasks=WORKFLOW_TASK_SLOTS,
            workflow_runner=SANDBOX,
        )
        async with worker, fraud_worker(client, task_queue=task_queue, executor=executor):
            yield worker


def fraud_worker(
    client: Client, *, task_queue: str, executor: concurrent.futures.Executor
) -> Worker:
    """The fraud service's worker, on the fraud queue that goes with ``task_queue``."""
    return Worker(
        client,
        task_queue=fraud_task_queue(task_queue),
        workflows=FRAUD_WORKFLOWS,
        activities=[FraudActivities().score_fraud],
        activity_executor=executor,
        max_concurrent_workflow_tasks=WORKFLOW_TASK_SLOTS,
        workflow_runner=SANDBOX,
    )
