"""``paybridge_manual_review_payments``: how many payments wait for an operator's verdict.

The worker counts them every ``interval`` seconds through Temporal's visibility store (the
``PaymentStatus`` search attribute the workflows set), one ``count_workflows`` call: no workflow
code is involved, and the number is the one `paybridge review list` shows. Each worker of the
task queue reports the same count; the alert takes the largest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry, Gauge
from temporalio.client import Client
from temporalio.service import RPCError

from schemas.workflow_api import manual_review_query

log = logging.getLogger(__name__)

REFRESH_SECONDS = 30.0


class ManualReviewGauge:
    def __init__(self, client: Client, registry: CollectorRegistry, *, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue
        self.gauge = Gauge(
            "paybridge_manual_review_payments",
            "Payments waiting in MANUAL_REVIEW for `paybridge resolve`, counted through the "
            "PaymentStatus search attribute every 30 s.",
            ["task_queue"],
            registry=registry,
        )
        self._failing = False

    async def refresh(self) -> int | None:
        """Count now; None (and the last value kept) when visibility does not answer."""
        try:
            count = (await self.client.count_workflows(manual_review_query(self.task_queue))).count
        except RPCError as exc:
            if not self._failing:
                log.warning("cannot count payments in manual review: %s", exc.message)
            self._failing = True
            return None
        self._failing = False
        self.gauge.labels(task_queue=self.task_queue).set(count)
        return count

    async def run(self, interval: float = REFRESH_SECONDS) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def manual_review_gauge(
    client: Client,
    registry: CollectorRegistry,
    *,
    task_queue: str,
    interval: float = REFRESH_SECONDS,
) -> AsyncIterator[ManualReviewGauge]:
    """Keeps the gauge up to date while the context is open."""
    gauge = ManualReviewGauge(client, registry, task_queue=task_queue)
    task = asyncio.create_task(gauge.run(interval), name="paybridge-manual-review-gauge")
    try:
        yield gauge
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
