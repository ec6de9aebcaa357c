"""paybridge's Temporal side: the payment workflows, their activities and the worker.

Workflow modules are deterministic and replayed; every I/O lives in ``workflows.activities``.
"""

from workflows.shared import TASK_QUEUE

__all__ = ["TASK_QUEUE"]
