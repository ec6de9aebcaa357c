#!/usr/bin/env python3
"""Plot paybridge's throughput and latency over time from Prometheus range queries.

    .venv/bin/python scripts/plot_metrics.py --prometheus http://localhost:9090 \\
        --last 15m --output docs/img/throughput-latency.png

Top: events consumed, workflows started and outcomes published per second. Bottom: end-to-end
latency (payment ``created_at`` to outcome published) p50/p95/p99 and the record-to-Temporal
p99, from the same PromQL the Grafana overview dashboard uses.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes


@dataclass(frozen=True)
class Line:
    label: str
    expr: str
    style: str = "-"


def throughput(window: str) -> list[Line]:
    return [
        Line(
            "events in (all input topics)", f"sum(rate(paybridge_events_consumed_total[{window}]))"
        ),
        Line(
            "workflows started",
            f'sum(rate(paybridge_workflow_starts_total{{result="started"}}[{window}]))',
        ),
        Line("outcomes published", f"sum(rate(paybridge_outcomes_published_total[{window}]))"),
        Line("dead-lettered", f"sum(rate(paybridge_dlq_records_total[{window}]))", ":"),
    ]


def latency(window: str) -> list[Line]:
    def quantile(q: float, metric: str) -> str:
        return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[{window}])))"

    end_to_end = "paybridge_payment_end_to_end_seconds"
    return [
        Line("end-to-end p50", quantile(0.5, end_to_end)),
        Line("end-to-end p95", quantile(0.95, end_to_end)),
        Line("end-to-end p99", quantile(0.99, end_to_end)),
        Line("record to Temporal p99", quantile(0.99, "paybridge_event_to_temporal_seconds"), "--"),
    ]


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    if text[-1] not in units or not text[:-1].replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 15m or 1h")
    return float(text[:-1]) * units[text[-1]]


def query_range(
    base: str, expr: str, *, start: float, end: float, step: float
) -> list[tuple[datetime, float]]:
    """One series (the first) of a range query, NaN points left out."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as answer:
        body = json.load(answer)
    if body.get("status") != "success":
        raise SystemExit(f"Prometheus refused {expr}: {body.get('error')}")
    result = body["data"]["result"]
    if not result:
        return []
    points = [(datetime.fromtimestamp(float(t)), float(v)) for t, v in result[0]["values"]]
    return [(t, v) for t, v in points if math.isfinite(v)]


def with_gaps(
    points: list[tuple[datetime, float]], *, step: float
) -> tuple[list[datetime], list[float]]:
    """Times and values with a NaN wherever points are missing, so that the line breaks
    there instead of bridging a quiet period (a quantile has no value without traffic)."""
    times, values = [points[0][0]], [points[0][1]]
    for (before, _), (at, value) in itertools.pairwise(points):
        if (at - before).total_seconds() > 1.5 * step:
            times.append(before + (at - before) / 2)
            values.append(math.nan)
        times.append(at)
        values.append(value)
    return times, values


def plot(ax: Axes, base: str, lines: list[Line], *, start: float, end: float, step: float) -> int:
    drawn = 0
    for line in lines:
        points = query_range(base, line.expr, start=start, end=end, step=step)
        if points:
            times, values = with_gaps(points, step=step)
            ax.plot(times, values, line.style, label=line.label, linewidth=1.6)
            drawn += 1
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(loc="upper left", fontsize=9, ncols=2)
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus URL")
    parser.add_argument("--last", type=parse_duration, default=parse_duration("15m"))
    parser.add_argument("--end", type=float, default=None, help="Unix time [default: now]")
    parser.add_argument("--step", type=parse_duration, default=parse_duration("5s"))
    parser.add_argument(
        "--rate-window", default="30s", help="Range of rate(): at least 4 scrape intervals"
    )
    parser.add_argument("--title", default="paybridge: throughput and latency")
    parser.add_argument("--output", type=Path, default=Path("docs/img/throughput-latency.png"))
    args = parser.parse_args(argv)

    base = args.prometheus.rstrip("/")
    end = args.end or time.time()
    start = end - args.last
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    span = {"start": start, "end": end, "step": args.step}
    drawn = plot(top, base, throughput(args.rate_window), **span)
    drawn += plot(bottom, base, latency(args.rate_window), **span)
    if not drawn:
        print(f"no paybridge metrics in {base} over that time", file=sys.stderr)
        return 1
    top.set_ylabel("per second")
    top.set_ylim(bottom=0)
    top.set_title(f"Throughput (rate over {args.rate_window})", fontsize=10, loc="left")
    bottom.set_ylabel("seconds")
    bottom.set_yscale("log")
    bottom.set_title("Latency", fontsize=10, loc="left")
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    fig.suptitle(args.title)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
