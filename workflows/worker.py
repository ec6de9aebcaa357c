"""The Temporal worker: the payment workflows and their activities on ``payments``, the fraud
check on its own queue, and ``paybridge worker``'s process (``run_worker``)."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from plumbing.health import MetricsServer
from plumbing.process import until_signalled
from plumbing.settings import Settings
from plumbing.temporal import connect_with_retry, sdk_metrics_runtime
from workflows.activities.fraud import FraudActivities
from workflows.activities.gateway import GatewayActivities
from workflows.activities.kafka import OrphanActivities, OutcomeActivities, kafka_io
from workflows.activities.ledger import LedgerActivities
from workflows.activities.notifications import NotificationActivities
from workflows.fraud import FraudCheckWorkflow, fraud_task_queue
from workflows.metrics import WorkerMetrics
from workflows.payment import PaymentWorkflow
from workflows.recurring import RecurringPaymentWorkflow
from workflows.simulations.gateway import CallbackEmitter, GatewayBehaviour, SimulatedGateway
from workflows.simulations.ledger import Ledger
from workflows.simulations.notifications import NotificationSink

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
        "schemas.errors",
        "schemas.events",
        "schemas.currencies",
        "schemas.ids",
        "schemas.workflow_api",
        "workflows.models",
    )
)


def activities(
    *,
    ledger: Ledger,
    gateway: SimulatedGateway,
    notifications: NotificationSink,
    outcomes: OutcomeActivities | None,
    orphans: OrphanActivities | None = None,
) -> list[Callable[..., Any]]:
    """The activities of the payments task queue, bound to their clients (``outcomes`` or
    ``orphans`` None: left out, for tests that register their own ``publish_outcome`` or
    ``dead_letter_orphan``)."""
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
    if orphans is not None:
        found.append(orphans.dead_letter_orphan)
    return found


@contextlib.asynccontextmanager
async def open_worker(
    client: Client,
    *,
    task_queue: str,
    ledger: Ledger,
    outcomes: OutcomeActivities | None,
    gateway: SimulatedGateway | None = None,
    notifications: NotificationSink | None = None,
    extra_activities: Sequence[Callable[..., Any]] = (),
    orphans: OrphanActivities | None = None,
) -> AsyncIterator[Worker]:
    """A running worker; on exit it finishes its tasks and stops polling.

    ``outcomes`` publishes the outcomes (None: a test registers its own ``publish_outcome`` in
    ``extra_activities``). Without ``gateway`` the simulated gateway accepts authorisation
    requests and sends no callbacks: callbacks then come only from producers of the callbacks
    topic. ``orphans`` dead-letters what a run whose payment never came held (None: a test
    registers its own ``dead_letter_orphan``, or has no such runs).
    """
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
                    outcomes=outcomes,
                    orphans=orphans,
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


def simulated_gateway(
    settings: Settings, emitter: CallbackEmitter | None, *, secret: str, callbacks: bool = True
) -> SimulatedGateway:
    """The gateway of ``paybridge dev`` and ``paybridge worker``: ratios and latency from
    ``PAYBRIDGE_SIM_*``, callbacks signed with ``secret`` and handed to ``emitter``."""
    behaviour = GatewayBehaviour(
        approve=settings.sim_approve,
        decline=settings.sim_decline,
        error=settings.sim_error,
        never=settings.sim_never_answer,
        latency=settings.sim_latency.total_seconds(),
        transient_errors=settings.sim_transient_errors,
        callbacks=callbacks,
    )
    return SimulatedGateway(behaviour, emitter=emitter, secret=secret)


async def run_worker(
    settings: Settings, *, ledger_path: Path, seed: bool, simulator: bool = True
) -> None:
    """``paybridge worker``: the worker with its ledger, simulated gateway and metrics server,
    until SIGINT or SIGTERM."""
    secret = settings.require_gateway_secret()  # callbacks are signed with it
    registry = CollectorRegistry()
    ledger = Ledger(ledger_path)
    if seed:
        ledger.seed()
    metrics = WorkerMetrics(registry)
    try:
        async with (
            until_signalled() as stop,
            MetricsServer(registry, host="0.0.0.0", port=settings.metrics_port),
        ):
            client = await connect_with_retry(settings, runtime=sdk_metrics_runtime(settings))
            async with kafka_io(settings, metrics=metrics) as kafka:
                gateway = simulated_gateway(
                    settings, kafka.callbacks, secret=secret, callbacks=simulator
                )
                try:
                    async with open_worker(
                        client,
                        task_queue=settings.temporal_task_queue,
                        ledger=ledger,
                        outcomes=kafka.outcomes,
                        gateway=gateway,
                        orphans=kafka.orphans,
                    ):
                        await stop.wait()
                finally:
                    await gateway.close()
    finally:
        ledger.close()
