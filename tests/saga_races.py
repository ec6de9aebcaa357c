"""The saga race table: each step boundary of ``PaymentWorkflow`` x each interrupting event.

Every cell runs the real workflows and activities on the time-skipping server, with two
stand-ins at the client boundary, both under the test's control:

- :class:`RecordingGateway`, the payment gateway: it records every authorisation request,
  grant, decline and void, in order; a request can be held *in transit* (sent, not yet at the
  gateway) until the test releases it, so that the gateway grants it *after* the interrupting
  event, when the workflow may have given up on it; a request can also stay *pending* at the
  gateway while every attempt is answered "unavailable", and be granted later. A void of a
  request still pending is refused as retryable (the gateway serialises the two, like an
  idempotency key); the first void of each payment is applied and its answer lost, so that
  every cell also retries a void.
- the ledger's debit and credit-back, the real SQLite ledger wrapped so that the test can hold
  the workflow just after its debit and see the order of the compensations; the outcome
  publisher, which records the outcomes (and can be held mid-publish).

The interleaving of each cell is chosen, never hoped for: the test brings the payment to the
boundary (polling its ``status`` query), delivers the event, and only then opens the gates.
Each cell then asserts the money invariants (:func:`check`) and records its result for the
table in docs/workflows.md (:func:`render`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from temporalio import activity
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from schemas.errors import GatewayDeclined, GatewayUnavailable
from schemas.events import CallbackStatus, OutcomeStatus, PaymentCreated, PaymentOutcome
from schemas.ids import payment_workflow_id
from schemas.workflow_api import (
    CancelSignal,
    GatewayCallbackSignal,
    PaymentPhase,
    PaymentState,
    PaymentWorkflowInput,
    ResolveSignal,
)
from tests.stuck_fraud import StuckFraudCheck
from tests.support import GATEWAY_SECRET, activity_name, payment
from workflows.fraud import fraud_task_queue
from workflows.models import (
    CreditBackInput,
    DebitInput,
    DebitResult,
    PublishOutcomeInput,
)
from workflows.simulations.gateway import GatewayBehaviour, SimulatedGateway, signed_callback
from workflows.simulations.ledger import Ledger
from workflows.simulations.notifications import NotificationSink
from workflows.worker import SANDBOX, WORKFLOWS, activities, fraud_worker

# -- the table's axes --------------------------------------------------------------------

EVENTS = ("cancel signal", "Temporal cancel", "fraud failure", "decline", "timeout", "none")

ROWS: dict[str, str] = {
    "before validation": "the event is in before the workflow's first step",
    "after the debit": "the ledger has debited; the debit's answer is on its way back",
    "authorisation in flight": (
        "the request is on its way to the gateway, which grants it after the event"
    ),
    "authorisation retried": (
        "the first attempt was granted but its answer lost; the retry is in flight"
    ),
    "fraud check running": "authorised; the fraud service has not answered yet",
    "awaiting the callback": "authorised, fraud check passed, no callback yet",
    "stale wait": "an ERROR callback, the gateway does not know: waiting to ask again",
    "manual review": "still unknown after the stale wait: waiting for an operator",
    "compensating": "declined; the void is at the gateway",
    "publishing": "succeeded; the outcome is being published",
}

S = OutcomeStatus
# (row, event) -> the status the payment must end with; a missing pair makes no sense.
EXPECTED: dict[tuple[str, str], OutcomeStatus] = {
    ("before validation", "cancel signal"): S.CANCELLED,
    ("before validation", "Temporal cancel"): S.CANCELLED,
    ("after the debit", "cancel signal"): S.CANCELLED,
    ("after the debit", "Temporal cancel"): S.CANCELLED,
    ("authorisation in flight", "cancel signal"): S.CANCELLED,
    ("authorisation in flight", "Temporal cancel"): S.CANCELLED,
    ("authorisation in flight", "fraud failure"): S.FAILED,
    ("authorisation in flight", "decline"): S.FAILED,
    ("authorisation in flight", "timeout"): S.FAILED,
    ("authorisation in flight", "none"): S.SUCCEEDED,
    ("authorisation retried", "cancel signal"): S.CANCELLED,
    ("authorisation retried", "Temporal cancel"): S.CANCELLED,
    ("authorisation retried", "fraud failure"): S.FAILED,
    ("authorisation retried", "none"): S.SUCCEEDED,
    ("fraud check running", "cancel signal"): S.CANCELLED,
    ("fraud check running", "Temporal cancel"): S.CANCELLED,
    ("fraud check running", "fraud failure"): S.FAILED,
    ("fraud check running", "decline"): S.FAILED,
    ("fraud check running", "timeout"): S.FAILED,
    ("fraud check running", "none"): S.SUCCEEDED,
    ("awaiting the callback", "cancel signal"): S.CANCELLED,
    ("awaiting the callback", "Temporal cancel"): S.CANCELLED,
    ("awaiting the callback", "decline"): S.FAILED,
    ("awaiting the callback", "timeout"): S.TIMED_OUT,
    ("awaiting the callback", "none"): S.SUCCEEDED,
    ("stale wait", "cancel signal"): S.CANCELLED,
    ("stale wait", "Temporal cancel"): S.CANCELLED,
    ("stale wait", "decline"): S.FAILED,
    ("stale wait", "none"): S.SUCCEEDED,
    ("manual review", "cancel signal"): S.CANCELLED,
    ("manual review", "Temporal cancel"): S.CANCELLED,
    ("manual review", "decline"): S.FAILED,
    ("manual review", "none"): S.SUCCEEDED,
    # The ending is decided before the event: a cancel changes nothing, and cuts nothing short.
    ("compensating", "cancel signal"): S.FAILED,
    ("compensating", "Temporal cancel"): S.FAILED,
    ("publishing", "cancel signal"): S.SUCCEEDED,
    ("publishing", "Temporal cancel"): S.SUCCEEDED,
}
CELLS = list(EXPECTED)

# Cells whose gateway grants the authorisation only after the event: the late grant.
LATE_GRANT = {
    ("authorisation in flight", "cancel signal"),
    ("authorisation in flight", "Temporal cancel"),
    ("authorisation in flight", "fraud failure"),
    ("authorisation in flight", "timeout"),
}


# -- the gateway double --------------------------------------------------------------------


@dataclass
class Plan:
    """How the double answers one payment."""

    # Attempts from this one on wait in transit until the test releases them.
    hold_from_attempt: int | None = None
    # grant; decline; unavailable = every attempt is answered "unavailable" while the request
    # stays pending at the gateway, which grants it when the test releases it.
    verdict: Literal["grant", "decline", "unavailable"] = "grant"
    # Attempt 1 is granted but its answer is lost (the activity sees a transient error).
    lose_first_answer: bool = False
    # The first void waits (at the gateway) until the test releases it.
    hold_first_void: bool = False
    # The first void is applied but its answer is lost: the void is retried.
    lose_first_void_answer: bool = True


class RecordingGateway(SimulatedGateway):
    """A payment gateway under the test's control that records what it did, in order."""

    def __init__(self) -> None:
        super().__init__(GatewayBehaviour(callbacks=False))
        self.plans: dict[str, Plan] = {}
        self.log: list[tuple[str, str]] = []  # (what happened, payment id)
        self.granted: set[str] = set()
        self.voided: set[str] = set()
        self.pending: set[str] = set()
        self._mutex = threading.Lock()
        self._released: dict[str, asyncio.Event] = {}
        self._void_released: dict[str, threading.Event] = {}
        self._voids: dict[str, int] = {}

    def plan(self, payment_id: str) -> Plan:
        return self.plans.setdefault(payment_id, Plan())

    def record(self, what: str, payment_id: str) -> None:
        with self._mutex:
            self.log.append((what, payment_id))

    def events(self, payment_id: str) -> list[str]:
        with self._mutex:
            return [what for what, pid in self.log if pid == payment_id]

    def _release_event(self, payment_id: str) -> asyncio.Event:
        return self._released.setdefault(payment_id, asyncio.Event())

    def _grant(self, payment_id: str) -> None:
        with self._mutex:
            self.pending.discard(payment_id)
            first = payment_id not in self.granted
            self.granted.add(payment_id)
        if first:
            self.record("granted", payment_id)

    def release(self, payment_id: str) -> None:
        """Let a request in transit reach the gateway; grant a pending one."""
        self._release_event(payment_id).set()
        if payment_id in self.pending:
            self._grant(payment_id)

    def release_void(self, payment_id: str) -> None:
        self._void_released.setdefault(payment_id, threading.Event()).set()

    async def authorize(self, payment: PaymentCreated, *, attempt: int = 1) -> str:
        pid = payment.payment_id
        plan = self.plan(pid)
        self.record(f"request #{attempt} sent", pid)
        if plan.hold_from_attempt is not None and attempt >= plan.hold_from_attempt:
            await self._release_event(pid).wait()
        self.record(f"request #{attempt} at the gateway", pid)
        ref = f"gw-{pid}"
        if pid in self.granted:
            return ref  # idempotent per payment id
        if plan.verdict == "decline":
            self.record("declined", pid)
            raise GatewayDeclined("card declined by issuer")
        if plan.verdict == "unavailable":
            with self._mutex:
                self.pending.add(pid)
            self.record(f"request #{attempt} answered unavailable", pid)
            raise GatewayUnavailable("gateway timed out (it is still working on the request)")
        self._grant(pid)
        if plan.lose_first_answer and attempt == 1:
            raise GatewayUnavailable("connection reset: the answer was lost")
        return ref

    def void(self, payment_id: str) -> bool:
        plan = self.plan(payment_id)
        with self._mutex:
            calls = self._voids.get(payment_id, 0)
            self._voids[payment_id] = calls + 1
        self.record("void called", payment_id)
        if plan.hold_first_void and calls == 0:
            self._void_released.setdefault(payment_id, threading.Event()).wait(timeout=60)
        if payment_id in self.pending:
            self.record("void refused: authorisation in progress", payment_id)
            raise GatewayUnavailable("authorisation still in progress: void again later")
        with self._mutex:
            voided = payment_id in self.granted and payment_id not in self.voided
            if voided:
                self.voided.add(payment_id)
        self.record("voided" if voided else "void: nothing to void", payment_id)
        if plan.lose_first_void_answer and calls == 0:
            raise GatewayUnavailable("connection reset: the void's answer was lost")
        self.record("void answered", payment_id)
        return voided

    def status(self, payment_id: str) -> CallbackStatus | None:
        return None  # the gateway never knows better than its callbacks


# -- one cell's run --------------------------------------------------------------------------


@dataclass
class CellResult:
    status: OutcomeStatus | None
    problems: list[str] = field(default_factory=list)

    def text(self) -> str:
        if not self.problems:
            return f"{self.status.value if self.status else '?'} ✓"
        return "✗ " + "; ".join(self.problems)


class Race:
    """One payment on a task queue of its own, with the double and the wrapped ledger."""

    def __init__(self, env: WorkflowEnvironment, ledger: Ledger, p: PaymentCreated) -> None:
        self.env = env
        self.client: Client = env.client
        self.ledger = ledger
        self.payment = p
        self.pid = p.payment_id
        self.gateway = RecordingGateway()
        self.task_queue = f"race-{uuid.uuid4().hex[:10]}"
        self.outcomes: list[PaymentOutcome] = []
        self.notifications = NotificationSink()
        self.hold_debit = False
        self.debited = asyncio.Event()
        self.debit_released = asyncio.Event()
        self.hold_publish = False
        self.publishing = asyncio.Event()
        self.publish_released = asyncio.Event()
        self.handle: WorkflowHandle[Any, PaymentOutcome] = self.client.get_workflow_handle(
            payment_workflow_id(self.pid), result_type=PaymentOutcome
        )
        self._stack = contextlib.AsyncExitStack()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=4)
        self._fraud: Worker | None = None

    # workers

    def _fakes(self) -> list[Callable[..., Any]]:
        race = self

        @activity.defn(name="debit_account")
        async def debit_account(input: DebitInput) -> DebitResult:
            verdict = race.ledger.debit(
                input.payment_id, input.account_id, input.currency, input.amount_minor
            )
            if race.hold_debit:
                race.debited.set()
                await race.debit_released.wait()
            ok = verdict in ("debited", "already_debited")
            return DebitResult(ok=ok, reason=None if ok else verdict)

        @activity.defn(name="credit_back")
        async def credit_back(input: CreditBackInput) -> None:
            race.gateway.record("credit back", input.payment_id)
            race.ledger.credit_back(input.payment_id)

        @activity.defn(name="publish_outcome")
        async def publish_outcome(input: PublishOutcomeInput) -> None:
            if race.hold_publish and not race.publishing.is_set():
                race.publishing.set()
                await race.publish_released.wait()
            race.outcomes.append(input.outcome)

        return [debit_account, credit_back, publish_outcome]

    async def start_workers(self, *, fraud_service: bool = True) -> None:
        fakes = self._fakes()
        replaced = {activity_name(fn) for fn in fakes}
        real = activities(
            ledger=self.ledger,
            gateway=self.gateway,
            notifications=self.notifications,
            outcomes=None,
        )
        worker = Worker(
            self.client,
            task_queue=self.task_queue,
            workflows=WORKFLOWS,
            activities=[*(fn for fn in real if activity_name(fn) not in replaced), *fakes],
            activity_executor=self._executor,
            workflow_runner=SANDBOX,
        )
        await self._stack.enter_async_context(worker)
        if fraud_service:
            await self.start_fraud_service()

    async def start_fraud_service(self, *, stuck: bool = False) -> None:
        """The fraud service's worker; ``stuck``: one whose check never answers."""
        if self._fraud is None:
            self._fraud = (
                Worker(
                    self.client,
                    task_queue=fraud_task_queue(self.task_queue),
                    workflows=[StuckFraudCheck],
                    workflow_runner=UnsandboxedWorkflowRunner(),
                )
                if stuck
                else fraud_worker(self.client, task_queue=self.task_queue, executor=self._executor)
            )
            await self._stack.enter_async_context(self._fraud)

    async def close(self) -> None:
        # Nothing may stay held or running: a held activity, or a workflow task no worker
        # will take, stops the server from skipping time for every later test.
        self.gateway.release(self.pid)
        self.gateway.release_void(self.pid)
        self.debit_released.set()
        self.publish_released.set()
        for workflow_id in (payment_workflow_id(self.pid), f"fraud-{self.pid}"):
            with contextlib.suppress(RPCError):
                await self.client.get_workflow_handle(workflow_id).terminate("test over")
        await self._stack.aclose()
        self._executor.shutdown(wait=False)

    # the workflow

    async def start(self, **timers: Any) -> None:
        self.handle = await self.client.start_workflow(
            "PaymentWorkflow",
            PaymentWorkflowInput(payment=self.payment, **timers),
            id=payment_workflow_id(self.pid),
            task_queue=self.task_queue,
            result_type=PaymentOutcome,
        )

    async def state(self) -> PaymentState | None:
        try:
            state: PaymentState = await self.handle.query("status", result_type=PaymentState)
        except RPCError:
            return None
        return state

    async def steps(self) -> list[str]:
        state = await self.state()
        return [] if state is None else [s.name for s in state.steps]

    async def closed(self) -> bool:
        described = await self.handle.describe()
        return described.status != WorkflowExecutionStatus.RUNNING

    async def until(
        self, condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 60
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await condition():
            if loop.time() > deadline:
                raise AssertionError(f"{self.pid}: never {what}; gateway: {self.log()}")
            await asyncio.sleep(0.02)

    async def until_step(self, *names: str) -> None:
        async def seen() -> bool:
            return any(n in names for n in await self.steps())

        await self.until(seen, f"took a step in {names}")

    async def until_phase(self, phase: PaymentPhase) -> None:
        async def there() -> bool:
            state = await self.state()
            return state is not None and state.status == phase

        await self.until(there, f"reached {phase.value}")

    async def until_gateway(self, what: str) -> None:
        async def seen() -> bool:
            return what in self.gateway.events(self.pid)

        await self.until(seen, f"saw '{what}' at the gateway")

    def log(self) -> list[str]:
        return self.gateway.events(self.pid)

    # events

    def mark(self, event: str) -> None:
        if f"event: {event}" not in self.log():
            self.gateway.record(f"event: {event}", self.pid)

    async def callback(self, status: CallbackStatus) -> None:
        callback = signed_callback(
            payment_id=self.pid,
            gateway_ref=f"gw-{self.pid}",
            status=status,
            secret=GATEWAY_SECRET,
            reason={CallbackStatus.DECLINED: "insufficient limit"}.get(status),
        )
        await self.handle.signal("gateway_callback", GatewayCallbackSignal(callback=callback))

    async def cancel_signal(self) -> None:
        self.mark("cancel signal")
        await self.handle.signal(
            "cancel", CancelSignal(event_id=str(uuid.uuid4()), reason="customer asked")
        )

    async def temporal_cancel(self) -> None:
        self.mark("Temporal cancel")
        await self.handle.cancel()

    async def resolve(self, approve: bool) -> None:
        await self.handle.signal(
            "resolve", ResolveSignal(event_id=str(uuid.uuid4()), approve=approve, operator="ops")
        )

    async def skip_until_step(self, name: str, by: timedelta) -> None:
        """Skip time in steps of ``by`` until the workflow took step ``name``."""
        for _ in range(40):
            if name in await self.steps():
                return
            await self.env.sleep(by)
        raise AssertionError(f"{self.pid} never took step {name!r}: {await self.steps()}")

    async def release_once_settled(self) -> None:
        """Open the gateway's gates once the workflow has stopped waiting for the request: its
        void has been answered, or it waits for the authorisation's answer before voiding, or
        it has ended. Whatever the gateway grants from here on is granted *late*."""

        async def settled() -> bool:
            return (
                "void answered" in self.log()
                or "void deferred" in await self.steps()
                or await self.closed()
            )

        await self.until(settled, "settled (void answered, void deferred or ended)")
        self.gateway.release(self.pid)

    # the ending

    async def outcome(self, *, timeout: float = 120) -> tuple[PaymentOutcome | None, str]:
        """The workflow's result (skipping time) and how its execution closed."""
        result: PaymentOutcome | None
        try:
            result = await asyncio.wait_for(self.handle.result(), timeout)
        except WorkflowFailureError:
            result = None
        described = await self.handle.describe()
        return result, described.status.name if described.status else "?"


def check(
    race: Race, row: str, event: str, result: PaymentOutcome | None, closed: str
) -> CellResult:
    """The invariants every cell must keep; each broken one is a short problem text."""
    expected = EXPECTED[(row, event)]
    p = race.payment
    published = [o for o in race.outcomes if o.payment_id == p.payment_id]
    problems: list[str] = []
    status = published[0].status if published else None
    if len(published) != 1:
        problems.append(f"{len(published)} outcomes")
    if closed != "COMPLETED":
        problems.append(f"workflow {closed}")
    if result is not None and published and result != published[0]:
        problems.append("result differs from the outcome")
    if status is not None and status != expected:
        problems.append(f"{status.value}, expected {expected.value}")
    net = sum(m.delta_minor for m in race.ledger.movements(p.payment_id))
    want = -p.amount_minor if status == OutcomeStatus.SUCCEEDED else 0
    if net != want:
        problems.append(f"ledger net {net:+d}")
    gw = race.gateway
    if status == OutcomeStatus.SUCCEEDED:
        if p.payment_id in gw.voided:
            problems.append("authorisation voided")
    elif p.payment_id in gw.granted and p.payment_id not in gw.voided:
        problems.append("grant not voided")
    log = race.log()
    voids = [i for i, what in enumerate(log) if what == "void called"]
    credits = [i for i, what in enumerate(log) if what == "credit back"]
    if status == OutcomeStatus.SUCCEEDED and (voids or credits):
        problems.append("compensated a success")
    if voids and credits and max(voids) > min(credits):
        problems.append("compensations out of order")
    if (row, event) in LATE_GRANT:
        # The cell tests what it says only if the gateway granted after the event.
        marks = [i for i, what in enumerate(log) if what.startswith("event:")]
        grants = [i for i, what in enumerate(log) if what == "granted"]
        if not grants or (marks and grants[0] < marks[0]):
            problems.append("interleaving not as designed (no late grant)")
    return CellResult(status, problems)


# -- driving a cell to its boundary and through its event ------------------------------------


async def run_cell(
    env: WorkflowEnvironment,
    ledger: Ledger,
    row: str,
    event: str,
    *,
    then: Callable[[Race], Awaitable[None]] | None = None,
    **payment_fields: Any,
) -> CellResult:
    """Run one cell; ``then`` sees the race after its outcome (tests/histories/record.py
    keeps its history)."""
    metadata = {"fraud": "true"} if event == "fraud failure" else {}
    p = payment(len(CELLS), metadata=metadata, **payment_fields)
    race = Race(env, ledger, p)
    try:
        await asyncio.wait_for(DRIVERS[row](race, event), 60)
        result, closed = await race.outcome(timeout=60)
        if then is not None:
            await then(race)
    except (AssertionError, TimeoutError, RPCError) as exc:
        return CellResult(None, [f"stuck: {type(exc).__name__}"])
    finally:
        await race.close()
    return check(race, row, event, result, closed)


async def _interrupt(race: Race, event: str) -> None:
    """Deliver a cancel of either kind."""
    if event == "cancel signal":
        await race.cancel_signal()
    elif event == "Temporal cancel":
        await race.temporal_cancel()
    else:
        raise AssertionError(event)


def _in_background(race: Race) -> asyncio.Task[tuple[PaymentOutcome | None, str]]:
    # Awaiting the result lets the server skip time while the test opens the gates.
    return asyncio.create_task(race.outcome())


async def before_validation(race: Race, event: str) -> None:
    await race.start()  # no worker yet: the event is in before the first step
    await _interrupt(race, event)
    await race.start_workers()


async def after_the_debit(race: Race, event: str) -> None:
    race.hold_debit = True
    race.gateway.plan(race.pid).hold_from_attempt = 1
    await race.start_workers()
    await race.start()
    await race.debited.wait()
    await _interrupt(race, event)
    race.debit_released.set()
    waiting = _in_background(race)
    await race.release_once_settled()
    await waiting


async def authorisation_in_flight(race: Race, event: str) -> None:
    plan = race.gateway.plan(race.pid)
    if event == "timeout":
        plan.verdict = "unavailable"
    else:
        plan.hold_from_attempt = 1
    await race.start_workers(fraud_service=False)
    await race.start()
    await race.until_gateway("request #1 sent")
    if event == "timeout":
        # Every attempt is answered "unavailable" while the gateway keeps working on the
        # request; once the workflow has given up and asks for the void, it grants it.
        await race.start_fraud_service()
        race.mark("timeout")
        waiting = _in_background(race)
        await race.until_gateway("void refused: authorisation in progress")
        race.gateway.release(race.pid)
        await waiting
        return
    await race.start_fraud_service()
    if event == "fraud failure":
        race.mark("fraud failure")
        await race.until_step("fraud check")
    else:
        await race.until_step("fraud check")
        if event == "decline":
            race.mark("decline")
            plan.verdict = "decline"
            race.gateway.release(race.pid)
        elif event == "none":
            race.gateway.release(race.pid)
            await race.until_step("authorization requested")
            await race.callback(CallbackStatus.AUTHORIZED)
        else:
            await _interrupt(race, event)
    waiting = _in_background(race)
    await race.release_once_settled()
    await waiting


async def authorisation_retried(race: Race, event: str) -> None:
    plan = race.gateway.plan(race.pid)
    plan.lose_first_answer = True
    plan.hold_from_attempt = 2
    await race.start_workers(fraud_service=False)
    await race.start()
    await race.until_gateway("request #2 sent")
    await race.start_fraud_service()
    if event == "fraud failure":
        race.mark("fraud failure")
        await race.until_step("fraud check")
    else:
        await race.until_step("fraud check")
        if event == "none":
            race.gateway.release(race.pid)
            await race.until_step("authorization requested")
            await race.callback(CallbackStatus.AUTHORIZED)
        else:
            await _interrupt(race, event)
    waiting = _in_background(race)
    await race.release_once_settled()
    await waiting


async def fraud_check_running(race: Race, event: str) -> None:
    await race.start_workers(fraud_service=False)
    await race.start()
    await race.until_step("authorization requested")
    race.mark(event)
    if event in ("cancel signal", "Temporal cancel"):
        await _interrupt(race, event)
    elif event == "decline":
        await race.callback(CallbackStatus.DECLINED)
    elif event == "none":
        await race.callback(CallbackStatus.AUTHORIZED)
    # A timeout: the fraud service never answers, and its check times out (10 minutes).
    await race.start_fraud_service(stuck=event == "timeout")


async def awaiting_the_callback(race: Race, event: str) -> None:
    await race.start_workers()
    await race.start(callback_timeout=timedelta(minutes=5))
    await race.until_phase(PaymentPhase.AWAITING_CALLBACK)
    race.mark(event)
    if event in ("cancel signal", "Temporal cancel"):
        await _interrupt(race, event)
    elif event == "decline":
        await race.callback(CallbackStatus.DECLINED)
    elif event == "none":
        await race.callback(CallbackStatus.AUTHORIZED)
    # a timeout: nothing comes, and the server skips the five minutes


async def _to_stale(race: Race) -> None:
    await race.start_workers()
    await race.start(stale_retry_delay=timedelta(minutes=30))
    await race.until_phase(PaymentPhase.AWAITING_CALLBACK)
    await race.callback(CallbackStatus.ERROR)
    # The gateway is asked three times (5 s and 10 s apart), then the 30-minute wait starts.
    await race.skip_until_step("stale", timedelta(seconds=5))


async def _decide(race: Race, event: str, *, by_operator: bool) -> None:
    race.mark(event)
    if event in ("cancel signal", "Temporal cancel"):
        await _interrupt(race, event)
    elif by_operator:
        await race.resolve(approve=event == "none")
    else:
        await race.callback(
            CallbackStatus.AUTHORIZED if event == "none" else CallbackStatus.DECLINED
        )


async def stale_wait(race: Race, event: str) -> None:
    await _to_stale(race)
    await _decide(race, event, by_operator=False)


async def manual_review(race: Race, event: str) -> None:
    await _to_stale(race)
    await race.skip_until_step("manual review", timedelta(minutes=10))
    await _decide(race, event, by_operator=True)


async def compensating(race: Race, event: str) -> None:
    race.gateway.plan(race.pid).hold_first_void = True
    await race.start_workers()
    await race.start()
    await race.until_phase(PaymentPhase.AWAITING_CALLBACK)
    await race.callback(CallbackStatus.DECLINED)
    await race.until_gateway("void called")
    await _interrupt(race, event)

    async def seen() -> bool:
        steps = await race.steps()
        return "cancel requested" in steps or "cancel ignored" in steps or await race.closed()

    await race.until(seen, "saw the cancel")
    race.gateway.release_void(race.pid)


async def publishing(race: Race, event: str) -> None:
    race.hold_publish = True
    await race.start_workers()
    await race.start()
    await race.until_phase(PaymentPhase.AWAITING_CALLBACK)
    await race.callback(CallbackStatus.AUTHORIZED)
    await race.publishing.wait()
    await _interrupt(race, event)

    async def seen() -> bool:
        steps = await race.steps()
        return "cancel requested" in steps or "cancel ignored" in steps or await race.closed()

    await race.until(seen, "saw the cancel")
    race.publish_released.set()


DRIVERS: dict[str, Callable[[Race, str], Awaitable[None]]] = {
    "before validation": before_validation,
    "after the debit": after_the_debit,
    "authorisation in flight": authorisation_in_flight,
    "authorisation retried": authorisation_retried,
    "fraud check running": fraud_check_running,
    "awaiting the callback": awaiting_the_callback,
    "stale wait": stale_wait,
    "manual review": manual_review,
    "compensating": compensating,
    "publishing": publishing,
}
assert set(DRIVERS) == set(ROWS)


# -- the table -------------------------------------------------------------------------------

TABLE_START = "<!-- race-table:start (written by tests/test_saga_races.py) -->"
TABLE_END = "<!-- race-table:end -->"


def render(results: dict[tuple[str, str], CellResult]) -> str:
    lines = [
        "| step boundary | " + " | ".join(EVENTS) + " |",
        "|---|" + "---|" * len(EVENTS),
    ]
    for row, what in ROWS.items():
        cells = []
        for event in EVENTS:
            if (row, event) not in EXPECTED:
                cells.append("·")
            elif (row, event) in results:
                cells.append(results[(row, event)].text())
            else:
                cells.append("not run")
        lines.append(f"| **{row}**: {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
