"""What a load run saw: payments sent, outcomes matched to them, latencies, and the report.

End-to-end latency is measured as *arrival*: the wall-clock time the load generator read the
outcome minus the payment's ``created_at`` (both from the load generator's clock). The
workflow's own view (``completed_at - created_at``) is reported next to it.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.events import PaymentOutcome
from tools.load.mix import Planned

MISSING_SHOWN = 50


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Sent:
    created_at: float  # epoch seconds, from the payment
    intent: str


@dataclass
class Tracker:
    """Matches outcomes to the payments of one run and keeps per-second figures."""

    started: float = field(default_factory=time.time)
    sent: dict[str, Sent] = field(default_factory=dict)
    done: dict[str, PaymentOutcome] = field(default_factory=dict)
    arrived: dict[str, float] = field(default_factory=dict)  # payment id -> outcome read at
    seen_events: set[str] = field(default_factory=set)
    statuses: Counter[str] = field(default_factory=Counter)
    by_intent: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    duplicate_payments: int = 0  # extra outcomes for a payment that already had one
    duplicate_events: int = 0  # ... of which carried an outcome event_id seen before
    foreign: int = 0  # outcomes of payments this run did not send (other traffic)
    undecodable: int = 0
    latencies: list[float] = field(default_factory=list)  # arrival - created_at, seconds
    workflow_latencies: list[float] = field(default_factory=list)  # completed_at - created_at
    produced_at: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    completed_at: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    first_sent: float | None = None
    last_sent: float | None = None
    last_arrival: float | None = None

    def record_sent(self, planned: Planned, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        payment = planned.payment
        self.sent[payment.payment_id] = Sent(payment.created_at.timestamp(), planned.intent)
        self.produced_at[int(now - self.started)] += 1
        self.first_sent = self.first_sent or now
        self.last_sent = now

    def record_outcome(self, outcome: PaymentOutcome, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        sent = self.sent.get(outcome.payment_id)
        if sent is None:
            self.foreign += 1
            return
        if outcome.payment_id in self.done:
            self.duplicate_payments += 1
            if outcome.event_id in self.seen_events:
                self.duplicate_events += 1
            self.seen_events.add(outcome.event_id)
            return
        self.seen_events.add(outcome.event_id)
        self.done[outcome.payment_id] = outcome
        self.arrived[outcome.payment_id] = now
        self.statuses[outcome.status.value] += 1
        self.by_intent[sent.intent][outcome.status.value] += 1
        latency = max(0.0, now - sent.created_at)
        self.latencies.append(latency)
        self.workflow_latencies.append(max(0.0, outcome.completed_at.timestamp() - sent.created_at))
        self.completed_at[int(now - self.started)].append(latency)
        self.last_arrival = now

    @property
    def missing(self) -> int:
        return len(self.sent) - len(self.done)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.duplicate_payments == 0

    def recent_rate(self, *, window: int = 5, now: float | None = None) -> float:
        """Outcomes per second over the last ``window`` whole seconds."""
        second = int((time.time() if now is None else now) - self.started)
        seconds = range(max(0, second - window), second)
        return sum(len(self.completed_at.get(s, ())) for s in seconds) / max(1, len(seconds))

    def timeline(self) -> list[dict[str, Any]]:
        last = max([*self.produced_at, *self.completed_at], default=-1)
        rows = []
        for second in range(last + 1):
            lat = self.completed_at.get(second, [])
            rows.append(
                {
                    "t": second,
                    "produced": self.produced_at.get(second, 0),
                    "completed": len(lat),
                    "p50_ms": _ms(percentile(lat, 50)),
                    "p99_ms": _ms(percentile(lat, 99)),
                    "max_ms": _ms(max(lat, default=None)),
                }
            )
        return rows

    def report(self, *, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON report of the run."""
        end = self.last_arrival or self.last_sent or self.started
        begin = self.first_sent or self.started
        elapsed = max(1e-9, end - begin)
        send_span = max(1e-9, (self.last_sent or begin) - begin)
        missing_ids = sorted(set(self.sent) - set(self.done))
        return {
            "config": config or {},
            "started_at": self.started,
            "sent": len(self.sent),
            "completed": len(self.done),
            "by_status": dict(sorted(self.statuses.items())),
            "by_intent": {k: dict(sorted(v.items())) for k, v in sorted(self.by_intent.items())},
            "missing": self.missing,
            "missing_ids": missing_ids[:MISSING_SHOWN],
            "duplicates": {
                "by_payment_id": self.duplicate_payments,
                "by_event_id": self.duplicate_events,
            },
            "foreign_outcomes": self.foreign,
            "undecodable_outcomes": self.undecodable,
            "elapsed_s": round(elapsed, 3),
            "throughput": {
                "produced_per_s": round(len(self.sent) / send_span, 2) if self.sent else 0.0,
                "completed_per_s": round(len(self.done) / elapsed, 2),
            },
            "latency": {
                "basis": "outcome arrival at loadgen - payment created_at",
                **latency_summary(self.latencies),
            },
            "workflow_latency": {
                "basis": "outcome completed_at - payment created_at",
                **latency_summary(self.workflow_latencies),
            },
            "timeline": self.timeline(),
            "ok": self.ok,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def latency_summary(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50_ms": _ms(percentile(values, 50)),
        "p95_ms": _ms(percentile(values, 95)),
        "p99_ms": _ms(percentile(values, 99)),
        "max_ms": _ms(max(values, default=None)),
    }
