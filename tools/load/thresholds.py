"""Pass/fail thresholds on a load run's latency (as k6's thresholds), and its Markdown summary.

``--max-p50``, ``--max-p95`` and ``--max-p99`` take durations; a run whose arrival latency
percentile is above one of them fails (exit code 99, as k6 does for crossed thresholds), and
so does a run with a threshold but no outcome to measure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

THRESHOLD_EXIT_CODE = 99
PERCENTILES = ("p50", "p95", "p99")


@dataclass(frozen=True)
class Thresholds:
    """Upper bounds in seconds; None = no threshold."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    def given(self) -> dict[str, float]:
        limits = {"p50": self.p50, "p95": self.p95, "p99": self.p99}
        return {name: limit for name, limit in limits.items() if limit is not None}


def evaluate(report: dict[str, Any], thresholds: Thresholds) -> dict[str, dict[str, Any]]:
    """Each threshold with the measured value and whether it held; for the report."""
    results: dict[str, dict[str, Any]] = {}
    for name, limit in thresholds.given().items():
        value = report["latency"].get(f"{name}_ms")
        limit_ms = round(limit * 1000, 1)
        results[f"{name}_ms"] = {
            "limit_ms": limit_ms,
            "value_ms": value,
            "ok": value is not None and value <= limit_ms,
        }
    return results


def failures(results: dict[str, dict[str, Any]]) -> list[str]:
    """One phrase per crossed threshold, e.g. ``latency p99 1,234 ms > 500 ms``."""
    out = []
    for key, result in results.items():
        if result["ok"]:
            continue
        name = key.removesuffix("_ms")
        if result["value_ms"] is None:
            out.append(f"latency {name}: no outcome to measure (limit {result['limit_ms']:,} ms)")
        else:
            out.append(f"latency {name} {result['value_ms']:,} ms > {result['limit_ms']:,} ms")
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def markdown(report: dict[str, Any]) -> str:
    """A summary of the run for a pull request, a CI job summary or a wiki page."""
    thresholds = report.get("thresholds", {})
    passed = report["ok"] and all(result["ok"] for result in thresholds.values())
    config = report.get("config", {})
    lines = [
        f"# paybridge loadgen: {'passed' if passed else 'FAILED'}",
        "",
        ", ".join(f"{k} `{v}`" for k, v in config.items() if v is not None) or "(no settings)",
        "",
        "| | |",
        "|---|---:|",
        f"| sent | {report['sent']:,} |",
        f"| completed | {report['completed']:,} |",
        *(f"| &nbsp;&nbsp;{status} | {n:,} |" for status, n in report["by_status"].items()),
        f"| missing | {report['missing']:,} |",
        f"| duplicated (payment id) | {report['duplicates']['by_payment_id']:,} |",
        f"| produced / s | {report['throughput']['produced_per_s']:,.1f} |",
        f"| completed / s | {report['throughput']['completed_per_s']:,.1f} |",
        f"| elapsed | {report['elapsed_s']:,.1f} s |",
        "",
        f"Latency ({report['latency']['basis']}):",
        "",
        "| percentile | latency | threshold | |",
        "|---|---:|---:|:---:|",
    ]
    for name in (*PERCENTILES, "max"):
        value = report["latency"].get(f"{name}_ms")
        result = thresholds.get(f"{name}_ms")
        limit = f"≤ {_ms(result['limit_ms'])}" if result else ""
        verdict = ("pass" if result["ok"] else "**FAIL**") if result else ""
        lines.append(f"| {name} | {_ms(value)} | {limit} | {verdict} |")
    if report["missing_ids"]:
        shown = ", ".join(f"`{pid}`" for pid in report["missing_ids"][:10])
        lines += ["", f"Missing outcomes (first {min(10, report['missing'])}): {shown}"]
    return "\n".join(lines) + "\n"
