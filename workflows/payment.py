"""``PaymentWorkflow``: one execution per payment, id ``payment-{payment_id}``.

The saga: validate -> debit the ledger -> fraud check (child workflow) alongside the gateway's
authorisation request -> wait for the gateway callback, racing ``PAYBRIDGE_CALLBACK_TIMEOUT``
-> on a gateway error, ask the gateway again, then after ``PAYBRIDGE_STALE_RETRY_DELAY``, then
hand the payment to an operator (manual review, ``resolve`` signal). A ``cancel`` signal ends
it at any step before success. Whatever did not succeed is compensated in reverse order
(void the authorisation, credit back the debit); the customer is notified and exactly one
``PaymentOutcome`` is published.

A cancellation through Temporal itself (``temporal workflow cancel``, the UI's cancel,
``handle.cancel()``) is a cancel like the signal: the saga compensates, notifies and publishes
one CANCELLED outcome, and the workflow completes (Completed, never Canceled, so that a
redelivered ``PaymentCreated`` cannot start the payment again).

A run may start without its payment: a callback or cancel that came first starts it through
the bridge's signal-with-start. It then waits for the ``payment_created`` signal up to
``PAYBRIDGE_ORPHAN_TIMEOUT`` (a durable timer), holding the signals it receives (a
cancellation through Temporal too). If the payment comes, the saga runs as for any payment and
applies them; if not, the run moves no money, dead-letters each held signal's record (reason
``orphan``) and ends Failed, so that a later ``PaymentCreated`` starts a fresh run (id reuse
policy ALLOW_DUPLICATE_FAILED_ONLY). Runs started with their payment issue the same commands as
before this step existed.

Versioning: the saga replaced the foundation slice (validate -> publish) behind the patch
``SAGA_PATCH``; executions recorded by the slice replay through ``_run_slice`` (see
tests/histories/ and tests/test_workflow_replay.py). ``VOID_AFTER_AUTHORIZE_PATCH`` and
``TEMPORAL_CANCEL_PATCH`` added the third version's changes of commands; executions started
before them keep the second version's behaviour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from schemas.events import (
        CallbackStatus,
        GatewayCallback,
        OutcomeStatus,
        PaymentCreated,
        PaymentOutcome,
    )
    from schemas.ids import outcome_event_id
    from schemas.workflow_api import (
        DEFAULT_CALLBACK_TIMEOUT,
        DEFAULT_ORPHAN_TIMEOUT,
        DEFAULT_STALE_RETRY_DELAY,
        SIGNAL_CANCEL,
        SIGNAL_GATEWAY_CALLBACK,
        SIGNAL_PAYMENT_CREATED,
        CancelSignal,
        GatewayCallbackSignal,
        PaymentCreatedSignal,
        PaymentPhase,
        PaymentState,
        PaymentWorkflowInput,
        ResolveSignal,
        Step,
    )
    from workflows.fraud import fraud_task_queue, fraud_workflow_id
    from workflows.models import (
        GATEWAY_DECLINED,
        Authorization,
        AuthorizeInput,
        CreditBackInput,
        DebitInput,
        DebitResult,
        FraudCheckInput,
        FraudVerdict,
        GatewayStatus,
        GatewayStatusInput,
        NotifyInput,
        OrphanDeadLetterInput,
        PublishOutcomeInput,
        ValidatePaymentInput,
        ValidationVerdict,
        VoidInput,
    )

SAGA_PATCH = "payment-saga-v2"
# The void of an authorisation waits for the authorisation request's real end.
VOID_AFTER_AUTHORIZE_PATCH = "payment-saga-v3-void-after-authorize"
# A cancellation through Temporal runs the saga's cancel path instead of ending the run.
TEMPORAL_CANCEL_PATCH = "payment-saga-v3-temporal-cancel"

PAYMENT_STATUS = SearchAttributeKey.for_keyword("PaymentStatus")
MERCHANT_ID = SearchAttributeKey.for_keyword("MerchantId")

LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
# Publishing must eventually succeed: the outcome is the payment's only external result.
PUBLISH_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)
# Transient gateway errors back off exponentially; a decline is final.
GATEWAY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=6,
    non_retryable_error_types=[GATEWAY_DECLINED],
)
# "Status unknown" is asked about this many times before the payment is considered stale.
STATUS_QUERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_attempts=3,
)
# Compensations must happen: retried until they succeed.
COMPENSATION_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)
NOTIFY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5)
# The authorisation request heartbeats while it waits for the gateway: a worker that dies
# with a request in flight is noticed in seconds, and the request asked again (idempotently).
AUTHORIZE_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
# An orphan's dead letter must reach the DLQ, like an outcome its topic.
DEAD_LETTER_RETRY = PUBLISH_RETRY
# The failure type of a run whose payment never came (it ends Failed, non-retryable).
ORPHANED = "Orphaned"

Ending = tuple[OutcomeStatus, str | None]
_TICK = timedelta(milliseconds=1)


class _Cancelled(Exception):
    """Raised inside the saga when a cancel signal wins a race."""


@workflow.defn(name="PaymentWorkflow")
class PaymentWorkflow:
    @workflow.init
    def __init__(self, input: PaymentWorkflowInput) -> None:
        # None: started by an early callback or cancel; the payment comes as a signal.
        self._received: PaymentCreated | None = input.payment
        self._payment_id = (
            input.payment.payment_id
            if input.payment is not None
            else workflow.info().workflow_id.removeprefix("payment-")
        )
        self._callback_timeout = input.callback_timeout or DEFAULT_CALLBACK_TIMEOUT
        self._stale_retry_delay = input.stale_retry_delay or DEFAULT_STALE_RETRY_DELAY
        self._state = PaymentState(payment_id=self._payment_id, status=PaymentPhase.PENDING)
        self._saga = False
        self._merchant_set = False
        self._seen_events: set[str] = set()
        self._callbacks: list[GatewayCallback] = []
        self._handled_callbacks = 0
        self._cancel: CancelSignal | None = None
        self._cancel_at = 0  # callbacks received before the cancel
        self._resolve: ResolveSignal | None = None
        self._succeeded = False
        self._compensations: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        self._ending: OutcomeStatus | None = None  # decided: nothing can change it any more
        self._temporal_cancel_seen = False
        # Signals received while the payment is not in yet, in order; once the orphan timer
        # fired, those are dead-lettered instead of applied.
        self._held: list[GatewayCallbackSignal | CancelSignal] = []
        self._orphaning = False

    @property
    def _payment(self) -> PaymentCreated:
        """The payment: the saga runs only once it is in."""
        assert self._received is not None, "no payment yet"
        return self._received

    @workflow.run
    async def run(self, input: PaymentWorkflowInput) -> PaymentOutcome:
        if self._received is None:  # never true for a run started with its payment
            await self._payment_beyond_cancellation(input.orphan_timeout or DEFAULT_ORPHAN_TIMEOUT)
        if not workflow.patched(SAGA_PATCH):
            return await self._run_slice()
        self._saga = True
        if not workflow.patched(TEMPORAL_CANCEL_PATCH):
            return await self._saga_to_its_outcome()
        return await self._saga_beyond_cancellation()

    # -- signals and query ---------------------------------------------------------------

    @workflow.signal(name=SIGNAL_PAYMENT_CREATED)
    def payment_created(self, signal: PaymentCreatedSignal) -> None:
        payment = signal.payment
        if self._received is not None:
            return  # the run has its payment (its input, or an earlier copy): a redelivery
        if payment.payment_id != self._payment_id:
            self._step("payment ignored", f"it is for payment {payment.payment_id}")
            return
        self._received = payment
        self._step("payment received", f"{len(self._held)} signal(s) held")
        if not self._orphaning:
            held, self._held = self._held, []
            for one in held:
                self._apply(one)

    @workflow.signal(name=SIGNAL_GATEWAY_CALLBACK)
    def gateway_callback(self, signal: GatewayCallbackSignal) -> None:
        callback = signal.callback
        if not self._first_time(callback.event_id):
            return
        if callback.payment_id != self._payment_id:
            self._step("callback ignored", f"it is for payment {callback.payment_id}")
            return
        if self._received is None:
            self._hold(signal)
            return
        self._apply(signal)

    @workflow.signal(name=SIGNAL_CANCEL)
    def cancel(self, signal: CancelSignal) -> None:
        if not self._first_time(signal.event_id):
            return
        if self._received is None:
            self._hold(signal)
            return
        self._apply(signal)

    def _apply(self, signal: GatewayCallbackSignal | CancelSignal) -> None:
        if isinstance(signal, GatewayCallbackSignal):
            callback = signal.callback
            self._callbacks.append(callback)
            self._step("gateway callback", f"{callback.status.value} ({callback.gateway_ref})")
        elif self._succeeded or self._terminal():
            self._step("cancel ignored", f"payment already {self._state.status.value}")
        elif self._cancel is None:
            self._cancel = signal
            self._cancel_at = len(self._callbacks)
            self._step("cancel requested", f"in {self._state.status.value}: {signal.reason}")

    @workflow.signal(name="resolve")
    def resolve(self, signal: ResolveSignal) -> None:
        if not self._first_time(signal.event_id):
            return
        if self._state.status != PaymentPhase.MANUAL_REVIEW or self._resolve is not None:
            self._step("resolve ignored", f"payment is {self._state.status.value}")
            return
        self._resolve = signal
        verdict = "approved" if signal.approve else "declined"
        self._step("resolved", f"{verdict} by {signal.operator or 'an operator'}")

    @workflow.query(name="status")
    def status(self) -> PaymentState:
        return self._state

    # -- a run started by an early signal: waiting for the payment --------------------------

    def _hold(self, signal: GatewayCallbackSignal | CancelSignal) -> None:
        self._held.append(signal)
        what = "gateway callback" if isinstance(signal, GatewayCallbackSignal) else "cancel"
        self._step(f"{what} held", "waiting for the payment")

    async def _payment_beyond_cancellation(self, timeout: timedelta) -> None:
        """:meth:`_wait_for_payment` in a task of its own, as the saga runs (see
        :meth:`_saga_beyond_cancellation`): a cancellation through Temporal while the run waits
        is held like a cancel signal, applied if the payment comes."""
        waiting = asyncio.create_task(self._wait_for_payment(timeout))
        while True:
            try:
                await workflow.wait([waiting])
            except asyncio.CancelledError:
                if workflow.cancellation_reason() is None or self._temporal_cancel_seen:
                    raise
                self._temporal_cancel_seen = True
                self._cancelled_through_temporal()
                continue
            waiting.result()  # raises if the run ends as an orphan
            return

    async def _wait_for_payment(self, timeout: timedelta) -> None:
        """Wait for ``payment_created`` up to ``timeout``; returns once the payment is in. If
        it never comes, dead-letter what was held and end Failed (:meth:`_orphaned`)."""
        self._step("waiting for payment", f"up to {timeout} (PAYBRIDGE_ORPHAN_TIMEOUT)")
        try:
            await workflow.wait_condition(lambda: self._received is not None, timeout=timeout)
        except TimeoutError:
            await self._orphaned(timeout)

    async def _orphaned(self, timeout: timedelta) -> None:
        """No payment within ``timeout``: move no money, dead-letter every held signal's record
        (also those that come while this runs), and end Failed. A payment that comes before
        the run ends is not lost: the saga runs for it in this run, without the signals
        already dead-lettered (``paybridge dlq redrive`` can still send them)."""
        self._orphaning = True
        self._step("orphaned", f"no payment within {timeout}")
        message = (
            f"no PaymentCreated for payment {self._payment_id} within {timeout} "
            f"(PAYBRIDGE_ORPHAN_TIMEOUT); workflow {workflow.info().workflow_id} held this record"
        )
        sent = 0
        while sent < len(self._held):
            batch = self._held[sent:]
            sent = len(self._held)
            await asyncio.gather(*(self._dead_letter(signal, message) for signal in batch))
        self._held = []
        self._orphaning = False
        if self._received is not None:
            self._step("payment received late", f"{sent} held signal(s) were dead-lettered")
            return
        self._state.status = PaymentPhase.ORPHANED
        self._step("dead-lettered", f"{sent} held signal(s), reason orphan")
        raise ApplicationError(
            f"payment {self._payment_id}: no PaymentCreated within {timeout}; "
            f"{sent} held signal(s) dead-lettered as orphan",
            type=ORPHANED,
            non_retryable=True,
        )

    async def _dead_letter(
        self, signal: GatewayCallbackSignal | CancelSignal, message: str
    ) -> None:
        event_id = (
            signal.callback.event_id
            if isinstance(signal, GatewayCallbackSignal)
            else signal.event_id
        )
        # Dead-lettered, so not seen: a redriven copy is applied if the payment comes after all.
        self._seen_events.discard(event_id)
        if signal.source is None:  # not from Kafka (a test or tool signalled it directly)
            self._step("dropped", f"{event_id}: no source record to dead-letter")
            return
        await workflow.execute_activity(
            "dead_letter_orphan",
            OrphanDeadLetterInput(source=signal.source, message=message),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DEAD_LETTER_RETRY,
        )

    # -- the saga --------------------------------------------------------------------------

    async def _saga_to_its_outcome(self) -> PaymentOutcome:
        """Process, then compensate whatever did not succeed, notify, publish the outcome."""
        try:
            status, reason = await self._process()
        except _Cancelled:
            assert self._cancel is not None
            status, reason = OutcomeStatus.CANCELLED, self._cancel.reason
        self._ending = status
        if status != OutcomeStatus.SUCCEEDED:
            await self._compensate()
        await self._notify(status, reason)
        return await self._finish(status, reason)

    async def _saga_beyond_cancellation(self) -> PaymentOutcome:
        """The saga in a task of its own, out of reach of a cancellation through Temporal.

        Temporal cancels only the workflow's main task (this one): it becomes a cancel request
        like the ``cancel`` signal, which the saga sees at its next step. Whatever is in
        flight (a debit, an authorisation, a compensation, the outcome's publication) runs to
        its end instead of being cut short; the saga publishes one outcome and the workflow
        completes.
        """
        saga = asyncio.create_task(self._saga_to_its_outcome())
        while True:
            try:
                await workflow.wait([saga])
            except asyncio.CancelledError:
                # Temporal delivers its cancellation once; anything else cancelling this task
                # (the worker evicting the run from its cache) must go on.
                if workflow.cancellation_reason() is None or self._temporal_cancel_seen:
                    raise
                self._temporal_cancel_seen = True
                self._cancelled_through_temporal()
                continue
            return saga.result()

    def _cancelled_through_temporal(self) -> None:
        reason = workflow.cancellation_reason() or "cancelled through Temporal"
        if self._ending is not None:
            self._step("cancel ignored", f"payment already ending {self._ending.value}: {reason}")
            return
        # The same request as the cancel signal: ignored once the payment succeeded, and an
        # authorisation that came in before it still wins.
        self.cancel(
            CancelSignal(event_id=f"temporal-cancel/{workflow.info().run_id}", reason=reason)
        )

    async def _process(self) -> Ending:
        self._check_cancel()
        self._enter(PaymentPhase.PROCESSING, "received")
        verdict = await self._validate()
        if not verdict.ok:
            return OutcomeStatus.REJECTED, verdict.reason
        self._check_cancel()
        payment = self._payment
        debited: DebitResult = await self._call(
            "debit_account",
            DebitInput(
                payment_id=payment.payment_id,
                account_id=payment.account_id,
                currency=payment.currency,
                amount_minor=payment.amount_minor,
            ),
            result_type=DebitResult,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=LEDGER_RETRY,
        )
        if not debited.ok:
            return OutcomeStatus.REJECTED, debited.reason
        self._compensate_with(
            "credit back",
            "credit_back",
            CreditBackInput(payment_id=payment.payment_id),
            remote=False,
        )
        self._step("debited", f"{payment.amount_minor} {payment.currency}")
        self._check_cancel()
        failed = await self._authorize_and_check_fraud()
        if failed is not None:
            return failed
        self._enter(PaymentPhase.AWAITING_CALLBACK, "awaiting gateway callback")
        return await self._await_gateway()

    async def _authorize_and_check_fraud(self) -> Ending | None:
        payment = self._payment
        # Since v3 the void waits for the authorisation request's real end: a gateway that
        # grants after a cancel (or a failed fraud check) has its grant voided too.
        void_after_authorize = workflow.patched(VOID_AFTER_AUTHORIZE_PATCH)
        fraud = asyncio.create_task(
            workflow.execute_child_workflow(
                "FraudCheckWorkflow",
                FraudCheckInput(payment=payment),
                id=fraud_workflow_id(payment.payment_id),
                task_queue=fraud_task_queue(workflow.info().task_queue),
                result_type=FraudVerdict,
                execution_timeout=timedelta(minutes=10),
            )
        )
        authorize = asyncio.create_task(
            workflow.execute_activity(
                "authorize_payment",
                AuthorizeInput(payment=payment),
                result_type=Authorization,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=GATEWAY_RETRY,
                # A cancelled request is seen through to the gateway's answer (the activity
                # heartbeats while it waits), and the workflow waits for that answer.
                heartbeat_timeout=AUTHORIZE_HEARTBEAT_TIMEOUT if void_after_authorize else None,
                cancellation_type=(
                    workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
                    if void_after_authorize
                    else workflow.ActivityCancellationType.TRY_CANCEL
                ),
            )
        )
        # Registered as soon as the request exists: a cancel while it is in flight must void
        # whatever the gateway authorises (voiding nothing is a no-op), after its answer.
        self._compensate_with(
            "void authorization",
            "void_authorization",
            VoidInput(payment_id=payment.payment_id),
            remote=True,
            after=authorize if void_after_authorize else None,
        )
        cancelled = asyncio.create_task(workflow.wait_condition(lambda: self._cancel is not None))
        pending: list[asyncio.Task[Any]] = [fraud, authorize]
        try:
            while pending:
                await workflow.wait([*pending, cancelled], return_when=asyncio.FIRST_COMPLETED)
                self._check_cancel()
                if fraud.done() and fraud in pending:
                    pending.remove(fraud)
                    ended = self._fraud_result(fraud)
                    if ended is not None:
                        return ended
                if authorize.done() and authorize in pending:
                    pending.remove(authorize)
                    ended = self._authorize_result(authorize)
                    if ended is not None:
                        return ended
            return None
        finally:
            for task in (fraud, authorize, cancelled):
                if not task.done():
                    task.cancel()

    def _fraud_result(self, task: asyncio.Task[FraudVerdict]) -> Ending | None:
        try:
            verdict = task.result()
        except ChildWorkflowError as exc:
            self._step("fraud check failed", str(exc.cause or exc))
            return OutcomeStatus.FAILED, "fraud check unavailable"
        self._step(
            "fraud check", f"score {verdict.score}: {'passed' if verdict.passed else 'failed'}"
        )
        return None if verdict.passed else (OutcomeStatus.FAILED, "fraud")

    def _authorize_result(self, task: asyncio.Task[Authorization]) -> Ending | None:
        try:
            authorization = task.result()
        except ActivityError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type == GATEWAY_DECLINED:
                self._step("authorization declined", cause.message)
                return OutcomeStatus.FAILED, f"declined: {cause.message}"
            self._step("authorization failed", str(cause or exc))
            return OutcomeStatus.FAILED, "gateway unavailable"
        self._state.gateway_ref = authorization.gateway_ref
        self._step("authorization requested", authorization.gateway_ref)
        return None

    async def _await_gateway(self) -> Ending:
        try:
            await workflow.wait_condition(
                lambda: self._cancel is not None or self._has_callback(),
                timeout=self._callback_timeout,
            )
        except TimeoutError:
            return OutcomeStatus.TIMED_OUT, f"no gateway callback within {self._callback_timeout}"
        self._check_cancel(callbacks_first=True)
        callback = self._next_callback()
        if callback.status != CallbackStatus.ERROR:
            return self._verdict(callback.status, callback.reason)
        return await self._escalate(callback.reason)

    async def _escalate(self, error: str | None) -> Ending:
        """The gateway answered ERROR: its status is unknown. Ask, wait, ask, then a human."""
        status = await self._ask_gateway()
        if status is not None:
            return self._verdict(status.status, status.reason)
        self._step("stale", f"gateway status unknown; asking again in {self._stale_retry_delay}")
        definitive = await self._wait_for_definitive_callback(timeout=self._stale_retry_delay)
        if definitive is not None:
            return definitive
        status = await self._ask_gateway()
        if status is not None:
            return self._verdict(status.status, status.reason)
        self._enter(PaymentPhase.MANUAL_REVIEW, "manual review", error)
        definitive = await self._wait_for_definitive_callback(timeout=None)
        if definitive is not None:
            return definitive
        assert self._resolve is not None
        if self._resolve.approve:
            self._succeeded = True
            return OutcomeStatus.SUCCEEDED, None
        return OutcomeStatus.FAILED, "declined in manual review"

    async def _wait_for_definitive_callback(self, *, timeout: timedelta | None) -> Ending | None:
        """Wait for a callback other than ERROR, an operator's verdict, a cancel, or the time."""
        deadline = None if timeout is None else workflow.now() + timeout
        while True:
            try:
                await workflow.wait_condition(
                    lambda: (
                        self._cancel is not None
                        or self._resolve is not None
                        or self._has_callback()
                    ),
                    timeout=None if deadline is None else max(deadline - workflow.now(), _TICK),
                )
            except TimeoutError:
                return None
            self._check_cancel(callbacks_first=True)
            if self._resolve is not None and not self._has_callback():
                return None
            callback = self._next_callback()
            if callback.status != CallbackStatus.ERROR:
                return self._verdict(callback.status, callback.reason)

    async def _ask_gateway(self) -> GatewayStatus | None:
        try:
            # The gateway is a remote service: an ordinary activity, retried by the server.
            status: GatewayStatus = await workflow.execute_activity(
                "query_gateway_status",
                GatewayStatusInput(payment_id=self._payment.payment_id),
                result_type=GatewayStatus,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=STATUS_QUERY_RETRY,
            )
        except ActivityError as exc:
            self._step("gateway status unknown", str(exc.cause or exc))
            return None
        self._check_cancel()
        return status if status.status is not None else None

    def _verdict(self, status: CallbackStatus | None, reason: str | None) -> Ending:
        if status == CallbackStatus.AUTHORIZED:
            self._succeeded = True
            if self._cancel is not None:
                self._step("cancel ignored", "the authorization arrived before it")
            return OutcomeStatus.SUCCEEDED, None
        return OutcomeStatus.FAILED, f"declined: {reason}" if reason else "declined"

    # -- endings -----------------------------------------------------------------------------

    def _compensate_with(
        self,
        name: str,
        activity: str,
        arg: Any,
        *,
        remote: bool,
        after: asyncio.Task[Authorization] | None = None,
    ) -> None:
        async def run() -> None:
            if after is not None:
                await self._authorization_answered(after)
            if remote:
                await workflow.execute_activity(
                    activity,
                    arg,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=COMPENSATION_RETRY,
                )
            else:
                await self._call(
                    activity,
                    arg,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=COMPENSATION_RETRY,
                )

        self._compensations.append((name, run))

    async def _authorization_answered(self, authorize: asyncio.Task[Authorization]) -> None:
        """Wait for the authorisation request's real end, so that the void comes after any
        grant: a cancelled request is seen through to the gateway's answer."""
        if authorize.done():
            return  # its answer came while the saga was still looking
        self._step("void deferred", "until the gateway answers the authorization request")
        try:
            authorization = await authorize
        except ActivityError as exc:
            self._step("authorization ended", str(exc.cause or exc))
            return
        self._state.gateway_ref = authorization.gateway_ref
        self._step("authorization answered", f"{authorization.gateway_ref}, to be voided")

    async def _compensate(self) -> None:
        # Reverse order of what was done; each compensation is idempotent on its own, so a
        # replayed or retried one changes nothing the second time.
        while self._compensations:
            name, run = self._compensations.pop()
            await run()
            self._step("compensated", name)

    async def _notify(self, status: OutcomeStatus, reason: str | None) -> None:
        payment = self._payment
        try:
            await self._call(
                "notify_customer",
                NotifyInput(
                    payment_id=payment.payment_id,
                    account_id=payment.account_id,
                    status=status,
                    reason=reason,
                    amount_minor=payment.amount_minor,
                    currency=payment.currency,
                ),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=NOTIFY_RETRY,
            )
        except ActivityError as exc:
            # A lost notification must not hold back the outcome.
            self._step("notification failed", str(exc.cause or exc))
            return
        self._step("customer notified", status.value)

    async def _finish(self, status: OutcomeStatus, reason: str | None) -> PaymentOutcome:
        payment = self._payment
        outcome = PaymentOutcome(
            event_id=outcome_event_id(payment.payment_id, status),
            payment_id=payment.payment_id,
            status=status,
            reason=reason,
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            workflow_id=workflow.info().workflow_id,
            created_at=payment.created_at,
            completed_at=workflow.now(),
        )
        # An ordinary activity even in the saga: a local activity may run again when its
        # workflow task is retried, and the outcome record must reach the topic once.
        await workflow.execute_activity(
            "publish_outcome",
            PublishOutcomeInput(outcome=outcome),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=PUBLISH_RETRY,
        )
        self._state.reason = reason
        self._enter(PaymentPhase(status.value), "outcome published", reason)
        workflow.logger.info("payment %s ended %s", payment.payment_id, status)
        return outcome

    # -- the foundation slice, kept for executions recorded before SAGA_PATCH ---------------

    async def _run_slice(self) -> PaymentOutcome:
        self._enter(PaymentPhase.PROCESSING, "received")
        verdict = await self._validate()
        if not verdict.ok:
            return await self._finish(OutcomeStatus.REJECTED, verdict.reason)
        return await self._finish(OutcomeStatus.SUCCEEDED, None)

    # -- helpers -----------------------------------------------------------------------------

    async def _call(
        self,
        activity: str,
        arg: Any,
        *,
        start_to_close_timeout: timedelta,
        retry_policy: RetryPolicy,
        result_type: type | None = None,
    ) -> Any:
        """Run one of the worker's own short, idempotent activities (ledger, notifications).

        The saga runs them as local activities: they are short, idempotent and local to the
        worker, and running several in one workflow task halves the round trips to the
        server. The slice scheduled them as ordinary activities, and its recorded histories
        must replay as they were written.
        """
        if self._saga:
            return await workflow.execute_local_activity(
                activity,
                arg,
                result_type=result_type,
                start_to_close_timeout=start_to_close_timeout,
                retry_policy=retry_policy,
            )
        return await workflow.execute_activity(
            activity,
            arg,
            result_type=result_type,
            start_to_close_timeout=start_to_close_timeout,
            retry_policy=retry_policy,
        )

    async def _validate(self) -> ValidationVerdict:
        verdict: ValidationVerdict = await self._call(
            "validate_payment",
            ValidatePaymentInput(payment=self._payment),
            result_type=ValidationVerdict,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=LEDGER_RETRY,
        )
        return verdict

    def _first_time(self, event_id: str) -> bool:
        if event_id in self._seen_events:
            return False
        self._seen_events.add(event_id)
        return True

    def _has_callback(self) -> bool:
        return self._handled_callbacks < len(self._callbacks)

    def _next_callback(self) -> GatewayCallback:
        callback = self._callbacks[self._handled_callbacks]
        self._handled_callbacks += 1
        return callback

    def _check_cancel(self, *, callbacks_first: bool = False) -> None:
        """Raise :class:`_Cancelled` if a cancel is in; with ``callbacks_first``, callbacks
        that arrived before the cancel are handled first (an authorisation that came in
        before the cancel wins)."""
        if self._cancel is None or self._succeeded:
            return
        if callbacks_first and self._has_callback() and self._handled_callbacks < self._cancel_at:
            return
        raise _Cancelled

    def _terminal(self) -> bool:
        return self._state.status not in (
            PaymentPhase.PENDING,
            PaymentPhase.PROCESSING,
            PaymentPhase.AWAITING_CALLBACK,
            PaymentPhase.MANUAL_REVIEW,
        )

    def _step(self, name: str, detail: str | None = None) -> None:
        self._state.steps.append(Step(name=name, at=workflow.now(), detail=detail))

    def _enter(self, phase: PaymentPhase, step: str, detail: str | None = None) -> None:
        self._state.status = phase
        self._step(step, detail)
        if self._saga:
            updates = [PAYMENT_STATUS.value_set(phase.value)]
            if not self._merchant_set:
                # With the first status, in the same command: one visibility write fewer.
                updates.append(MERCHANT_ID.value_set(self._payment.merchant_id))
                self._merchant_set = True
            workflow.upsert_search_attributes(updates)
