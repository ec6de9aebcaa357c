"""Stand-ins at the bridge's client boundaries, for tests that choose the interleaving.

- :class:`StandInTemporal` is the part of ``temporalio.client.Client`` the bridge uses, with
  Temporal's semantics (workflow runs, id reuse and conflict policies, signal-with-start,
  signal, describe). Every call waits until the test answers it: the test picks which pending
  call completes next, and whether it lands, fails before landing, or lands and loses its
  answer. A call abandoned by the bridge (cancelled) may still land, as on a real server.
- :class:`FakeGroupConsumer` is the part of ``AIOKafkaConsumer`` the bridge uses, with its
  semantics: positions, pauses that a new assignment clears, revoke/assign callbacks, commits
  that restart a new assignment. The test decides when a rebalance happens.
- :class:`RecordingSender` takes the DLQ writes.

They are for unit tests of the bridge's concurrency; end-to-end tests use the real servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

# -- Temporal ------------------------------------------------------------------------------


@dataclass
class Run:
    run_id: str
    input: Any
    status: WorkflowExecutionStatus = WorkflowExecutionStatus.RUNNING
    signals: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.status == WorkflowExecutionStatus.RUNNING

    def payment(self) -> Any:
        """The run's payment: its input's, or a ``payment_created`` signal's."""
        if getattr(self.input, "payment", None) is not None:
            return self.input.payment
        for name, arg in self.signals:
            if name == "payment_created":
                return arg.payment
        return None


def event_id_of(arg: Any) -> str | None:
    """The Kafka event a start or signal argument carries."""
    if arg is None:
        return None
    for path in (("callback", "event_id"), ("payment", "event_id"), ("event_id",)):
        value = arg
        for name in path:
            value = getattr(value, name, None)
        if isinstance(value, str):
            return value
    return None


@dataclass
class Call:
    n: int
    kind: str  # signal_with_start | start | signal | describe
    workflow_id: str
    arg: Any = None
    signal: str | None = None
    signal_arg: Any = None
    reuse: WorkflowIDReusePolicy = WorkflowIDReusePolicy.ALLOW_DUPLICATE
    conflict: WorkflowIDConflictPolicy = WorkflowIDConflictPolicy.UNSPECIFIED
    future: asyncio.Future[Any] | None = None

    @property
    def event_ids(self) -> set[str]:
        return {e for e in (event_id_of(self.signal_arg), event_id_of(self.arg)) if e}


class _Response:
    def __init__(self, started: bool) -> None:
        self.started = started


class _StartedHandle:
    def __init__(self, workflow_id: str, run_id: str, started: bool) -> None:
        self.id = workflow_id
        self.run_id = run_id
        self._start_workflow_response = _Response(started)


@dataclass
class _Description:
    status: WorkflowExecutionStatus
    run_id: str


class _Handle:
    def __init__(self, temporal: StandInTemporal, workflow_id: str) -> None:
        self.temporal = temporal
        self.id = workflow_id

    async def signal(self, signal: str, arg: Any = None, **_: Any) -> None:
        await self.temporal._call(Call(0, "signal", self.id, signal=signal, signal_arg=arg))

    async def describe(self, **_: Any) -> _Description:
        result: _Description = await self.temporal._call(Call(0, "describe", self.id))
        return result


def rpc_error(status: RPCStatusCode, message: str = "stand-in") -> RPCError:
    return RPCError(message, status, b"")


class StandInTemporal:
    """Temporal at the client boundary; the test answers each call (see the module doc)."""

    def __init__(self, *, answer_at_once: bool = False) -> None:
        self.answer_at_once = answer_at_once
        self.runs: dict[str, list[Run]] = defaultdict(list)
        self.pending: list[Call] = []
        self.abandoned: list[Call] = []
        self.answered: list[tuple[Call, str]] = []
        # Event ids whose effect exists: delivered to a run, or refused because the
        # payment had completed (a late callback, a replayed payment).
        self.resolved: set[str] = set()
        self.closed_refused: set[str] = set()
        self.service_client = self
        self._numbers = itertools.count(1)
        self._run_ids = itertools.count(1)
        self.fail_next: list[RPCError] = []  # errors the next answers raise instead of landing

    # the client API ------------------------------------------------------------------------

    async def check_health(self, **_: Any) -> bool:
        return True

    async def start_workflow(
        self,
        workflow: Any,
        arg: Any = None,
        *,
        id: str,
        task_queue: str,
        id_reuse_policy: WorkflowIDReusePolicy = WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy: WorkflowIDConflictPolicy = WorkflowIDConflictPolicy.UNSPECIFIED,
        start_signal: str | None = None,
        start_signal_args: Sequence[Any] = (),
        **_: Any,
    ) -> Any:
        call = Call(
            0,
            "signal_with_start" if start_signal else "start",
            id,
            arg=arg,
            signal=start_signal,
            signal_arg=start_signal_args[0] if start_signal_args else None,
            reuse=id_reuse_policy,
            conflict=id_conflict_policy,
        )
        return await self._call(call)

    def get_workflow_handle(self, workflow_id: str, **_: Any) -> _Handle:
        return _Handle(self, workflow_id)

    # answering -----------------------------------------------------------------------------

    async def _call(self, call: Call) -> Any:
        call.n = next(self._numbers)
        call.future = asyncio.get_running_loop().create_future()
        self.pending.append(call)
        if self.answer_at_once:
            self.answer(call)
        try:
            return await call.future
        except asyncio.CancelledError:
            if call in self.pending:  # the bridge gave up on it: it may still land
                self.pending.remove(call)
                self.abandoned.append(call)
            raise

    def answer(self, call: Call, how: str = "lands") -> None:
        """``lands``: applied, answered; ``unavailable``: refused before landing;
        ``lost``: applied, but the answer is an UNAVAILABLE error."""
        self.pending.remove(call)
        assert call.future is not None
        if how == "unavailable":
            self.answered.append((call, how))
            call.future.set_exception(rpc_error(RPCStatusCode.UNAVAILABLE))
            return
        if self.fail_next:
            self.answered.append((call, "error"))
            call.future.set_exception(self.fail_next.pop(0))
            return
        try:
            result = self._apply(call)
        except BaseException as exc:
            self.answered.append((call, type(exc).__name__))
            call.future.set_exception(exc)
            return
        self.answered.append((call, how))
        if how == "lost":
            call.future.set_exception(rpc_error(RPCStatusCode.UNAVAILABLE, "answer lost"))
        else:
            call.future.set_result(result)

    def land_abandoned(self, land: bool) -> None:
        """What became of the calls the bridge abandoned: landed on the server, or not."""
        for call in self.abandoned:
            if land:
                with contextlib.suppress(RPCError, WorkflowAlreadyStartedError):
                    self._apply(call)
        self.abandoned.clear()

    def latest(self, workflow_id: str) -> Run | None:
        runs = self.runs.get(workflow_id)
        return runs[-1] if runs else None

    def _new_run(self, call: Call) -> Run:
        run = Run(f"run-{next(self._run_ids)}", call.arg)
        self.runs[call.workflow_id].append(run)
        return run

    def _deliver(self, run: Run, call: Call) -> None:
        assert call.signal is not None
        run.signals.append((call.signal, call.signal_arg))
        self.resolved |= call.event_ids

    def _refuse_closed(self, call: Call) -> None:
        self.resolved |= call.event_ids
        self.closed_refused |= call.event_ids
        raise WorkflowAlreadyStartedError(call.workflow_id, "PaymentWorkflow")

    def _apply(self, call: Call) -> Any:
        latest = self.latest(call.workflow_id)
        if call.kind == "signal_with_start":
            if latest is not None and latest.running:
                self._deliver(latest, call)
                return _StartedHandle(call.workflow_id, latest.run_id, started=False)
            if latest is not None and not self._reusable(latest, call.reuse):
                self._refuse_closed(call)
            run = self._new_run(call)
            self._deliver(run, call)
            return _StartedHandle(call.workflow_id, run.run_id, started=True)
        if call.kind == "start":
            if latest is not None and latest.running:
                self.resolved |= call.event_ids
                raise WorkflowAlreadyStartedError(call.workflow_id, "PaymentWorkflow")
            if latest is not None and not self._reusable(latest, call.reuse):
                self._refuse_closed(call)
            run = self._new_run(call)
            self.resolved |= call.event_ids
            return _StartedHandle(call.workflow_id, run.run_id, started=True)
        if call.kind == "signal":
            if latest is None or not latest.running:
                if latest is not None and latest.status == WorkflowExecutionStatus.COMPLETED:
                    self.resolved |= call.event_ids
                    self.closed_refused |= call.event_ids
                raise rpc_error(RPCStatusCode.NOT_FOUND, "workflow not found")
            self._deliver(latest, call)
            return None
        if call.kind == "describe":
            if latest is None:
                raise rpc_error(RPCStatusCode.NOT_FOUND, "workflow not found")
            return _Description(latest.status, latest.run_id)
        raise AssertionError(call.kind)

    @staticmethod
    def _reusable(closed: Run, policy: WorkflowIDReusePolicy) -> bool:
        if policy == WorkflowIDReusePolicy.REJECT_DUPLICATE:
            return False
        if policy == WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY:
            return closed.status != WorkflowExecutionStatus.COMPLETED
        return True

    # the worker's side ------------------------------------------------------------------

    def finish(self, workflow_id: str) -> list[tuple[str, Any]] | None:
        """The worker ends the running run: Completed if it has its payment; otherwise it is an
        orphan, Failed, and its held signals (returned) go to the DLQ."""
        run = self.latest(workflow_id)
        if run is None or not run.running:
            return None
        if run.payment() is not None:
            run.status = WorkflowExecutionStatus.COMPLETED
            return None
        run.status = WorkflowExecutionStatus.FAILED
        return list(run.signals)


# -- Kafka ---------------------------------------------------------------------------------


class FakeGroupConsumer:
    """One member of a consumer group that owns every partition of its topics."""

    def __init__(self, partitions: int = 2) -> None:
        self.partitions = partitions
        self.log: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
        self.committed: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.topics: list[str] = []
        self.listener: Any = None
        self._assignment: set[TopicPartition] = set()
        self._position: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self.fail_commits: list[BaseException] = []
        self.hang_commits = False
        # Partitions a pause does not reach, as one assigned while the poll was waiting.
        self.unpausable: set[TopicPartition] = set()

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]] = (),
    ) -> ConsumerRecord[bytes, bytes]:
        partition = hash(key) % self.partitions if key is not None else 0
        tp = TopicPartition(topic, partition)
        offset = len(self.log[tp])
        record = ConsumerRecord(
            topic, partition, offset, 1_700_000_000_000, 0, key, value, None, 0, 0, tuple(headers)
        )
        self.log[tp].append(record)
        return record

    def subscribe(self, topics: Sequence[str], listener: Any = None) -> None:
        self.topics = list(topics)
        self.listener = listener

    def all_partitions(self) -> set[TopicPartition]:
        return {TopicPartition(t, p) for t in self.topics for p in range(self.partitions)}

    async def assign(self) -> None:
        """A new generation: fresh positions (from the committed offsets), nothing paused."""
        self._assignment = self.all_partitions()
        self._position = {tp: self.committed.get(tp, 0) for tp in self._assignment}
        self._paused = set()
        if self.listener is not None:
            await self.listener.on_partitions_assigned(set(self._assignment))

    async def revoke(self) -> None:
        revoked, self._assignment = set(self._assignment), set()
        if self.listener is not None:
            await self.listener.on_partitions_revoked(revoked)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused |= (set(partitions) & self._assignment) - self.unpausable

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused -= set(partitions)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        await asyncio.sleep(0)
        left = max_records if max_records is not None else 1 << 30
        out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for tp in sorted(self._assignment - self._paused):
            position = self._position[tp]
            records = self.log[tp][position : position + left]
            if records:
                out[tp] = records
                self._position[tp] = position + len(records)
                left -= len(records)
            if left <= 0:
                break
        return out

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.hang_commits:
            await asyncio.Event().wait()
        if self.fail_commits:
            raise self.fail_commits.pop(0)
        plain = {
            tp: meta.offset if hasattr(meta, "offset") else meta for tp, meta in offsets.items()
        }
        self.commits.append(plain)
        self.committed.update(plain)

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.log[tp])

    def end_offsets(self) -> dict[TopicPartition, int]:
        return {tp: len(records) for tp, records in self.log.items()}


class RecordingSender:
    """A ``RecordSender`` that keeps what the DLQ writer sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        await asyncio.sleep(0)
        self.sent.append((topic, key, value, list(headers or [])))

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    async def flush(self) -> None:
        pass

    def headers_of(self, n: int) -> dict[str, bytes]:
        return dict(self.sent[n][3])
