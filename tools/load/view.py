"""How a load run looks in the terminal: the live progress line and the final table (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tools.load.stats import Tracker, percentile


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def progress(tracker: Tracker, *, target: int | None) -> RenderableType:
    """One line: produced, completed, completion rate over the last 5 s, p99 so far."""
    p99 = percentile(tracker.latencies, 99)
    produced = f"{len(tracker.sent):,}" + (f"/{target:,}" if target else "")
    line = Text.assemble(
        ("produced ", "dim"),
        (produced, "bold"),
        ("  completed ", "dim"),
        (f"{len(tracker.done):,}", "bold green"),
        ("  rate ", "dim"),
        (f"{tracker.recent_rate():,.1f}/s", "bold"),
        ("  p99 so far ", "dim"),
        (_fmt_ms(None if p99 is None else p99 * 1000), "bold"),
    )
    if tracker.duplicate_payments:
        line.append(f"  duplicates {tracker.duplicate_payments}", style="bold red")
    return line


def summary(report: dict[str, Any]) -> RenderableType:
    """The end-of-run table."""
    table = Table(title="paybridge loadgen", show_header=False, title_justify="left")
    table.add_column("what", style="dim")
    table.add_column("value", justify="right")
    table.add_row("sent", f"{report['sent']:,}")
    table.add_row("completed", f"{report['completed']:,}")
    for status, count in report["by_status"].items():
        table.add_row(f"  {status}", f"{count:,}")
    missing, dups = report["missing"], report["duplicates"]
    table.add_row("missing", Text(f"{missing:,}", style="bold red" if missing else "green"))
    bad = dups["by_payment_id"]
    table.add_row(
        "duplicates (payment id / event id)",
        Text(f"{bad:,} / {dups['by_event_id']:,}", style="bold red" if bad else "green"),
    )
    throughput = report["throughput"]
    table.add_row("produced / s", f"{throughput['produced_per_s']:,.1f}")
    table.add_row("completed / s", f"{throughput['completed_per_s']:,.1f}")
    latency = report["latency"]
    for name in ("p50", "p95", "p99", "max"):
        table.add_row(f"latency {name}", _fmt_ms(latency[f"{name}_ms"]))
    table.caption = f"latency = {latency['basis']}"
    parts: list[RenderableType] = [table]
    intents = {k: v for k, v in report["by_intent"].items() if k != "normal"}
    if intents:
        by_intent = Table(title="statuses by intent", title_justify="left")
        by_intent.add_column("intent")
        by_intent.add_column("statuses")
        for intent, statuses in intents.items():
            by_intent.add_row(intent, ", ".join(f"{s} {n}" for s, n in statuses.items()))
        parts.append(by_intent)
    return Group(*parts)
