"""``RecurringPaymentWorkflow``: a contract of ``terms`` payments, one every ``period``.

Id ``recurring-{subscription_id}``. Each term is a child ``PaymentWorkflow`` (id
``payment-{subscription_id}-t{term:03d}``), so every charge goes through the whole saga and
publishes its own outcome. ``cancel`` ends the contract after the current term;
``continue_as_new`` every ``terms_per_run`` terms keeps each run's history short.
"""

from __future__ import annotations

import asyncio
import contextlib

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from schemas.events import PaymentCreated, PaymentOutcome
    from schemas.ids import payment_workflow_id, term_payment_id
    from schemas.workflow_api import (
        Charge,
        PaymentWorkflowInput,
        RecurringCancelSignal,
        RecurringInput,
        RecurringState,
    )


@workflow.defn(name="RecurringPaymentWorkflow")
class RecurringPaymentWorkflow:
    @workflow.init
    def __init__(self, input: RecurringInput) -> None:
        self._input = input
        self._next_term = input.next_term
        self._charges = list(input.charges)
        self._cancel_requested = input.cancel_requested
        self._done = False

    @workflow.run
    async def run(self, input: RecurringInput) -> RecurringState:
        terms_this_run = 0
        while self._next_term <= input.terms and not self._cancel_requested:
            if terms_this_run >= input.terms_per_run or (
                workflow.info().is_continue_as_new_suggested()
            ):
                workflow.continue_as_new(
                    input.model_copy(
                        update={
                            "next_term": self._next_term,
                            "charges": self._charges,
                            "cancel_requested": self._cancel_requested,
                        }
                    )
                )
            await self._charge(self._next_term)
            self._next_term += 1
            terms_this_run += 1
            if self._next_term > input.terms:
                break
            # The contract ends early only between terms: a cancel during a term lets it finish.
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self._cancel_requested, timeout=input.period)
        self._done = True
        workflow.logger.info(
            "contract %s ended after %d charges", input.subscription_id, len(self._charges)
        )
        return self.status()

    async def _charge(self, term: int) -> None:
        contract = self._input
        payment_id = term_payment_id(contract.subscription_id, term)
        payment = PaymentCreated(
            event_id=f"{workflow.info().workflow_id}/term-{term}",
            payment_id=payment_id,
            account_id=contract.account_id,
            merchant_id=contract.merchant_id,
            amount_minor=contract.amount_minor,
            currency=contract.currency,
            method=contract.method,
            created_at=workflow.now(),
            metadata={"subscription_id": contract.subscription_id, "term": str(term)},
        )
        outcome: PaymentOutcome = await workflow.execute_child_workflow(
            "PaymentWorkflow",
            PaymentWorkflowInput(
                payment=payment,
                callback_timeout=contract.callback_timeout,
                stale_retry_delay=contract.stale_retry_delay,
            ),
            id=payment_workflow_id(payment_id),
            result_type=PaymentOutcome,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            # A term in flight keeps going if the contract is terminated: money may be moving.
            parent_close_policy=ParentClosePolicy.ABANDON,
        )
        self._charges.append(Charge(term=term, payment_id=payment_id, status=outcome.status))
        if workflow.cancellation_reason() is not None:
            # The contract was cancelled through Temporal while this term ran. The cancel
            # reached the term's payment, which now ends its own way (compensated, one
            # CANCELLED outcome, its run Completed) instead of failing this await: the
            # contract still ends here, cancelled, and charges no further term.
            raise asyncio.CancelledError("contract cancelled through Temporal")

    @workflow.signal(name="cancel")
    def cancel(self, signal: RecurringCancelSignal) -> None:
        self._cancel_requested = True

    @workflow.query(name="status")
    def status(self) -> RecurringState:
        return RecurringState(
            subscription_id=self._input.subscription_id,
            terms=self._input.terms,
            next_term=self._next_term,
            charges=self._charges,
            cancel_requested=self._cancel_requested,
            done=self._done,
        )
