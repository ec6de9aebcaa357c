"""Cost benchmark: CPU, history events, workflow tasks and Temporal Cloud actions per payment.

    .venv/bin/python benchmarks/cost.py                      # 400 payments + 100 per outcome type
    .venv/bin/python benchmarks/cost.py --count 400 --data-dir /tmp/cost-db   # Temporal on SQLite
    .venv/bin/python benchmarks/cost.py --mode dev           # the "outside check" (see below)

**Stack mode** (default). Every server and paybridge component is its own OS process, so each
one's CPU time can be read from ``/proc/<pid>/stat`` (utime + stime of the process and of all
its descendants, plus their reaped children) before and after each measured window:

- the Temporal dev server (``temporal server start-dev``, in memory; ``--data-dir``: SQLite),
- the Kafka-protocol broker (``noida-db``),
- ``paybridge bridge`` and ``paybridge worker --seed-demo-accounts`` (the bridge path),
- a second worker for the **Temporal-only path**, on its own task queue, started by this script
  (``--direct-worker``): the same workflows, activities and simulated gateway, except that the
  gateway delivers its callbacks straight to the workflow as signals (as the time-skipping tests
  do) instead of through Kafka and the bridge. Its payments are started by this process with the
  bridge's own start call (``build_routes(...)[payments].apply``, as benchmarks/e2e.py's
  Temporal-only ceiling does) and its cancels with the bridge's cancel route, so no Kafka and
  no bridge are on the way in. The outcome is still published to Kafka by the saga's own
  ``publish_outcome`` activity (it is part of the workflow), and read from there.
- this process (the driver: load generator, outcome reader, and the SDK starter of the
  Temporal-only path) is measured too, and reported apart from the system's total.

For each path it runs (after a warm-up) one *mixed* run of ``--count`` payments with the load
generator's realistic mix (``tools.load.mix``; ``--mix``), then, unless ``--per-type 0``, one
homogeneous run per outcome type (forced with the mix machinery: gateway ``decline`` ->
FAILED, unknown account -> REJECTED, a cancel right behind the payment -> CANCELLED, a gateway
that never answers -> TIMED_OUT after ``--callback-timeout``), alternating the two paths. A
window ends when every outcome is in *and* no workflow of the run is still running (the last
workflow task comes after the outcome is published). CPU per payment = CPU of the window /
completed payments. The idle CPU of each process (a quiet window before the runs) is reported
too, so a reader can see how much of a slow-paced window is idle cost.

After the windows, the histories of every payment workflow and of its fraud child workflow
are fetched with the Temporal client and counted: events by type, workflow tasks, and Temporal
Cloud actions by the rules of :data:`ACTION_RULES` (see :func:`count_actions`; source:
https://docs.temporal.io/cloud/actions). As a cross-check, the Temporal server's own ``action``
counter (the OSS server's estimate of Cloud actions, scraped from its /metrics) is read before
and after each window.

**Dev mode** (``--mode dev``): the issue's outside check. Runs ``paybridge dev`` (on free,
non-default ports) and ``paybridge loadgen --count N`` against it, and reports the CPU time of
the dev process and its children (Temporal, broker) per completed payment.

Research knobs: ``--profile-worker DIR`` runs py-spy (GIL samples) on the bridge path's worker
(raw stacks of the mixed run, an SVG of the SUCCEEDED run); ``--direct-runner unsandboxed``
(or ``fraud-unsandboxed``) gives the Temporal-only worker another workflow runner, to measure
the sandbox's share side by side with the real worker. Per-thread CPU of the paybridge
processes (Python threads vs the SDK core's Rust threads) is in every result.

Results: ``benchmarks/results/cost-<label>.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
BIN = Path(sys.executable).parent
PAYBRIDGE = str(BIN / "paybridge")
HOST = "127.0.0.1"
RESULTS = REPO / "benchmarks" / "results"
GATEWAY_SECRET = "cost-benchmark-secret"
DIRECT_QUEUE_SUFFIX = "-direct"

CLOUD_ACTIONS_URL = "https://docs.temporal.io/cloud/actions"
SERVER_ACTION_METRIC = (
    "https://github.com/temporalio/temporal/blob/main/common/rpc/interceptor/telemetry.go "
    "(emitActionMetric: the OSS server's `action` counter, its estimate of Cloud actions)"
)

log = logging.getLogger("cost")


# =============================================================================================
# Temporal Cloud actions, from a workflow's history
# =============================================================================================


@dataclass(frozen=True)
class ActionRule:
    """One line of Temporal Cloud's action table, as it shows in an event history."""

    usage_name: str  # Temporal Cloud's "Usage Name"
    event: str  # history event type (EVENT_TYPE_ prefix left off)
    counts: str  # how many actions, in words


# The rules of https://docs.temporal.io/cloud/actions (its tables "Usage Name / Metric Name /
# History Event Type"), restricted to what can appear in an event history. count_actions()
# implements exactly this table; every key it returns is a usage_name below.
ACTION_RULES: tuple[ActionRule, ...] = (
    ActionRule(
        "Start Workflow",
        "WORKFLOW_EXECUTION_STARTED",
        "1 per execution started: client start, continue-as-new, and the start of a child "
        "(de-duplicated starts are not recorded, so cost nothing)",
    ),
    ActionRule(
        "Start Child Workflow",
        "START_CHILD_WORKFLOW_EXECUTION_INITIATED",
        "1 in the parent (the durable intent); with the child's own WORKFLOW_EXECUTION_STARTED "
        "(the attempt) a child costs the 2 actions the docs give it",
    ),
    ActionRule("Signal Workflow", "WORKFLOW_EXECUTION_SIGNALED", "1 per signal received"),
    ActionRule(
        "Start Timer",
        "TIMER_STARTED",
        "1, including the SDK's implicit timers (workflow.wait_condition with a timeout)",
    ),
    ActionRule(
        "Upsert Workflow Search Attributes",
        "UPSERT_WORKFLOW_SEARCH_ATTRIBUTES",
        "1 per command, however many attributes it sets; 0 when it only sets "
        "TemporalChangeVersion; attributes given at start are free",
    ),
    ActionRule("Schedule Activity", "ACTIVITY_TASK_SCHEDULED", "1 per activity scheduled"),
    ActionRule(
        "Retry Activity",
        "ACTIVITY_TASK_STARTED",
        "attempt - 1 (the attempt field of the STARTED event holds the total attempts)",
    ),
    ActionRule(
        "Record Activity Markers",
        "MARKER_RECORDED",
        "1 per workflow task that recorded any marker (local activities, patches, side "
        "effects), not 1 per marker: 'all RecordMarkers from each Workflow Task as one action'",
    ),
    ActionRule(
        "Retry Local Activity",
        "WORKFLOW_TASK_COMPLETED",
        "metering_metadata.nonfirst_local_activity_execution_attempts",
    ),
    ActionRule("Accept Workflow Update", "WORKFLOW_EXECUTION_UPDATE_ACCEPTED", "1"),
    ActionRule("Update Workflow Options", "WORKFLOW_EXECUTION_OPTIONS_UPDATED", "1"),
    ActionRule("Schedule Nexus Operation", "NEXUS_OPERATION_SCHEDULED", "1"),
    ActionRule("Request Nexus Operation Cancellation", "NEXUS_OPERATION_CANCEL_REQUESTED", "1"),
    ActionRule(
        "Signal External Workflow",
        "SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED",
        "0 in the signaller: counted as WORKFLOW_EXECUTION_SIGNALED in the signalled history",
    ),
)
# Billed but never in a history (so not counted here): queries (``paybridge status``, the UI's
# stack trace), activity heartbeats (no paybridge activity heartbeats), workflow task
# heartbeats of long local activities, schedules, exports.
NOT_IN_HISTORY = (
    "Query Workflow (1 per query: paybridge status, the UI's call stack)",
    "Record Activity Heartbeat (paybridge's activities do not heartbeat)",
    "Workflow task heartbeats while local activities run past 80% of the task timeout",
    "Schedules, Export, Fairness, Capacity",
)
CHANGE_VERSION = "TemporalChangeVersion"


def _name(event: Any) -> str:
    from temporalio.api.enums.v1 import EventType

    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")


def count_actions(events: Iterable[Any]) -> Counter[str]:
    """Temporal Cloud actions of one workflow execution's history, by ``ActionRule.usage_name``.

    ``events`` are ``temporalio.api.history.v1.HistoryEvent`` messages of ONE execution (a
    parent and its child are two histories; add their counts). See :data:`ACTION_RULES`.
    """
    actions: Counter[str] = Counter()
    tasks_with_markers: set[int] = set()
    for event in events:
        kind = _name(event)
        if kind == "WORKFLOW_EXECUTION_STARTED":
            actions["Start Workflow"] += 1
        elif kind == "START_CHILD_WORKFLOW_EXECUTION_INITIATED":
            actions["Start Child Workflow"] += 1
        elif kind == "WORKFLOW_EXECUTION_SIGNALED":
            actions["Signal Workflow"] += 1
        elif kind == "TIMER_STARTED":
            actions["Start Timer"] += 1
        elif kind == "UPSERT_WORKFLOW_SEARCH_ATTRIBUTES":
            fields = event.upsert_workflow_search_attributes_event_attributes
            names = set(fields.search_attributes.indexed_fields)
            if names - {CHANGE_VERSION}:
                actions["Upsert Workflow Search Attributes"] += 1
        elif kind == "ACTIVITY_TASK_SCHEDULED":
            actions["Schedule Activity"] += 1
        elif kind == "ACTIVITY_TASK_STARTED":
            retries = event.activity_task_started_event_attributes.attempt - 1
            if retries > 0:
                actions["Retry Activity"] += retries
        elif kind == "MARKER_RECORDED":
            # Batched: one action per workflow task whose completion recorded markers.
            task = event.marker_recorded_event_attributes.workflow_task_completed_event_id
            if task not in tasks_with_markers:
                tasks_with_markers.add(task)
                actions["Record Activity Markers"] += 1
        elif kind == "WORKFLOW_TASK_COMPLETED":
            metering = event.workflow_task_completed_event_attributes.metering_metadata
            retries = metering.nonfirst_local_activity_execution_attempts
            if retries:
                actions["Retry Local Activity"] += retries
        elif kind == "WORKFLOW_EXECUTION_UPDATE_ACCEPTED":
            actions["Accept Workflow Update"] += 1
        elif kind == "WORKFLOW_EXECUTION_OPTIONS_UPDATED":
            actions["Update Workflow Options"] += 1
        elif kind == "NEXUS_OPERATION_SCHEDULED":
            actions["Schedule Nexus Operation"] += 1
        elif kind == "NEXUS_OPERATION_CANCEL_REQUESTED":
            actions["Request Nexus Operation Cancellation"] += 1
    return actions


def event_actions(events: list[Any]) -> list[int]:
    """Actions charged to each event of one history (for the annotated listings)."""
    seen_tasks: set[int] = set()
    charged = []
    for event in events:
        if _name(event) == "MARKER_RECORDED":
            task = event.marker_recorded_event_attributes.workflow_task_completed_event_id
            charged.append(0 if task in seen_tasks else 1)
            seen_tasks.add(task)
        else:
            charged.append(sum(count_actions([event]).values()))
    return charged


WORKFLOW_TASK_EVENTS = {
    "WORKFLOW_TASK_SCHEDULED": "scheduled",
    "WORKFLOW_TASK_STARTED": "started",
    "WORKFLOW_TASK_COMPLETED": "completed",
    "WORKFLOW_TASK_FAILED": "failed",
    "WORKFLOW_TASK_TIMED_OUT": "timed_out",
}


def describe_event(event: Any) -> str:
    """A short description of one event, for the annotated listing of a history."""
    kind = _name(event)
    detail = ""
    if kind == "MARKER_RECORDED":
        attrs = event.marker_recorded_event_attributes
        detail = attrs.marker_name
        if attrs.marker_name == "core_local_activity":
            with contextlib.suppress(Exception):
                data = attrs.details["data"].payloads[0].data
                found = re.search(rb'"activity_type":\s*"([^"]+)"', data)
                if found:
                    detail += f" {found.group(1).decode()}"
    elif kind == "ACTIVITY_TASK_SCHEDULED":
        detail = event.activity_task_scheduled_event_attributes.activity_type.name
    elif kind == "ACTIVITY_TASK_STARTED":
        detail = f"attempt {event.activity_task_started_event_attributes.attempt}"
    elif kind == "UPSERT_WORKFLOW_SEARCH_ATTRIBUTES":
        fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
        detail = ",".join(sorted(fields.indexed_fields))
    elif kind == "WORKFLOW_EXECUTION_SIGNALED":
        detail = event.workflow_execution_signaled_event_attributes.signal_name
    elif kind == "START_CHILD_WORKFLOW_EXECUTION_INITIATED":
        detail = event.start_child_workflow_execution_initiated_event_attributes.workflow_type.name
    elif kind == "TIMER_STARTED":
        timeout = event.timer_started_event_attributes.start_to_fire_timeout
        detail = f"{timeout.ToTimedelta().total_seconds():g}s"
    return f"{kind} {detail}".strip()


@dataclass
class HistoryStats:
    """Per-payment totals of one outcome type, over the parent and its fraud child."""

    payments: int = 0
    events: Counter[str] = field(default_factory=Counter)  # by event type, both histories
    parent_events: int = 0
    child_events: int = 0
    tasks: Counter[str] = field(default_factory=Counter)  # workflow task events, both
    actions: Counter[str] = field(default_factory=Counter)  # by usage name, both
    parent_actions: int = 0
    child_actions: int = 0

    def add(self, parent: list[Any], child: list[Any]) -> None:
        self.payments += 1
        self.parent_events += len(parent)
        self.child_events += len(child)
        for event in (*parent, *child):
            kind = _name(event)
            self.events[kind] += 1
            if kind in WORKFLOW_TASK_EVENTS:
                self.tasks[WORKFLOW_TASK_EVENTS[kind]] += 1
        parent_actions, child_actions = count_actions(parent), count_actions(child)
        self.parent_actions += sum(parent_actions.values())
        self.child_actions += sum(child_actions.values())
        self.actions.update(parent_actions)
        self.actions.update(child_actions)

    def per_payment(self) -> dict[str, Any]:
        n = max(1, self.payments)

        def avg(value: float) -> float:
            return round(value / n, 2)

        return {
            "payments": self.payments,
            "events": avg(self.parent_events + self.child_events),
            "events_parent": avg(self.parent_events),
            "events_child": avg(self.child_events),
            "workflow_tasks": avg(
                self.tasks["completed"] + self.tasks["failed"] + self.tasks["timed_out"]
            ),
            "workflow_tasks_by_outcome": {k: avg(v) for k, v in sorted(self.tasks.items())},
            "actions": avg(sum(self.actions.values())),
            "actions_parent": avg(self.parent_actions),
            "actions_child": avg(self.child_actions),
            "actions_by_rule": {k: avg(v) for k, v in sorted(self.actions.items())},
            "events_by_type": {k: avg(v) for k, v in sorted(self.events.items())},
        }


# =============================================================================================
# CPU time from /proc
# =============================================================================================

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, str, float, float] | None:
    """(ppid, comm, own CPU s, reaped children's CPU s) of ``pid``, None if it is gone."""
    return _proc_stat_path(f"/proc/{pid}/stat")


def _proc_stat_path(path: str) -> tuple[int, str, float, float] | None:
    try:
        raw = Path(path).read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17, ppid=4
    ppid = int(fields[1])
    own = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    reaped = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
    return ppid, comm, own, reaped


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                tree[stat[0]].append(int(entry))
    return tree


def tree_cpu(pid: int, tree: dict[int, list[int]] | None = None) -> float:
    """CPU seconds of ``pid``, its live descendants, and every child any of them reaped."""
    tree = tree if tree is not None else _children()
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        stat = _proc_stat(current)
        if stat is None:
            continue
        total += stat[2] + stat[3]
        stack.extend(tree.get(current, ()))
    return total


def self_cpu() -> float:
    """This process's CPU seconds (all threads; not its children, the servers)."""
    times = os.times()
    return times.user + times.system


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of each live thread of ``pid``: {tid: (thread name, seconds)}. Python
    threads carry the process's name; the SDK core's Rust threads their own (tokio-...)."""
    found: dict[int, tuple[str, float]] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            stat = _proc_stat_path(f"/proc/{pid}/task/{tid}/stat")
            if stat is not None:
                found[int(tid)] = (stat[1], stat[2])
    return found


def thread_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds by thread name between two :func:`thread_cpu` readings (threads that
    ended in between are lost: a lower bound)."""
    grouped: dict[str, float] = defaultdict(float)
    for tid, (name, seconds) in after.items():
        used = seconds - before.get(tid, (name, 0.0))[1]
        grouped[re.sub(r"[-_]?\d+$", "", name) or name] += used
    return dict(grouped)


def snapshot(pids: dict[str, int]) -> dict[str, float]:
    tree = _children()
    taken = {name: tree_cpu(pid, tree) for name, pid in pids.items()}
    taken["driver"] = self_cpu()
    taken["_wall"] = time.monotonic()
    return taken


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


# =============================================================================================
# Temporal server's own action counter (a cross-check of the history-based count)
# =============================================================================================

_METRIC_LINE = re.compile(r"^action\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.eE+-]+)$")


def server_actions(metrics_port: int) -> Counter[str]:
    """The Temporal server's ``action`` counter, by action_type (namespace default)."""
    found: Counter[str] = Counter()
    try:
        with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return found
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("namespace", "default") != "default":
            continue
        found[labels.get("action_type", "?")] += int(float(match["value"]))
    return found


# =============================================================================================
# The Temporal-only worker (a separate process: ``cost.py --direct-worker``)
# =============================================================================================


class SignalEmitter:
    """The simulated gateway's callbacks, delivered straight to the workflow as signals."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def emit(self, callback: Any) -> None:
        from schemas.ids import payment_workflow_id
        from schemas.workflow_api import GatewayCallbackSignal

        handle = self.client.get_workflow_handle(payment_workflow_id(callback.payment_id))
        await handle.signal("gateway_callback", GatewayCallbackSignal(callback=callback))


def _use_runner(runner: str) -> None:
    """Research knob (``--direct-runner``): the Temporal-only worker's workflow runners.

    ``sandbox``: the worker's own (``workflows.worker.SANDBOX`` for both queues);
    ``plain-sandbox``: the SDK's ``SandboxedWorkflowRunner`` with the same restrictions (the
    setting before the worker compiled workflow modules once); ``unsandboxed``: no sandbox;
    ``fraud-unsandboxed``: the worker's sandbox for the payments, none for the fraud check.
    """
    if runner == "sandbox":
        return
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

    import workflows.worker as module
    from plumbing.settings import DEFAULT_WORKER_SHUTDOWN_GRACE
    from workflows.activities.fraud import FraudActivities
    from workflows.fraud import FraudCheckWorkflow, fraud_task_queue

    if runner == "plain-sandbox":
        plain = SandboxedWorkflowRunner(restrictions=module.SANDBOX.restrictions)
        module.SANDBOX = plain  # type: ignore[assignment]
        return
    unsandboxed = UnsandboxedWorkflowRunner()
    if runner == "unsandboxed":
        module.SANDBOX = unsandboxed  # type: ignore[assignment]

    def fraud_worker(
        client: Any,
        *,
        task_queue: str,
        executor: Any,
        graceful_shutdown: timedelta = DEFAULT_WORKER_SHUTDOWN_GRACE,
    ) -> Worker:
        return Worker(
            client,
            task_queue=fraud_task_queue(task_queue),
            workflows=[FraudCheckWorkflow],
            activities=[FraudActivities().score_fraud],
            activity_executor=executor,
            max_concurrent_workflow_tasks=module.WORKFLOW_TASK_SLOTS,
            workflow_runner=unsandboxed,
            graceful_shutdown_timeout=graceful_shutdown,
        )

    module.fraud_worker = fraud_worker


async def direct_worker(ledger_path: Path, ready_file: Path, runner: str = "sandbox") -> None:
    """``paybridge worker`` (workflows.worker.run_worker) with a signalling gateway."""
    _use_runner(runner)
    from prometheus_client import CollectorRegistry

    from plumbing.process import until_signalled
    from plumbing.settings import Settings
    from plumbing.temporal import connect_with_retry
    from workflows.activities.kafka import kafka_io
    from workflows.metrics import WorkerMetrics
    from workflows.simulations.ledger import Ledger
    from workflows.worker import open_worker, simulated_gateway

    settings = Settings()
    secret = settings.require_gateway_secret()
    ledger = Ledger(ledger_path)
    ledger.seed()
    metrics = WorkerMetrics(CollectorRegistry())
    try:
        async with until_signalled() as stop:
            client = await connect_with_retry(settings)
            async with kafka_io(settings, metrics=metrics) as kafka:
                gateway = simulated_gateway(settings, SignalEmitter(client), secret=secret)
                try:
                    async with open_worker(
                        client,
                        task_queue=settings.temporal_task_queue,
                        ledger=ledger,
                        outcomes=kafka.outcomes,
                        gateway=gateway,
                    ):
                        await asyncio.to_thread(ready_file.write_text, "ready\n")
                        await stop.wait()
                finally:
                    await gateway.close()
    finally:
        ledger.close()


# =============================================================================================
# Processes of the stack
# =============================================================================================


def _die_with_parent() -> None:
    from tools.processes import _die_with_parent as die

    die()


@dataclass
class Member:
    """A paybridge process (bridge, worker, Temporal-only worker)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready: Callable[[], bool]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self.ready):
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} not ready ({self.log_path}):\n{tail}")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _http_ok(port: int, path: str = "/readyz") -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    return ready


def settings_env(settings: Any) -> dict[str, str]:
    """The environment variables that reproduce ``settings`` in another process."""
    from pydantic import SecretStr

    from plumbing.settings import Settings, format_duration

    env: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is None or info.alias is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif hasattr(value, "total_seconds"):
            value = format_duration(value)
        env[info.alias] = str(value)
    return env


@dataclass
class Stack:
    settings: Any
    client: Any
    temporal: Any  # ServerProcess
    kafka: Any
    temporal_metrics_port: int
    members: dict[str, Member]

    @property
    def direct_queue(self) -> str:
        return str(self.settings.temporal_task_queue) + DIRECT_QUEUE_SUFFIX

    def pids(self) -> dict[str, int]:
        pids = {"temporal": self.temporal.process.pid, "broker": self.kafka.process.pid}
        pids.update({name: member.pid for name, member in self.members.items()})
        return pids


def _fresh_data_dir(given: str | None) -> Path | None:
    if not given:
        return None
    data_dir = Path(given).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    db = data_dir / "temporal.db"
    if db.exists():
        db.unlink()  # a fresh database: an old one would make the server's work differ
    return data_dir


@contextlib.asynccontextmanager
async def open_stack(args: argparse.Namespace, root: Path) -> AsyncIterator[Stack]:
    from plumbing.kafka import create_topics
    from plumbing.settings import Settings
    from tools.devstack import kafka_broker, temporal_server, wait_for_temporal
    from tools.processes import free_port

    tport, kport, mport = free_port(), free_port(), free_port()
    settings = Settings(
        KAFKA_BOOTSTRAP_SERVERS=f"{HOST}:{kport}",
        TEMPORAL_ADDRESS=f"{HOST}:{tport}",
        PAYBRIDGE_GATEWAY_SECRET=GATEWAY_SECRET,
        PAYBRIDGE_CALLBACK_TIMEOUT=args.callback_timeout,
        PAYBRIDGE_SDK_METRICS_PORT=0,
    )
    logs = root / "logs"
    data_dir = _fresh_data_dir(args.data_dir)
    temporal = temporal_server(port=tport, ui_port=None, data_dir=data_dir, log_dir=logs)
    temporal.argv += ["--metrics-port", str(mport)]
    kafka = kafka_broker(port=kport, data_dir=root, log_dir=logs)
    members: dict[str, Member] = {}
    try:
        for server, port in ((kafka, kport), (temporal, tport)):
            await server.start()
            await server.wait_for_port(HOST, port)
        await create_topics(settings)
        client = await wait_for_temporal(settings)
        base = {
            **os.environ,
            **settings_env(settings),
            "PAYBRIDGE_SDK_METRICS_PORT": "0",
            "PYTHONPATH": str(REPO),
        }

        def member(name: str, argv: list[str], **extra: str) -> Member:
            port = free_port()
            env = {**base, "PAYBRIDGE_METRICS_PORT": str(port), **extra}
            return Member(name, argv, env, logs / f"{name}.log", _http_ok(port))

        members["worker"] = member(
            "worker",
            [PAYBRIDGE, "worker", "--ledger", str(root / "ledger.sqlite"), "--seed-demo-accounts"],
        )
        members["bridge"] = member(
            "bridge", [PAYBRIDGE, "bridge"], PAYBRIDGE_GROUP_INSTANCE_ID="cost-bridge"
        )
        ready_file = root / "direct-worker.ready"
        direct = member(
            "direct_worker",
            [
                sys.executable,
                str(SCRIPT),
                "--direct-worker",
                "--ledger",
                str(root / "ledger-direct.sqlite"),
                "--ready-file",
                str(ready_file),
                "--direct-runner",
                args.direct_runner,
            ],
            TEMPORAL_TASK_QUEUE=settings.temporal_task_queue + DIRECT_QUEUE_SUFFIX,
        )
        direct.ready = ready_file.exists
        members["direct_worker"] = direct
        for m in members.values():
            m.start()
        for m in members.values():
            await m.wait_ready()
        yield Stack(settings, client, temporal, kafka, mport, members)
    finally:
        for m in members.values():
            m.stop()
        await temporal.stop()
        await kafka.stop()


# =============================================================================================
# Load, windows, histories
# =============================================================================================

OUTCOME_TYPES = ("SUCCEEDED", "FAILED", "REJECTED", "CANCELLED", "TIMED_OUT")
# The mix that forces each outcome type (tools.load.mix intents).
FORCED_MIX = {
    "SUCCEEDED": "none",
    "FAILED": "none,decline=1",
    "REJECTED": "none,unknown_account=1",
    "CANCELLED": "none,cancel=1",
    "TIMED_OUT": "none,timeout=1",
}
PATHS = ("bridge", "temporal_only")
SYSTEM = {  # the processes that make up each path's system (the driver is reported apart)
    "bridge": ("temporal", "broker", "bridge", "worker"),
    "temporal_only": ("temporal", "broker", "direct_worker"),
}


class DirectSender:
    """Starts each payment with the bridge's own start call, and sends its cancel (if any)
    with the bridge's cancel route, straight to Temporal: no Kafka, no bridge."""

    def __init__(self, settings: Any, client: Any, *, task_queue: str, limit: int) -> None:
        from prometheus_client import CollectorRegistry

        from bridge.metrics import BridgeMetrics
        from bridge.routing import build_routes
        from bridge.temporal_calls import TemporalCalls

        calls = TemporalCalls(
            client, task_queue=task_queue, metrics=BridgeMetrics(CollectorRegistry())
        )
        routes = build_routes(settings, calls, gateway_secret="unused")
        self.start = routes[settings.topic_payments].apply
        self.cancel = routes[settings.topic_cancels].apply
        self.slots = asyncio.Semaphore(limit)
        self.tasks: set[asyncio.Task[None]] = set()

    async def send(self, planned: Any) -> None:
        await self.slots.acquire()
        task = asyncio.create_task(self._send(planned))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, planned: Any) -> None:
        try:
            await self.start(planned.payment)
            if planned.cancel is not None:
                await self.cancel(planned.cancel)
        finally:
            self.slots.release()

    async def flush(self) -> None:
        await asyncio.gather(*list(self.tasks))


@dataclass
class Window:
    path: str
    name: str  # "mixed" or an outcome type
    report: dict[str, Any]
    cpu_s: dict[str, float]
    wall_s: float
    server_actions: dict[str, int]
    payment_ids: dict[str, str]  # payment id -> outcome status
    still_running: int
    threads_s: dict[str, dict[str, float]] = field(default_factory=dict)  # process -> name -> s

    def cpu_ms_per_payment(self, idle: dict[str, float] | None = None) -> dict[str, float]:
        n = max(1, self.report["completed"])
        figures: dict[str, float] = {}
        for name, seconds in self.cpu_s.items():
            if idle is not None:
                seconds = max(0.0, seconds - idle.get(name, 0.0) * self.wall_s)
            figures[name] = round(seconds * 1000 / n, 2)
        figures["total"] = round(sum(figures[p] for p in SYSTEM[self.path]), 2)
        return figures

    def summary(self, idle: dict[str, float]) -> dict[str, Any]:
        n = max(1, self.report["completed"])
        return {
            "path": self.path,
            "run": self.name,
            "sent": self.report["sent"],
            "completed": self.report["completed"],
            "by_status": self.report["by_status"],
            "missing": self.report["missing"],
            "duplicates": self.report["duplicates"]["by_payment_id"],
            "still_running_at_window_end": self.still_running,
            "window_s": round(self.wall_s, 2),
            "throughput_per_s": self.report["throughput"]["completed_per_s"],
            "latency_ms": self.report["latency"],
            "cpu_ms": {k: round(v * 1000, 1) for k, v in self.cpu_s.items()},
            "cpu_ms_per_payment": self.cpu_ms_per_payment(),
            "cpu_ms_per_payment_net_of_idle": self.cpu_ms_per_payment(idle),
            "system_processes": list(SYSTEM[self.path]),
            "server_action_metric_per_payment": {
                k: round(v / n, 2) for k, v in sorted(self.server_actions.items())
            },
            "threads_cpu_ms_per_payment": {
                proc: {
                    k: round(v * 1000 / n, 2)
                    for k, v in sorted(by.items(), key=lambda i: -i[1])
                    if v > 0
                }
                for proc, by in self.threads_s.items()
            },
            "server_action_metric_total_per_payment": round(
                sum(self.server_actions.values()) / n, 2
            ),
        }


def _progress(label: str, target: int) -> Callable[[Any], None]:
    last = [0.0]

    def tick(tracker: Any) -> None:
        now = time.monotonic()
        if now - last[0] < 5.0:
            return
        last[0] = now
        statuses = " ".join(f"{k}={v}" for k, v in sorted(tracker.statuses.items()))
        print(
            f"  [{label}] sent {len(tracker.sent)}/{target}  outcomes {len(tracker.done)}  "
            f"{statuses}",
            flush=True,
        )

    return tick


async def wait_closed(client: Any, task_queue: str, *, timeout: float = 60.0) -> int:
    """Until no workflow on ``task_queue`` runs (the last workflow task follows the outcome)."""
    query = f'TaskQueue="{task_queue}" AND ExecutionStatus="Running"'
    deadline = time.monotonic() + timeout
    running = -1
    while time.monotonic() < deadline:
        try:
            running = (await client.count_workflows(query)).count
        except Exception as exc:  # visibility without TaskQueue: settle instead
            log.warning("count_workflows failed (%s); waiting 2 s instead", exc)
            await asyncio.sleep(2.0)
            return -1
        if running == 0:
            return 0
        await asyncio.sleep(0.25)
    return running


def _start_profiler(
    stack: Stack, args: argparse.Namespace, *, path: str, name: str
) -> subprocess.Popen[bytes] | None:
    """``--profile-worker DIR``: py-spy on the bridge path's worker during the mixed run (raw
    collapsed stacks, for counting) and the SUCCEEDED run (an SVG flame graph)."""
    if not args.profile_worker or path != "bridge" or name not in ("mixed", "SUCCEEDED"):
        return None
    out = Path(args.profile_worker)
    out.mkdir(parents=True, exist_ok=True)
    fmt, file = ("raw", "worker-mixed.txt") if name == "mixed" else ("flamegraph", "worker.svg")
    argv = [
        str(BIN / "py-spy"),
        "record",
        "--pid",
        str(stack.members["worker"].pid),
        "--rate",
        "100",
        "--format",
        fmt,
        "--output",
        str(out / file),
        "--gil",  # only samples that hold the GIL: where the Python CPU goes, not idle waits
    ]
    if args.profile_native:
        argv.append("--native")
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the window opens
    return process


def _stop_profiler(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def measure(
    stack: Stack,
    args: argparse.Namespace,
    *,
    path: str,
    name: str,
    count: int,
    mix_text: str,
    seed: int,
) -> Window:
    from tools.load.generator import LoadConfig, run_load
    from tools.load.mix import Mix

    config = LoadConfig(
        count=count,
        rate=args.rate or None,
        mix=Mix.parse(mix_text) if mix_text else Mix(),
        timeout=max(60.0, args.callback_timeout_s * 3),
        settle=0.5,
        seed=seed,
    )
    sender = None
    queue = stack.settings.temporal_task_queue
    if path == "temporal_only":
        queue = stack.direct_queue
        direct = DirectSender(
            stack.settings, stack.client, task_queue=queue, limit=stack.settings.max_inflight
        )

        @contextlib.asynccontextmanager
        async def open_direct() -> AsyncIterator[Any]:
            try:
                yield direct
            finally:
                await direct.flush()

        sender = open_direct
    label = f"{path} {name}"
    print(
        f"- {label}: {count} payments, mix '{mix_text or 'default'}', "
        f"rate {args.rate or 'flat out'}/s",
        flush=True,
    )
    threaded = ("bridge", "worker") if path == "bridge" else ("direct_worker",)
    profiler = _start_profiler(stack, args, path=path, name=name)
    actions_before = server_actions(stack.temporal_metrics_port)
    threads_before = {p: thread_cpu(stack.members[p].pid) for p in threaded}
    before = snapshot(stack.pids())
    tracker = await run_load(stack.settings, config, sender=sender, on_tick=_progress(label, count))
    running = await wait_closed(stack.client, queue)
    after = snapshot(stack.pids())
    threads_after = {p: thread_cpu(stack.members[p].pid) for p in threaded}
    actions_after = server_actions(stack.temporal_metrics_port)
    _stop_profiler(profiler)
    cpu = delta(before, after)
    wall = cpu.pop("_wall")
    report = tracker.report(config=config.describe())
    window = Window(
        path=path,
        name=name,
        report=report,
        cpu_s=cpu,
        wall_s=wall,
        server_actions=dict(actions_after - actions_before),
        payment_ids={pid: o.status.value for pid, o in tracker.done.items()},
        still_running=running,
        threads_s={p: thread_delta(threads_before[p], threads_after[p]) for p in threaded},
    )
    per = window.cpu_ms_per_payment()
    print(
        f"  done: {report['completed']}/{report['sent']} {report['by_status']} in {wall:.1f}s; "
        f"CPU ms/payment: "
        + " ".join(f"{k}={per[k]}" for k in (*SYSTEM[path], "total", "driver"))
        + f"; server actions/payment "
        f"{sum(window.server_actions.values()) / max(1, report['completed']):.1f}",
        flush=True,
    )
    return window


async def fetch_histories(
    client: Any, payments: dict[str, str], *, per_type_limit: int | None
) -> tuple[dict[str, HistoryStats], dict[str, Any]]:
    """Histories of the payments (and their fraud children), counted by outcome status."""
    from schemas.ids import payment_workflow_id
    from workflows.fraud import fraud_workflow_id

    chosen: dict[str, list[str]] = defaultdict(list)
    for pid, status in sorted(payments.items()):
        if per_type_limit is None or len(chosen[status]) < per_type_limit:
            chosen[status].append(pid)
    stats: dict[str, HistoryStats] = defaultdict(HistoryStats)
    examples: dict[str, Any] = {}
    slots = asyncio.Semaphore(16)

    async def events_of(workflow_id: str) -> list[Any]:
        async with slots:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
            return list(history.events)

    async def one(pid: str, status: str) -> None:
        parent = await events_of(payment_workflow_id(pid))
        child: list[Any] = []
        if any(_name(e) == "START_CHILD_WORKFLOW_EXECUTION_INITIATED" for e in parent):
            child = await events_of(fraud_workflow_id(pid))
        stats[status].add(parent, child)
        if status not in examples:
            examples[status] = {
                "payment_id": pid,
                "parent": _listing(parent),
                "child": _listing(child),
            }

    await asyncio.gather(*(one(pid, status) for status, ids in chosen.items() for pid in ids))
    return stats, examples


def _listing(events: list[Any]) -> list[dict[str, Any]]:
    charged = event_actions(events)
    return [
        {"id": e.event_id, "event": describe_event(e), "actions": a}
        for e, a in zip(events, charged, strict=True)
    ]


async def idle_rates(stack: Stack, seconds: float) -> dict[str, float]:
    """CPU seconds per second of each process while nothing is sent."""
    before = snapshot(stack.pids())
    await asyncio.sleep(seconds)
    after = snapshot(stack.pids())
    cpu = delta(before, after)
    wall = cpu.pop("_wall")
    return {name: value / wall for name, value in cpu.items()}


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


async def run_stack(args: argparse.Namespace) -> dict[str, Any]:
    from temporalio.api.enums.v1 import EventType  # noqa: F401  (fail early if missing)

    host = machine()
    print(f"machine: {host['nproc']} CPUs, {host['cpu']}, load {host['load_average_at_start']}")
    with tempfile.TemporaryDirectory(prefix="paybridge-cost-") as tmp:
        root = Path(tmp)
        async with open_stack(args, root) as stack:
            print(f"stack up: {stack.pids()} (logs in {root / 'logs'})", flush=True)
            # Warm-up: imports, sandbox caches, connections, consumer group assignment.
            for path in PATHS:
                await measure(
                    stack,
                    args,
                    path=path,
                    name="warm-up",
                    count=args.warmup,
                    mix_text="",
                    seed=args.seed + 99,
                )
            idle = await idle_rates(stack, args.idle_seconds)
            print("idle CPU ms/s: " + " ".join(f"{k}={v * 1000:.1f}" for k, v in idle.items()))
            windows: list[Window] = []
            for path in PATHS:
                windows.append(
                    await measure(
                        stack,
                        args,
                        path=path,
                        name="mixed",
                        count=args.count,
                        mix_text=args.mix,
                        seed=args.seed,
                    )
                )
            if args.per_type:
                for n, kind in enumerate(OUTCOME_TYPES):
                    if kind not in args.types.split(","):
                        continue
                    for path in PATHS:
                        windows.append(
                            await measure(
                                stack,
                                args,
                                path=path,
                                name=kind,
                                count=args.per_type,
                                mix_text=FORCED_MIX[kind],
                                seed=args.seed + n + 1,
                            )
                        )
            print("fetching histories...", flush=True)
            histories: dict[str, Any] = {}
            for path in PATHS:
                payments: dict[str, str] = {}
                for window in windows:
                    if window.path == path:
                        payments.update(window.payment_ids)
                stats, examples = await fetch_histories(
                    stack.client, payments, per_type_limit=args.history_limit
                )
                histories[path] = {
                    "by_status": {s: stats[s].per_payment() for s in sorted(stats)},
                    "examples": examples,
                }
    return {
        "machine": host,
        "idle_cpu_ms_per_s": {k: round(v * 1000, 2) for k, v in idle.items()},
        "windows": [w.summary(idle) for w in windows],
        "histories": histories,
    }


# =============================================================================================
# Dev mode: paybridge dev + paybridge loadgen (the outside check)
# =============================================================================================


def _free_dev_ports() -> tuple[int, int, int, int]:
    from tools.processes import free_port, port_in_use

    while True:
        tport = free_port()
        if tport + 1000 < 65536 and not port_in_use(HOST, tport + 1000):
            return tport, free_port(), free_port(), free_port()


def _tree_by_name(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid``'s tree, grouped as paybridge (the dev process), temporal, broker."""
    tree = _children()
    groups: dict[str, float] = {"paybridge_dev": 0.0, "temporal": 0.0, "broker": 0.0}
    stat = _proc_stat(pid)
    if stat is None:
        return groups
    groups["paybridge_dev"] += stat[2] + stat[3]
    for child in tree.get(pid, ()):
        child_stat = _proc_stat(child)
        if child_stat is None:
            continue
        comm = child_stat[1]
        name = "temporal" if "temporal" in comm else "broker" if "noida" in comm else "other"
        groups[name] = groups.get(name, 0.0) + tree_cpu(child, tree)
    return groups


def _children_rusage() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _loadgen(env: dict[str, str], count: int, report: Path, seed: int) -> dict[str, Any]:
    before = _children_rusage()
    argv = [
        PAYBRIDGE,
        "loadgen",
        "--count",
        str(count),
        "--quiet",
        "--report",
        str(report),
        "--seed",
        str(seed),
    ]
    started = time.monotonic()
    process = subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    while process.poll() is None:
        time.sleep(5)
        if process.poll() is None:
            print(f"  loadgen running, {time.monotonic() - started:.0f}s", flush=True)
    err = process.stderr.read().decode() if process.stderr else ""
    result = json.loads(report.read_text()) if report.exists() else {"completed": 0}
    result["_loadgen_cpu_s"] = _children_rusage() - before
    result["_rc"] = process.returncode
    result["_stderr_tail"] = err[-2000:]
    return result


def run_dev_mode(args: argparse.Namespace) -> dict[str, Any]:
    host = machine()
    print(f"machine: {host['nproc']} CPUs, {host['cpu']}, load {host['load_average_at_start']}")
    tport, kport, mport, sport = _free_dev_ports()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": f"{HOST}:{kport}",
        "TEMPORAL_ADDRESS": f"{HOST}:{tport}",
        "PAYBRIDGE_METRICS_PORT": str(mport),
        "PAYBRIDGE_SDK_METRICS_PORT": str(sport),
    }
    argv = [PAYBRIDGE, "dev"]
    if args.data_dir:
        argv += ["--data-dir", str(Path(args.data_dir).absolute())]
    with tempfile.TemporaryDirectory(prefix="paybridge-cost-dev-") as tmp:
        out_path = Path(tmp) / "dev.log"
        out = out_path.open("wb")
        dev = subprocess.Popen(
            argv,
            env=env,
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        try:
            deadline = time.monotonic() + 120
            while b"\nready" not in out_path.read_bytes():
                if dev.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"paybridge dev did not start:\n{out_path.read_text()}")
                time.sleep(0.2)
            print(f"paybridge dev up (pid {dev.pid}, Temporal {tport}, Kafka {kport})", flush=True)
            runs = []
            for name, count in (("warm-up", args.warmup), ("measured", args.count)):
                if not count:
                    continue
                print(f"- loadgen --count {count} ({name})", flush=True)
                before = _tree_by_name(dev.pid)
                wall = time.monotonic()
                report = _loadgen(env, count, Path(tmp) / f"{name}.json", args.seed)
                wall = time.monotonic() - wall
                after = _tree_by_name(dev.pid)
                cpu = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
                n = max(1, report.get("completed", 0))
                per = {k: round(v * 1000 / n, 2) for k, v in cpu.items()}
                per["total"] = round(sum(per.values()), 2)
                run = {
                    "run": name,
                    "count": count,
                    "completed": report.get("completed"),
                    "by_status": report.get("by_status"),
                    "missing": report.get("missing"),
                    "throughput_per_s": report.get("throughput", {}).get("completed_per_s"),
                    "latency_ms": report.get("latency"),
                    "window_s": round(wall, 2),
                    "cpu_ms": {k: round(v * 1000, 1) for k, v in cpu.items()},
                    "cpu_ms_per_payment": per,
                    "loadgen_cpu_ms_per_payment": round(report["_loadgen_cpu_s"] * 1000 / n, 2),
                    "loadgen_rc": report["_rc"],
                }
                runs.append(run)
                print(
                    f"  done: {run['completed']}/{count} {run['by_status']} in {wall:.1f}s "
                    f"({run['throughput_per_s']}/s); CPU ms/payment: "
                    + " ".join(f"{k}={v}" for k, v in per.items())
                    + f"; loadgen {run['loadgen_cpu_ms_per_payment']}",
                    flush=True,
                )
        finally:
            dev.send_signal(signal.SIGINT)
            try:
                dev.wait(timeout=60)
            except subprocess.TimeoutExpired:
                dev.kill()
                dev.wait()
            out.close()
    return {"machine": host, "dev_runs": runs}


# =============================================================================================
# Output
# =============================================================================================


def _fmt(value: Any, width: int = 9) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:.1f}".rjust(width)
    return str(value).rjust(width)


def table_stack(result: dict[str, Any]) -> str:
    lines: list[str] = []
    windows = {(w["path"], w["run"]): w for w in result["windows"]}
    hist = result["histories"]
    procs = ("temporal", "broker", "bridge", "worker", "direct_worker", "total", "driver")
    lines.append("")
    lines.append(
        "CPU ms per completed payment (system total = Temporal + broker + paybridge "
        "processes; driver = load generator / SDK starter, not in the total)"
    )
    lines.append(f"{'run':<26}" + "".join(_fmt(p, 14) for p in (*procs, "done", "s")))
    for (path, run), w in windows.items():
        per = w["cpu_ms_per_payment"]
        cells = [per.get(p) if p in (*SYSTEM[path], "total", "driver") else None for p in procs]
        lines.append(
            f"{path + ' ' + run:<26}"
            + "".join(_fmt(c, 14) for c in cells)
            + _fmt(w["completed"], 14)
            + _fmt(w["window_s"], 14)
        )
    for path in PATHS:
        w = windows.get((path, "mixed"))
        if w and w.get("threads_cpu_ms_per_payment"):
            for proc, by in w["threads_cpu_ms_per_payment"].items():
                lines.append(
                    f"  {path} mixed, {proc} by thread (ms/payment): "
                    + ", ".join(f"{k} {v}" for k, v in list(by.items())[:6])
                )
    lines.append(
        "(idle CPU ms/s: "
        + ", ".join(f"{k} {v}" for k, v in result["idle_cpu_ms_per_s"].items())
        + ")"
    )
    lines.append("")
    lines.append(
        "Per payment, by outcome type (parent + fraud child): history events, workflow "
        "tasks, Temporal Cloud actions; CPU from the homogeneous run of that type"
    )
    head = (
        f"{'type':<11}{'path':<15}{'n':>5}{'events':>8}{'WFTs':>7}{'actions':>9}"
        f"{'srv-act':>9}{'CPU tot':>9}{'temporal':>9}{'broker':>9}{'worker':>9}{'bridge':>9}"
    )
    lines.append(head)
    for kind in OUTCOME_TYPES:
        for path in PATHS:
            h = hist.get(path, {}).get("by_status", {}).get(kind)
            if h is None:
                continue
            w = windows.get((path, kind))
            per = w["cpu_ms_per_payment"] if w else {}
            worker = per.get("worker" if path == "bridge" else "direct_worker")
            lines.append(
                f"{kind:<11}{path:<15}{h['payments']:>5}{h['events']:>8.1f}"
                f"{h['workflow_tasks']:>7.1f}{h['actions']:>9.1f}"
                + _fmt(w["server_action_metric_total_per_payment"] if w else None)
                + _fmt(per.get("total"))
                + _fmt(per.get("temporal"))
                + _fmt(per.get("broker"))
                + _fmt(worker)
                + _fmt(per.get("bridge") if path == "bridge" else None)
            )
    for path in PATHS:
        h = hist.get(path, {}).get("by_status", {}).get("SUCCEEDED")
        if h is None:
            continue
        lines.append("")
        lines.append(
            f"Actions per SUCCEEDED payment, {path} ({h['actions']:.1f}: parent "
            f"{h['actions_parent']:.1f}, fraud child {h['actions_child']:.1f}), by rule "
            f"of {CLOUD_ACTIONS_URL}:"
        )
        for rule, value in h["actions_by_rule"].items():
            lines.append(f"  {rule:<36}{value:>6.2f}")
        lines.append(
            f"  events {h['events']:.1f} (parent {h['events_parent']:.1f}, child "
            f"{h['events_child']:.1f}); workflow tasks {h['workflow_tasks']:.1f} "
            f"{h['workflow_tasks_by_outcome']}"
        )
    return "\n".join(lines)


def table_dev(result: dict[str, Any]) -> str:
    lines = ["", "paybridge dev + paybridge loadgen: CPU ms per completed payment"]
    for run in result["dev_runs"]:
        per = run["cpu_ms_per_payment"]
        lines.append(
            f"  {run['run']:<9} n={run['completed']:<5} {run['throughput_per_s']}/s  "
            + "  ".join(f"{k} {v}" for k, v in per.items())
            + f"  (loadgen itself {run['loadgen_cpu_ms_per_payment']})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("stack", "dev"), default="stack")
    parser.add_argument("--count", type=int, default=400, help="payments of the mixed run")
    parser.add_argument(
        "--per-type",
        type=int,
        default=100,
        help="payments of each homogeneous outcome-type run (0: none)",
    )
    parser.add_argument(
        "--types",
        default=",".join(OUTCOME_TYPES),
        help="outcome types of the homogeneous runs (comma-separated)",
    )
    parser.add_argument("--warmup", type=int, default=30, help="payments before measuring")
    parser.add_argument(
        "--rate", type=float, default=10.0, help="payments/s, steady (0: as fast as possible)"
    )
    parser.add_argument(
        "--mix",
        default="timeout=0.02",
        help="load mix (tools.load.mix syntax) of the mixed run; unnamed shares "
        "keep loadgen's defaults [default: defaults + timeout=0.02]",
    )
    parser.add_argument(
        "--callback-timeout",
        default="5s",
        help="PAYBRIDGE_CALLBACK_TIMEOUT (TIMED_OUT payments wait this long)",
    )
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument(
        "--history-limit",
        type=int,
        default=None,
        help="histories fetched per outcome type (default: all)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="Temporal on a SQLite file in this directory (default: in memory)",
    )
    parser.add_argument("--label", default=None, help="results/cost-<label>.json")
    parser.add_argument(
        "--profile-worker",
        default=None,
        metavar="DIR",
        help="py-spy the bridge path's worker (mixed run: raw stacks; SUCCEEDED "
        "run: SVG) into DIR; its CPU figures then include the sampling",
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="with --profile-worker: native frames too (py-spy --native)",
    )
    parser.add_argument(
        "--direct-runner",
        choices=("sandbox", "plain-sandbox", "unsandboxed", "fraud-unsandboxed"),
        default="sandbox",
        help="research: the Temporal-only worker's workflow runner (default: the real one)",
    )
    parser.add_argument("--direct-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ledger", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.direct_worker:
        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("aiokafka").setLevel(logging.ERROR)
        asyncio.run(direct_worker(Path(args.ledger), Path(args.ready_file), args.direct_runner))
        return

    sys.path.insert(0, str(REPO))
    from plumbing.settings import parse_duration

    args.callback_timeout_s = parse_duration(args.callback_timeout).total_seconds()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    if args.mode == "stack":
        from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

        quiet = LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        Runtime.set_default(Runtime(telemetry=TelemetryConfig(logging=quiet)))
    commit = git_commit()
    label = args.label or (
        ("dev-" if args.mode == "dev" else "") + commit + ("-sqlite" if args.data_dir else "")
    )
    started = time.monotonic()
    body = run_dev_mode(args) if args.mode == "dev" else asyncio.run(run_stack(args))
    result = {
        "label": label,
        "commit": commit,
        "mode": args.mode,
        "temporal_store": "sqlite file" if args.data_dir else "in memory",
        "config": {
            k: v
            for k, v in vars(args).items()
            if k not in ("direct_worker", "ledger", "ready_file")
        },
        "action_rules": {
            "source": CLOUD_ACTIONS_URL,
            "cross_check": SERVER_ACTION_METRIC,
            "rules": [vars(rule) for rule in ACTION_RULES],
            "not_in_history": list(NOT_IN_HISTORY),
        },
        **body,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print(table_dev(result) if args.mode == "dev" else table_stack(result))
    if args.mode == "stack":
        print(
            f"\nactions counted by the rules of {CLOUD_ACTIONS_URL} (see ACTION_RULES); "
            "srv-act = the Temporal server's own `action` metric per payment, same window"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"cost-{label}.json"
    n = 2
    while out.exists() and args.label is None:
        out = RESULTS / f"cost-{label}-{n}.json"
        n += 1
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"results: {out} (took {result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
