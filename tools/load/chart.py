"""The PNG chart of a load run: throughput, payments in flight, and latency, second by second."""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

SMOOTHING = 5  # seconds of the rolling mean drawn over the completions


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms / 1000:,.1f} s" if ms >= 10_000 else f"{ms:,.0f} ms"


def _rolling(values: list[int], window: int) -> list[float]:
    sums = [0, *accumulate(values)]
    return [
        (sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1)
        for i in range(len(values))
    ]


def write_chart(report: dict[str, Any], path: Path) -> None:
    """Top: payments/s produced and completed, and payments in flight (right axis).
    Bottom: p50, p99 and max latency of the outcomes read in each second (log scale)."""
    rows = report["timeline"]
    t = [row["t"] for row in rows]
    produced = [row["produced"] for row in rows]
    completed = [row["completed"] for row in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5), dpi=110)

    top.plot(t, produced, label="produced / s", color="#7f7f7f", lw=1.0)
    top.plot(t, completed, color="#1f77b4", lw=0.6, alpha=0.35)
    top.plot(
        t,
        _rolling(completed, SMOOTHING),
        label=f"completed / s ({SMOOTHING} s mean)",
        color="#1f77b4",
        lw=2.0,
    )
    peak_done, peak_sent = max(completed, default=0), max(produced, default=0)
    if peak_sent > 3 * max(peak_done, 1):
        # A flat-out burst would flatten everything else: clip it and say so.
        top.set_ylim(0, max(peak_done, 1) * 1.6)
        top.annotate(
            f"produced peaks at {peak_sent:,}/s (off scale)",
            xy=(0.01, 0.93),
            xycoords="axes fraction",
            fontsize=8,
            color="#555555",
        )
    else:
        top.set_ylim(bottom=0)
    top.set_ylabel("payments / s")
    top.grid(alpha=0.3)
    inflight = [s - d for s, d in zip(accumulate(produced), accumulate(completed), strict=True)]
    right = top.twinx()
    right.fill_between(t, inflight, color="#ff7f0e", alpha=0.12, step="post")
    right.step(
        t, inflight, where="post", color="#ff7f0e", lw=1.0, ls="--", label="in flight (right)"
    )
    right.set_ylabel("payments in flight")
    right.set_ylim(bottom=0)
    handles = top.get_legend_handles_labels()
    extra = right.get_legend_handles_labels()
    top.legend(handles[0] + extra[0], handles[1] + extra[1], loc="upper right", fontsize=8)

    for key, label, color in (
        ("max_ms", "max", "#d62728"),
        ("p99_ms", "p99", "#ff7f0e"),
        ("p50_ms", "p50", "#2ca02c"),
    ):
        points = [(r["t"], r[key] / 1000) for r in rows if r[key] is not None]
        bottom.plot(
            [p[0] for p in points], [p[1] for p in points], label=label, color=color, lw=1.3
        )
    bottom.set_ylabel("end-to-end latency (s)")
    bottom.set_xlabel("seconds since start (latency of the outcomes read in that second)")
    if any(r["max_ms"] for r in rows):
        bottom.set_yscale("log")
        bottom.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        # Label the 2s and 5s between the decades, not every minor tick.
        bottom.yaxis.set_minor_formatter(
            FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else "")
        )
    bottom.legend(loc="upper left", fontsize=8)
    bottom.grid(alpha=0.3, which="both")

    latency = report["latency"]
    dups = report["duplicates"]["by_payment_id"]
    fig.suptitle(
        f"{report['sent']:,} sent, {report['completed']:,} completed, "
        f"{report['missing']:,} missing, {dups:,} duplicates  |  "
        f"{report['throughput']['completed_per_s']:,.1f} completed/s  |  "
        f"p50 {_duration(latency['p50_ms'])}, p99 {_duration(latency['p99_ms'])}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
