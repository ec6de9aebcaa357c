"""End-to-end benchmark of paybridge on the dev stack, next to the Temporal-only ceiling.

    .venv/bin/python benchmarks/e2e.py --quick      # ~2 minutes
    .venv/bin/python benchmarks/e2e.py              # ~12 minutes, steadier figures

One process starts the dev stack (``open_dev_stack``: Temporal dev server, Kafka-protocol
broker, worker, bridge, simulated gateway answering every authorisation after ~100 ms) on free
ports, then measures, in this order and on the same stack:

1. **Temporal-only ceiling**: N payments started flat out by the SDK with the bridge's own
   start call (``TemporalCalls.signal_with_start``: same workflow, same input, same id policy)
   and at most ``PAYBRIDGE_MAX_INFLIGHT`` starts in flight, as the bridge allows. N is sized
   from a short probe so that the burst lasts about ``--ceiling-seconds``. Throughput = payments
   / (first start -> last outcome read).
2. **Bridge flat out**: the same N payments produced to ``payments.created`` as fast as possible.
   Steps 1 and 2 alternate ``--pairs`` times and the best of each is reported (every run is
   listed): the machine's other load drifts over minutes, and side-by-side pairs are what make
   the ratio meaningful.
3. **Sustained rate**, for both start paths side by side: at each rate (from
   ``--start-factor`` of the flat-out ceiling, 80% quick, 60% full, up in steps of 10%; down by
   x0.7 while nothing passes) one paced run of ``--step-seconds`` through the SDK, then one
   through Kafka and the bridge. A run passes when no payment is missing or duplicated and
   latency stays bounded: the overall p99 is under ``--p99-limit``, and the median latency of
   the last third of the payments (by send time) is at most 2x that of the first third + 1 s (a
   queue that keeps growing shows up there; medians, because a step on a slow machine has too
   few payments for a stable p99 per third). Each path's sustained rate is its highest passing
   rate. A paced rate sustains less than a burst completes (a burst overlaps everything), so
   the like-for-like ratio is bridge sustained / Temporal-only sustained; the ratio to the
   flat-out ceiling is printed too.
4. **80% of the bridge's sustained rate**: one more paced run, whose p50/p99 are reported.

Every payment is an ordinary one (known account, supported currency, approved by the
gateway); gateway callbacks travel through Kafka and the bridge in every mode (they are part of
the saga); only the *start* path differs between the two modes. Outcomes are read and matched by
the load generator in both modes (``tools.load.generator``), latency = outcome read -
``created_at``.
The load generator shares this process (and its GIL) with the worker and the bridge, in both
modes alike: compare the ratio, not the absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from temporalio.client import Client
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

from bridge.metrics import BridgeMetrics
from bridge.temporal_calls import TemporalCalls
from plumbing.settings import Settings
from schemas.ids import payment_workflow_id
from schemas.workflow_api import SIGNAL_PAYMENT_CREATED, PaymentCreatedSignal, payment_input
from tools.devstack import open_dev_stack
from tools.load.generator import LoadConfig, Sender, run_load
from tools.load.mix import Mix, Planned
from tools.load.stats import Tracker, percentile
from tools.processes import free_port

log = logging.getLogger("benchmark")

PLAIN = Mix.parse("none")  # ordinary payments only, all Avro: the same work in every mode


# -- the Temporal-only sender ----------------------------------------------------------------


class TemporalSender:
    """Starts each payment's workflow with the bridge's own start call, ``limit`` at a time."""

    def __init__(self, settings: Settings, client: Client, *, limit: int) -> None:
        self.settings = settings
        self.calls = TemporalCalls(
            client,
            task_queue=settings.temporal_task_queue,
            metrics=BridgeMetrics(CollectorRegistry()),
        )
        self.slots = asyncio.Semaphore(limit)
        self.tasks: set[asyncio.Task[None]] = set()

    async def send(self, planned: Planned) -> None:
        await self.slots.acquire()
        task = asyncio.create_task(self._start(planned))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _start(self, planned: Planned) -> None:
        try:
            p = planned.payment
            await self.calls.signal_with_start(
                payment_workflow_id(p.payment_id),
                workflow_input=payment_input(self.settings, p),
                signal=SIGNAL_PAYMENT_CREATED,
                arg=PaymentCreatedSignal(payment=p),
            )
        finally:
            self.slots.release()

    async def flush(self) -> None:
        await asyncio.gather(*list(self.tasks))


def temporal_sender(settings: Settings, client: Client) -> Any:
    @contextlib.asynccontextmanager
    async def open_sender() -> AsyncIterator[Sender]:
        sender = TemporalSender(settings, client, limit=settings.max_inflight)
        try:
            yield sender
        finally:
            await sender.flush()

    return open_sender


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    rate: float | None  # offered rate (None: flat out)
    report: dict[str, Any]
    p50_first: float | None = None  # seconds, payments of the first third by send time
    p50_last: float | None = None
    passed: bool | None = None

    @property
    def throughput(self) -> float:
        return float(self.report["throughput"]["completed_per_s"])

    def line(self) -> str:
        lat = self.report["latency"]
        offered = "flat out" if self.rate is None else f"{self.rate:7.1f}/s"
        verdict = {None: "", True: "  pass", False: "  FAIL"}[self.passed]
        thirds = ""
        if self.p50_first is not None and self.p50_last is not None:
            first, last = self.p50_first * 1000, self.p50_last * 1000
            thirds = f"  p50 first/last third {first:,.0f}/{last:,.0f} ms"
        return (
            f"{self.label:<22} offered {offered:>10}  sent {self.report['sent']:>5}  "
            f"completed {self.throughput:6.1f}/s  missing {self.report['missing']}  "
            f"dup {self.report['duplicates']['by_payment_id']}  "
            f"p50 {lat['p50_ms']} ms  p99 {lat['p99_ms']} ms{thirds}{verdict}"
        )


def best_run(runs: list[Run]) -> Run:
    return max(runs, key=lambda run: run.throughput)


def thirds(tracker: Tracker) -> tuple[float | None, float | None]:
    """p50 of the first and of the last third of the completed payments, by send time."""
    pairs = sorted(
        (tracker.sent[pid].created_at, tracker.arrived[pid] - tracker.sent[pid].created_at)
        for pid in tracker.arrived
    )
    third = len(pairs) // 3
    if third == 0:
        return None, None
    first = [lat for _, lat in pairs[:third]]
    last = [lat for _, lat in pairs[-third:]]
    return percentile(first, 50), percentile(last, 50)


async def measure(
    settings: Settings,
    label: str,
    config: LoadConfig,
    *,
    sender: Any = None,
    p99_limit: float | None = None,
) -> Run:
    tracker = await run_load(settings, config, sender=sender)
    run = Run(label, config.rate, tracker.report(config=config.describe()))
    run.p50_first, run.p50_last = thirds(tracker)
    if p99_limit is not None:
        p99 = percentile(tracker.latencies, 99)
        run.passed = bool(
            tracker.ok
            and p99 is not None
            and p99 <= p99_limit
            and run.p50_first is not None
            and run.p50_last is not None
            and run.p50_last <= 2 * run.p50_first + 1.0
        )
    print(run.line(), flush=True)
    return run


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        PAYBRIDGE_METRICS_PORT=free_port(),
        PAYBRIDGE_WEBHOOK_PORT=free_port(),
        PAYBRIDGE_SDK_METRICS_PORT=0,  # no second runtime: the quiet default one below
    )
    host = machine()
    print(f"machine: {host['nproc']} CPUs, {host['cpu']}, load {host['load_average_at_start']}")
    async with open_dev_stack(settings, data_dir=None) as stack:
        direct = temporal_sender(settings, stack.client)
        timeout = 60.0  # idle: no outcome for this long

        def config(**kwargs: Any) -> LoadConfig:
            return LoadConfig(mix=PLAIN, timeout=timeout, settle=0.5, **kwargs)

        await measure(settings, "warm-up (bridge)", config(count=args.probe))
        probe = await measure(settings, "probe (Temporal)", config(count=args.probe), sender=direct)
        burst = max(args.probe, round(probe.throughput * args.ceiling_seconds))
        # Interleaved pairs, best of each: other load on the machine drifts over minutes.
        ceilings: list[Run] = []
        flats: list[Run] = []
        for n in range(1, args.pairs + 1):
            ceilings.append(
                await measure(settings, f"Temporal-only #{n}", config(count=burst), sender=direct)
            )
            flats.append(await measure(settings, f"bridge flat out #{n}", config(count=burst)))
        ceiling = best_run(ceilings)
        flat = best_run(flats)
        if not ceiling.throughput:
            raise SystemExit("no payment completed: is the worker able to run the saga?")

        search = await find_sustained(settings, args, ceiling.throughput, config, direct)
        at80: Run | None = None
        if search.bridge is not None and search.bridge.rate is not None:
            at80 = await measure(
                settings,
                "bridge 80% sustained",
                config(duration=args.step_seconds, rate=round(search.bridge.rate * 0.8, 1)),
            )

    result = {
        "machine": host,
        "mode": "quick" if args.quick else "full",
        "temporal_only_ceiling_per_s": ceiling.throughput,
        "temporal_only_runs_per_s": [run.throughput for run in ceilings],
        "bridge_flat_out_runs_per_s": [run.throughput for run in flats],
        "bridge_flat_out_per_s": flat.throughput,
        "flat_out_ratio": round(flat.throughput / ceiling.throughput, 3),
        "sustained_per_s": search.bridge.rate if search.bridge else None,
        "temporal_only_sustained_per_s": search.temporal.rate if search.temporal else None,
        # The search ran out of steps while still passing: the figures are lower bounds.
        "sustained_is_lower_bound": search.capped,
        "sustained_ratio_to_ceiling": _ratio(search.bridge, ceiling.throughput),
        "sustained_ratio_to_temporal_sustained": _ratio(
            search.bridge, search.temporal.rate if search.temporal else None
        ),
        "at_80_percent": (
            {
                "rate_per_s": at80.rate,
                "p50_ms": at80.report["latency"]["p50_ms"],
                "p99_ms": at80.report["latency"]["p99_ms"],
                "missing": at80.report["missing"],
            }
            if at80
            else None
        ),
        "runs": [
            {
                "label": run.label,
                "rate": run.rate,
                "passed": run.passed,
                "p50_first_third_ms": None if run.p50_first is None else run.p50_first * 1000,
                "p50_last_third_ms": None if run.p50_last is None else run.p50_last * 1000,
                **{k: v for k, v in run.report.items() if k not in ("timeline", "config")},
            }
            for run in (probe, *ceilings, *flats, *search.steps, *([at80] if at80 else []))
        ],
    }
    return result


def _ratio(run: Run | None, reference: float | None) -> float | None:
    if run is None or run.rate is None or not reference:
        return None
    return round(run.rate / reference, 3)


@dataclass
class Search:
    steps: list[Run]
    temporal: Run | None  # highest passing paced step, per start path
    bridge: Run | None
    capped: bool


async def find_sustained(
    settings: Settings, args: argparse.Namespace, ceiling: float, config: Any, direct: Any
) -> Search:
    """Paced steps at the same rates for both start paths, side by side (see module doc)."""
    search = Search([], None, None, capped=False)
    factor, going_up = args.start_factor, True
    for _ in range(args.max_steps):
        rate = round(ceiling * factor, 1)
        pair = []
        for label, sender in (("Temporal-only", direct), ("bridge", None)):
            step = await measure(
                settings,
                f"{label} {factor:.0%}",
                config(duration=args.step_seconds, rate=rate),
                sender=sender,
                p99_limit=args.p99_limit,
            )
            search.steps.append(step)
            pair.append(step)
        temporal, bridge = pair
        if temporal.passed:
            search.temporal = temporal
        if bridge.passed:
            search.bridge = bridge
        if temporal.passed or bridge.passed:
            if not going_up:
                return search
            factor += 0.1
        elif search.temporal or search.bridge:
            return search
        else:
            going_up = False
            factor *= 0.7
        if factor <= 0.05:
            return search
    search.capped = going_up
    return search


def summary(result: dict[str, Any]) -> str:
    lines = [
        "",
        f"Temporal-only ceiling (flat out): {result['temporal_only_ceiling_per_s']:.1f} payments/s "
        f"(best of {result['temporal_only_runs_per_s']})",
        f"bridge flat out                 : {result['bridge_flat_out_per_s']:.1f} payments/s "
        f"(best of {result['bridge_flat_out_runs_per_s']}; ratio {result['flat_out_ratio']:.2f})",
    ]
    at_least = ">= " if result["sustained_is_lower_bound"] else ""
    for name, key in (
        ("Temporal-only", "temporal_only_sustained_per_s"),
        ("bridge", "sustained_per_s"),
    ):
        value = result[key]
        shown = "no step passed" if value is None else f"{at_least}{value:.1f} payments/s"
        lines.append(f"sustained, {name:<13}: {shown}")
    lines.append(
        f"ratio bridge sustained / Temporal-only sustained: "
        f"{result['sustained_ratio_to_temporal_sustained']} (target >= 0.9)"
    )
    lines.append(
        f"ratio bridge sustained / Temporal-only ceiling  : {result['sustained_ratio_to_ceiling']}"
    )
    at80 = result["at_80_percent"]
    if at80:
        lines.append(
            f"bridge at 80% of sustained ({at80['rate_per_s']:.1f}/s): p50 {at80['p50_ms']} ms, "
            f"p99 {at80['p99_ms']} ms, missing {at80['missing']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~2 minutes instead of ~12")
    parser.add_argument("--ceiling-seconds", type=float, default=None)
    parser.add_argument("--step-seconds", type=float, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--pairs", type=int, default=None, help="ceiling/flat-out pairs")
    parser.add_argument("--start-factor", type=float, default=None, help="first step / ceiling")
    parser.add_argument("--probe", type=int, default=None, help="payments of warm-up and probe")
    parser.add_argument("--p99-limit", type=float, default=10.0, help="seconds")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    defaults = (
        {
            "ceiling_seconds": 8.0,
            "step_seconds": 10.0,
            "max_steps": 3,
            "probe": 20,
            "pairs": 1,
            "start_factor": 0.8,
        }
        if args.quick
        else {
            "ceiling_seconds": 30.0,
            "step_seconds": 30.0,
            "max_steps": 6,
            "probe": 60,
            "pairs": 3,
            "start_factor": 0.6,
        }
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    logging.basicConfig(level=logging.WARNING)
    # The SDK core writes its warnings to stdout; at saturation it warns about every slow
    # workflow task ("exceeded 5 seconds"), which would bury the figures.
    quiet = LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
    Runtime.set_default(Runtime(telemetry=TelemetryConfig(logging=quiet)))
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    started = time.monotonic()
    result = asyncio.run(benchmark(args))
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    print(summary(result))
    print(f"(took {timedelta(seconds=round(result['wall_seconds']))})")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
