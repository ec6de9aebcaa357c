"""A fraud service that never answers: its ``FraudCheckWorkflow`` waits a day (a timer, so
that the time-skipping server can skip it), past the check's 10-minute execution timeout."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow


@workflow.defn(name="FraudCheckWorkflow")
class StuckFraudCheck:
    @workflow.run
    async def run(self, input: Any) -> None:
        await workflow.sleep(timedelta(days=1))
