"""Calls into Temporal made by the bridge, with back-off while Temporal is unavailable.

Whether a failure is retried is decided by its gRPC status, never by its message: unavailability
and overload are retried for as long as they last (a record is never dead-lettered because
Temporal is down); a request Temporal rejects as invalid is not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from bridge.metrics import BridgeMetrics
from plumbing.temporal import Backoff
from schemas.errors import TemporalRejected
from schemas.events import PaymentCreated
from schemas.ids import payment_workflow_id

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
# Misconfiguration (wrong namespace, credentials): retried too, loudly, so that fixing the
# configuration resumes the flow instead of having dead-lettered every record meanwhile.
CONFIGURATION = frozenset(
    {RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.UNIMPLEMENTED}
)


class TemporalCalls:
    """Start and signal payment workflows, retrying while Temporal cannot answer."""

    def __init__(
        self,
        client: Client,
        *,
        task_queue: str,
        metrics: BridgeMetrics,
        on_unavailable: Callable[[bool], None] | None = None,
    ) -> None:
        self.client = client
        self.task_queue = task_queue
        self.metrics = metrics
        self._on_unavailable = on_unavailable

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        backoff = Backoff()
        while True:
            try:
                result = await call()
            except RPCError as exc:
                if exc.status == RPCStatusCode.INVALID_ARGUMENT:
                    raise TemporalRejected(f"Temporal rejected {what}: {exc.message}") from exc
                if exc.status not in RETRYABLE and exc.status not in CONFIGURATION:
                    raise
                level = logging.ERROR if exc.status in CONFIGURATION else logging.WARNING
                delay = backoff.next_delay()
                log.log(
                    level,
                    "%s: Temporal answered %s (%s); retrying in %.1fs",
                    what,
                    exc.status.name,
                    exc.message,
                    delay,
                )
                self.metrics.temporal_retries.labels(reason=exc.status.name.lower()).inc()
                if self._on_unavailable is not None:
                    self._on_unavailable(True)
                await asyncio.sleep(delay)
                continue
            if backoff.attempt and self._on_unavailable is not None:
                self._on_unavailable(False)
            return result

    async def start_payment(self, event: PaymentCreated, *, workflow_input: Any) -> str:
        """Start ``payment-{payment_id}``; ``started`` or ``deduplicated`` if it already exists."""
        workflow_id = payment_workflow_id(event.payment_id)

        async def start() -> str:
            try:
                await self.client.start_workflow(
                    "PaymentWorkflow",
                    workflow_input,
                    id=workflow_id,
                    task_queue=self.task_queue,
                    # A payment id is used once, ever: a replay after the first run completed
                    # must not start a second one.
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                )
            except WorkflowAlreadyStartedError:
                return "deduplicated"
            return "started"

        try:
            result = await self._retrying(f"start {workflow_id}", start)
        except Exception:
            self.metrics.workflow_starts.labels(result="error").inc()
            raise
        self.metrics.workflow_starts.labels(result=result).inc()
        return result

    async def signal(self, workflow_id: str, signal: str, arg: Any) -> str:
        """Signal a workflow: ``signalled``, ``closed`` (it already ended) or ``not_found``."""
        handle: WorkflowHandle[Any, Any] = self.client.get_workflow_handle(workflow_id)

        async def send() -> str:
            try:
                await handle.signal(signal, arg)
                return "signalled"
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
            try:
                await handle.describe()
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    return "not_found"
                raise
            return "closed"

        result = await self._retrying(f"signal {signal} to {workflow_id}", send)
        self.metrics.signals.labels(signal=signal, result=result).inc()
        return result

    async def reachable(self) -> bool:
        try:
            return await self.client.service_client.check_health(timeout=timedelta(seconds=2))
        except RPCError:
            return False
