"""The customer notification activity: tells the customer how their payment ended."""

from __future__ import annotations

from temporalio import activity

from schemas.events import OutcomeStatus
from workflows.models import NotifyInput
from workflows.simulations.notifications import Notification, NotificationSink

_ENDED = {
    OutcomeStatus.FAILED: "failed",
    OutcomeStatus.REJECTED: "was rejected",
    OutcomeStatus.CANCELLED: "was cancelled",
    OutcomeStatus.TIMED_OUT: "timed out",
}


class NotificationActivities:
    """Tells the customer how their payment ended."""

    def __init__(self, sink: NotificationSink) -> None:
        self.sink = sink

    @activity.defn(name="notify_customer")
    def notify_customer(self, input: NotifyInput) -> None:
        amount = f"{input.amount_minor} {input.currency} (minor units)"
        if input.status == OutcomeStatus.SUCCEEDED:
            text = f"Your payment {input.payment_id} of {amount} went through."
        else:
            why = f": {input.reason}" if input.reason else ""
            text = f"Your payment {input.payment_id} of {amount} {_ENDED[input.status]}{why}."
        self.sink.send(
            Notification(
                channel="email",
                to=f"{input.account_id}@customers.example",
                payment_id=input.payment_id,
                status=input.status.value,
                text=text,
            )
        )
