"""The PNG chart of a load run: throughput and end-to-end latency, second by second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt


def write_chart(report: dict[str, Any], path: Path) -> None:
    """Two panels sharing the time axis: payments/s produced and completed; p50/p99/max."""
    rows = report["timeline"]
    t = [row["t"] for row in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5), dpi=110)
    top.plot(t, [r["produced"] for r in rows], label="produced / s", color="#7f7f7f", lw=1.2)
    top.plot(t, [r["completed"] for r in rows], label="completed / s", color="#1f77b4", lw=1.8)
    top.set_ylabel("payments / s")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)

    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(r["t"], r[key]) for r in rows if r[key] is not None]
        return [p[0] for p in points], [p[1] for p in points]

    for key, label, color in (
        ("max_ms", "max", "#d62728"),
        ("p99_ms", "p99", "#ff7f0e"),
        ("p50_ms", "p50", "#2ca02c"),
    ):
        xs, ys = series(key)
        bottom.plot(xs, ys, label=label, color=color, lw=1.4, marker=".", ms=3)
    bottom.set_ylabel("end-to-end latency (ms)")
    bottom.set_xlabel("seconds since start (latency of the outcomes read in that second)")
    bottom.legend(loc="upper left")
    bottom.grid(alpha=0.3)
    if any(r["max_ms"] for r in rows):
        bottom.set_yscale("log")
    latency = report["latency"]
    dups = report["duplicates"]["by_payment_id"]
    fig.suptitle(
        f"{report['sent']:,} sent, {report['completed']:,} completed, "
        f"{report['missing']:,} missing, {dups:,} duplicates  |  "
        f"{report['throughput']['completed_per_s']:,.1f}/s  |  "
        f"p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
