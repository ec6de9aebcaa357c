"""paybridge's Temporal side: the payment workflows, their activities and the worker.

Workflow modules (``payment``, ``fraud``, ``recurring``) are deterministic and replayed; every
I/O lives in ``activities`` (ledger, simulated gateway, notifications, Kafka). ``control`` and
``admin`` are the client side used by the CLI.
"""

from schemas.workflow_api import (
    SEARCH_ATTRIBUTES,
    TASK_QUEUE,
    PaymentPhase,
    PaymentState,
    PaymentWorkflowInput,
    RecurringInput,
    RecurringState,
    payment_input,
)

__all__ = [
    "SEARCH_ATTRIBUTES",
    "TASK_QUEUE",
    "PaymentPhase",
    "PaymentState",
    "PaymentWorkflowInput",
    "RecurringInput",
    "RecurringState",
    "payment_input",
]
