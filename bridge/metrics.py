"""What the Kafka -> Temporal bridge reports (docs/contract.md names).

Metrics are created against an injected ``CollectorRegistry`` so that tests and the dev stack
(bridge and worker in one process) each get their own set. Label values are bounded: topics,
results, reasons and statuses come from fixed sets or from configuration.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from plumbing.metrics import dlq_records

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class BridgeMetrics:
    """What the Kafka -> Temporal bridge reports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events_consumed = Counter(
            "paybridge_events_consumed_total",
            "Records consumed from input topics, by how they ended.",
            ["topic", "result"],
            registry=registry,
        )
        self.workflow_starts = Counter(
            "paybridge_workflow_starts_total",
            "PaymentCreated records applied: started (a new run), deduplicated (the run existed: "
            "a redelivery, or a run an early callback started) or error.",
            ["result"],
            registry=registry,
        )
        self.signals = Counter(
            "paybridge_signals_total",
            "Callbacks and cancels sent to payment workflows: signalled (the run existed), "
            "started (no run yet: it started one that waits for its payment), closed (the "
            "payment had ended) or error.",
            ["signal", "result"],
            registry=registry,
        )
        self.dlq_records = dlq_records(registry)
        self.consumer_lag = Gauge(
            "paybridge_consumer_lag",
            "Records between the partition's end and the bridge's committed offset.",
            ["topic", "partition"],
            registry=registry,
        )
        self.inflight = Gauge(
            "paybridge_inflight_records",
            "Records fetched and not yet done (started, signalled or dead-lettered).",
            registry=registry,
        )
        self.event_to_temporal = Histogram(
            "paybridge_event_to_temporal_seconds",
            "From the record's timestamp to Temporal accepting the start or signal.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.temporal_retries = Counter(
            "paybridge_temporal_retries_total",
            "Temporal calls retried because Temporal was unavailable or overloaded.",
            ["reason"],
            registry=registry,
        )
        self.inflight_limit = Gauge(
            "paybridge_inflight_limit",
            "PAYBRIDGE_MAX_INFLIGHT: records in flight at which the bridge stops fetching.",
            registry=registry,
        )
        self.paused = Gauge(
            "paybridge_bridge_paused",
            "1 while the bridge has paused fetching: reason=saturated (every in-flight slot "
            "busy for 5 s, all partitions paused; the only reason since no record waits in the "
            "bridge for another).",
            ["reason"],
            registry=registry,
        )
        self.paused.labels(reason="saturated").set(0)
        self.producers_replaced = Counter(
            "paybridge_dlq_producer_replaced_total",
            "DLQ producers replaced because the broker no longer knew their idempotence state "
            "(or a send hung); a few across broker restarts is expected, a steady rise is not.",
            registry=registry,
        )
