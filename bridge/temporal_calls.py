"""Calls into Temporal made by the bridge, with back-off while Temporal is unavailable.

Every record is applied with one call, signal-with-start on ``payment-{payment_id}``:
Temporal starts the workflow and delivers the signal atomically, or delivers it to the run
that exists. The id reuse policy ``ALLOW_DUPLICATE_FAILED_ONLY`` keeps a completed payment
closed for good (a replay is refused: ``deduplicated`` / ``closed``), while a run that ended
Failed (a run started by an early callback whose payment never came) does not block the
payment when it comes later.

Whether a failure is retried is decided by its gRPC status, never by its message:
unavailability and overload are retried for as long as they last (a record is never
dead-lettered because Temporal is down), and so is misconfiguration (wrong namespace,
credentials), loudly and with ``/readyz`` failing, so that fixing the configuration resumes
the flow. Only a request Temporal rejects as invalid is not retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal, TypeVar

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from bridge.metrics import BridgeMetrics
from plumbing.temporal import Backoff
from schemas.errors import TemporalRejected
from schemas.workflow_api import PAYMENT_WORKFLOW

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.INTERNAL,
        RPCStatusCode.UNKNOWN,
        RPCStatusCode.CANCELLED,
    }
)
# Misconfiguration: retried too, loudly, with /readyz failing, so that fixing the configuration
# resumes the flow instead of having dead-lettered every record meanwhile. Signal-with-start
# never answers NOT_FOUND for a workflow: NOT_FOUND is the namespace, and FAILED_PRECONDITION
# a namespace that is not active (e.g. its other cluster is the active one).
CONFIGURATION = frozenset(
    {
        RPCStatusCode.PERMISSION_DENIED,
        RPCStatusCode.UNAUTHENTICATED,
        RPCStatusCode.UNIMPLEMENTED,
        RPCStatusCode.NOT_FOUND,
        RPCStatusCode.FAILED_PRECONDITION,
    }
)
# A retried error is logged at most this often (each retry is counted in the metrics).
LOG_EVERY_SECONDS = 10.0

Applied = Literal["started", "existing", "closed"]


def signal_with_start_started(handle: WorkflowHandle[Any, Any]) -> bool | None:
    """Whether the signal-with-start that returned ``handle`` started a new run.

    temporalio 1.35 keeps the server's answer (``SignalWithStartWorkflowExecutionResponse``,
    field ``started``) only in a private attribute of the handle; ``first_execution_run_id``
    does not tell the two cases apart. None if the SDK no longer has it:
    tests/test_temporal_calls.py pins this on the dev server (the time-skipping test server
    always answers False).
    """
    response = getattr(handle, "_start_workflow_response", None)
    started = getattr(response, "started", None)
    return started if isinstance(started, bool) else None


class TemporalCalls:
    """Signal-with-start payment workflows, retrying while Temporal cannot answer."""

    def __init__(
        self,
        client: Client,
        *,
        task_queue: str,
        metrics: BridgeMetrics,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.client = client
        self.task_queue = task_queue
        self.metrics = metrics
        self._backoff = backoff
        # The configuration error Temporal last answered, until a call succeeds again.
        self.misconfigured: str | None = None
        self._logged: dict[RPCStatusCode, float] = {}
        self._started_unknown_logged = False

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        backoff = self._backoff()
        while True:
            try:
                result = await call()
            except RPCError as exc:
                if exc.status == RPCStatusCode.INVALID_ARGUMENT:
                    raise TemporalRejected(f"Temporal rejected {what}: {exc.message}") from exc
                if exc.status not in RETRYABLE and exc.status not in CONFIGURATION:
                    raise
                delay = backoff.next_delay()
                self.metrics.temporal_retries.labels(reason=exc.status.name.lower()).inc()
                if exc.status in CONFIGURATION:
                    self.misconfigured = f"{exc.status.name}: {exc.message}"
                self._log_retry(what, exc, delay)
                await asyncio.sleep(delay)
                continue
            self.misconfigured = None
            return result

    def _log_retry(self, what: str, exc: RPCError, delay: float) -> None:
        now = time.monotonic()
        if now - self._logged.get(exc.status, -LOG_EVERY_SECONDS) < LOG_EVERY_SECONDS:
            return
        self._logged[exc.status] = now
        if exc.status in CONFIGURATION:
            log.error(
                "%s: Temporal answered %s (%s): check TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE and "
                "the credentials; retrying every record until it works (retrying in %.1fs)",
                what,
                exc.status.name,
                exc.message,
                delay,
            )
        else:
            log.warning(
                "%s: Temporal answered %s (%s); retrying in %.1fs",
                what,
                exc.status.name,
                exc.message,
                delay,
            )

    async def signal_with_start(
        self, workflow_id: str, *, workflow_input: Any, signal: str, arg: Any
    ) -> Applied:
        """Start ``workflow_id`` with ``signal``, or signal the run that exists.

        ``started``: a new run, with the signal; ``existing``: the signal reached the running
        run; ``closed``: the workflow completed before (nothing was signalled).
        """

        async def call() -> Applied:
            try:
                handle = await self.client.start_workflow(
                    PAYMENT_WORKFLOW,
                    workflow_input,
                    id=workflow_id,
                    task_queue=self.task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                    start_signal=signal,
                    start_signal_args=[arg],
                )
            except WorkflowAlreadyStartedError:
                return "closed"
            started = signal_with_start_started(handle)
            if started is None and not self._started_unknown_logged:
                self._started_unknown_logged = True
                log.warning(
                    "this temporalio does not say whether signal-with-start started a run: "
                    "the started/deduplicated metrics will be wrong"
                )
            return "started" if started else "existing"

        return await self._retrying(f"{signal} to {workflow_id}", call)

    async def reachable(self) -> bool:
        """Temporal answers, and the last call was not refused for its configuration."""
        if self.misconfigured is not None:
            return False
        try:
            return await self.client.service_client.check_health(timeout=timedelta(seconds=2))
        except RPCError:
            return False
