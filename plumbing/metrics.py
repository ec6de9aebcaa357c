"""Metrics that both services report, so that each registry has them once.

``paybridge_dlq_records_total`` counts dead letters: the bridge writes those it cannot decode,
validate or verify, the worker the early callbacks and cancels whose payment never came
(``orphan``). In ``paybridge dev`` both run in one process against one registry, hence the
get-or-create.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter

_DLQ_RECORDS: WeakKeyDictionary[CollectorRegistry, Counter] = WeakKeyDictionary()


def dlq_records(registry: CollectorRegistry) -> Counter:
    """``paybridge_dlq_records_total{topic,reason}`` of ``registry``."""
    counter = _DLQ_RECORDS.get(registry)
    if counter is None:
        counter = _DLQ_RECORDS[registry] = Counter(
            "paybridge_dlq_records_total",
            "Records sent to the dead-letter topic, by source topic and reason.",
            ["topic", "reason"],
            registry=registry,
        )
    return counter
