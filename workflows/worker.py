"""The Temporal worker: the payment workflows and their activities on ``payments``, the fraud
check on its own queue, and ``paybridge worker``'s process (``run_worker``).

On SIGTERM the worker stops polling and gives the activities in flight
``PAYBRIDGE_WORKER_SHUTDOWN_GRACE`` (default 30 s, as long as the longest activity timeout) to
finish before they are cancelled, so that a rolling deploy lets an outcome being published
reach the topic. Its ``/readyz`` answers 200 only once it has connected to Temporal and Kafka
and its workers are polling, and only while Temporal and Kafka answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import CodeType
from typing import Any

from prometheus_client import CollectorRegistry
from temporalio.client import Client
from temporalio.worker import Worker, WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from plumbing.health import MetricsServer
from plumbing.process import until_signalled
from plumbing.settings import DEFAULT_WORKER_SHUTDOWN_GRACE, Settings
from plumbing.temporal import connect_with_retry, sdk_metrics_runtime
from workflows.activities.fraud import FraudActivities
from workflows.activities.gateway import GatewayActivities
from workflows.activities.kafka import KafkaIO, OrphanActivities, OutcomeActivities, kafka_io
from workflows.activities.ledger import LedgerActivities
from workflows.activities.notifications import NotificationActivities
from workflows.fraud import FraudCheckWorkflow, fraud_task_queue
from workflows.metrics import WorkerMetrics
from workflows.payment import PaymentWorkflow
from workflows.recurring import RecurringPaymentWorkflow
from workflows.review_queue import manual_review_gauge
from workflows.simulations.gateway import (
    RETENTION_SECONDS,
    CallbackEmitter,
    GatewayBehaviour,
    SimulatedGateway,
)
from workflows.simulations.ledger import Ledger
from workflows.simulations.notifications import NotificationSink
from workflows.simulations.webhook import gateway_callbacks

log = logging.getLogger(__name__)

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


class _CompiledOnce(importlib.machinery.SourceFileLoader):
    """Loads a module of the ``workflows`` package from a code object compiled once per process.

    The sandbox runs each workflow in a fresh copy of its module: it imports the module again
    for every workflow run (and replay). Where Python writes no bytecode cache
    (``PYTHONDONTWRITEBYTECODE``, as on the development machines, or a read-only install
    without one), each of those imports compiled ``workflows/payment.py`` from source: 3.3 of
    the 5 ms a payment's two sandboxed instances cost to create. The module body still runs
    afresh in every sandbox, so the isolation is the same; only the compilation is shared.
    """

    _code: dict[str, CodeType] = {}

    def get_code(self, fullname: str) -> CodeType:
        code = self._code.get(self.path)
        if code is None:
            code = super().get_code(fullname)
            if code is None:  # a source loader always has code; keep mypy's Optional out
                raise ImportError(f"no code for {fullname}", name=fullname)
            self._code[self.path] = code
        return code


class _WorkflowModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the ``workflows`` package's modules with :class:`_CompiledOnce` as their loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: Any = None
    ) -> ModuleSpec | None:
        if fullname != "workflows" and not fullname.startswith("workflows."):
            return None
        found = None
        for finder in sys.meta_path:  # whoever finds it otherwise (path entries, editable installs)
            if finder is not self and hasattr(finder, "find_spec"):
                found = finder.find_spec(fullname, path, target)
                if found is not None:
                    break
        if found is None or not isinstance(found.loader, importlib.machinery.SourceFileLoader):
            return found
        return importlib.util.spec_from_file_location(
            fullname,
            found.origin,
            loader=_CompiledOnce(fullname, str(found.origin)),
            submodule_search_locations=found.submodule_search_locations,
        )


_FINDER = _WorkflowModuleFinder()


class WorkflowSandbox(SandboxedWorkflowRunner):
    """The SDK's sandbox, whose per-run re-import of a workflow module compiles it only once
    per process (see :class:`_CompiledOnce`)."""

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
        return super().create_instance(det)


SANDBOX = WorkflowSandbox(
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
    graceful_shutdown: timedelta = DEFAULT_WORKER_SHUTDOWN_GRACE,
    readiness: Readiness | None = None,
    orphans: OrphanActivities | None = None,
) -> AsyncIterator[Worker]:
    """A running worker; on exit it stops polling and gives the activities in flight
    ``graceful_shutdown`` to finish before cancelling them (both workers at once).

    ``outcomes`` publishes the outcomes (None: a test registers its own ``publish_outcome`` in
    ``extra_activities``). Without ``gateway`` the simulated gateway accepts authorisation
    requests and sends no callbacks: callbacks then come only from producers of the callbacks
    topic. ``readiness`` learns the workers, to report whether they poll. ``orphans``
    dead-letters what a run whose payment never came held (None: a test registers its own
    ``dead_letter_orphan``, or has no such runs).
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
            graceful_shutdown_timeout=graceful_shutdown,
        )
        fraud = fraud_worker(
            client, task_queue=task_queue, executor=executor, graceful_shutdown=graceful_shutdown
        )
        async with worker, fraud:
            if readiness is not None:
                readiness.workers = [worker, fraud]
            try:
                yield worker
            finally:
                # Both drain at once: leaving the blocks one after the other would add up
                # their grace periods.
                await asyncio.gather(worker.shutdown(), fraud.shutdown())


def fraud_worker(
    client: Client,
    *,
    task_queue: str,
    executor: concurrent.futures.Executor,
    graceful_shutdown: timedelta = DEFAULT_WORKER_SHUTDOWN_GRACE,
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
        graceful_shutdown_timeout=graceful_shutdown,
    )


class Readiness:
    """What the worker's ``/readyz`` checks: connected to Temporal (and it answers), connected
    to Kafka (and it answers), and its workers polling. Each part is filled in as start-up
    reaches it, so that the checks fail, by name, until then."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.kafka: KafkaIO | None = None
        self.workers: list[Worker] = []

    def register(self, server: MetricsServer) -> None:
        server.add_check("temporal", self.temporal)
        server.add_check("kafka", self.kafka_reachable)
        server.add_check("polling", self.polling)

    async def temporal(self) -> bool:
        if self.client is None:
            return False
        return await self.client.service_client.check_health(timeout=timedelta(seconds=2))

    async def kafka_reachable(self) -> bool:
        return self.kafka is not None and await self.kafka.reachable()

    async def polling(self) -> bool:
        return bool(self.workers) and all(worker.is_running for worker in self.workers)


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
    # A stale payment asks for its status after its callback timeout and stale-retry delay.
    waits = settings.callback_timeout + settings.stale_retry_delay
    retention = RETENTION_SECONDS + waits.total_seconds()
    return SimulatedGateway(behaviour, emitter=emitter, secret=secret, retention=retention)


async def run_worker(
    settings: Settings, *, ledger_path: Path, seed: bool, simulator: bool = True
) -> None:
    """``paybridge worker``: the worker with its ledger, simulated gateway and metrics server,
    until SIGINT or SIGTERM. A signal while it is still connecting stops it at once; once it
    polls, it drains (``PAYBRIDGE_WORKER_SHUTDOWN_GRACE``) and exits."""
    secret = settings.require_gateway_secret()  # callbacks are signed with it
    registry = CollectorRegistry()
    ledger = Ledger(ledger_path)
    if seed:
        ledger.seed()
    metrics = WorkerMetrics(registry)
    readiness = Readiness()

    async def serve(stop: asyncio.Event) -> None:
        client = await connect_with_retry(settings, runtime=sdk_metrics_runtime(settings))
        readiness.client = client
        async with (
            kafka_io(settings, metrics=metrics) as kafka,
            gateway_callbacks(settings, kafka.callbacks, secret=secret) as emitter,
            manual_review_gauge(client, registry, task_queue=settings.temporal_task_queue),
        ):
            readiness.kafka = kafka
            gateway = simulated_gateway(settings, emitter, secret=secret, callbacks=simulator)
            try:
                async with open_worker(
                    client,
                    task_queue=settings.temporal_task_queue,
                    ledger=ledger,
                    outcomes=kafka.outcomes,
                    gateway=gateway,
                    graceful_shutdown=settings.worker_shutdown_grace,
                    readiness=readiness,
                    orphans=kafka.orphans,
                ):
                    log.info("worker polling task queue %s", settings.temporal_task_queue)
                    await stop.wait()
                    log.info(
                        "stopping: activities in flight get up to %s to finish",
                        settings.worker_shutdown_grace,
                    )
            finally:
                await gateway.close()

    try:
        async with (
            until_signalled() as stop,
            MetricsServer(registry, host="0.0.0.0", port=settings.metrics_port) as server,
        ):
            readiness.register(server)
            serving = asyncio.create_task(serve(stop))
            stopped = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not serving.done() and not readiness.workers:
                    serving.cancel()  # still connecting: nothing is in flight yet
                await asyncio.wait({serving})
            finally:
                stopped.cancel()
                if not serving.done():  # this coroutine itself was cancelled
                    serving.cancel()
                    await asyncio.wait({serving})
            if not serving.cancelled():
                serving.result()  # a worker that failed ends the process, with its error
    finally:
        ledger.close()
