"""What the worker reports (docs/contract.md names): outcomes published and end-to-end latency.

Metrics are created against an injected ``CollectorRegistry`` so that tests and the dev stack
(bridge and worker in one process) each get their own set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from plumbing.metrics import dlq_records

END_TO_END_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class WorkerMetrics:
    """What the worker's activities report."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes_published = Counter(
            "paybridge_outcomes_published_total",
            "Payment outcomes published to the outcomes topic.",
            ["status"],
            registry=registry,
        )
        self.end_to_end = Histogram(
            "paybridge_payment_end_to_end_seconds",
            "From the payment's created_at to its outcome being published.",
            ["status"],
            buckets=END_TO_END_BUCKETS,
            registry=registry,
        )
        self.producers_replaced = Counter(
            "paybridge_outcome_producer_replaced_total",
            "Outcome (and simulated-gateway callback) producers replaced because the broker no "
            "longer knew their idempotence state (or a send hung); a few across broker restarts "
            "is expected, a steady rise is not.",
            registry=registry,
        )
        # Early callbacks and cancels whose payment never came (reason "orphan").
        self.dlq_records = dlq_records(registry)

    def outcome_published(self, status: str, *, seconds: float) -> None:
        self.outcomes_published.labels(status=status).inc()
        self.end_to_end.labels(status=status).observe(seconds)
