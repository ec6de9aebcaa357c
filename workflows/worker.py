"""The Temporal worker: registers the payment workflows and their activities on ``payments``."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaProducer
from temporalio.client import Client
from temporalio.worker import Worker

from bridge.codec import Codec
from bridge.metrics import WorkerMetrics
from workflows.activities import LedgerActivities, OutcomeActivities
from workflows.ledger import Ledger
from workflows.payment import PaymentWorkflow

WORKFLOWS = [PaymentWorkflow]


@contextlib.asynccontextmanager
async def open_worker(
    client: Client,
    *,
    task_queue: str,
    ledger: Ledger,
    producer: AIOKafkaProducer,
    outcomes_topic: str,
    metrics: WorkerMetrics | None = None,
    codec: Codec | None = None,
) -> AsyncIterator[Worker]:
    """A running worker; on exit it finishes its tasks and stops polling."""
    ledger_activities = LedgerActivities(ledger)
    outcome_activities = OutcomeActivities(
        producer, topic=outcomes_topic, codec=codec or Codec(), metrics=metrics
    )
    # Ledger calls are short blocking SQLite calls: a small thread pool runs them.
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        worker = Worker(
            client,
            task_queue=task_queue,
            workflows=WORKFLOWS,
            activities=[ledger_activities.validate_payment, outcome_activities.publish_outcome],
            activity_executor=executor,
        )
        async with worker:
            yield worker
