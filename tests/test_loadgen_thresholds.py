"""`paybridge loadgen --max-p50/--max-p95/--max-p99`: the run fails (exit 99, as k6 thresholds)
when a latency percentile is above its limit; a Markdown summary goes beside the JSON report."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner

from tests.support import Stack, running_bridge, running_worker
from tests.test_loadgen import _env
from tools.cli import main
from tools.load.thresholds import Thresholds, evaluate, failures, markdown


def test_thresholds_hold_or_fail_like_k6() -> None:
    report = {"latency": {"p50_ms": 120.0, "p95_ms": 900.0, "p99_ms": 1500.0}}
    results = evaluate(report, Thresholds(p50=0.2, p99=1.0))
    assert results == {
        "p50_ms": {"limit_ms": 200.0, "value_ms": 120.0, "ok": True},
        "p99_ms": {"limit_ms": 1000.0, "value_ms": 1500.0, "ok": False},
    }
    assert failures(results) == ["latency p99 1,500.0 ms > 1,000.0 ms"]
    nothing = evaluate({"latency": {"p99_ms": None}}, Thresholds(p99=1.0))
    assert failures(nothing) == ["latency p99: no outcome to measure (limit 1,000.0 ms)"]
    assert evaluate(report, Thresholds()) == {}


async def test_a_crossed_threshold_fails_the_run_and_the_summary_says_so(
    stack: Stack, tmp_path: Path
) -> None:
    report_path = tmp_path / "run.json"
    args = ["loadgen", "--count", "5", "--mix", "none", "--timeout", "60s", "--quiet"]
    args += ["--max-p50", "1h", "--max-p99", "1ms", "--report", str(report_path)]
    async with running_worker(stack), running_bridge(stack):
        result = await asyncio.to_thread(CliRunner().invoke, main, args, env=_env(stack.settings))
    assert result.exit_code == 99, result.output
    assert "FAILED thresholds: latency p99" in result.output
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["completed"] == 5  # every outcome came, but too slowly
    assert report["thresholds"]["p50_ms"]["ok"] is True
    assert report["thresholds"]["p99_ms"]["ok"] is False
    summary = (tmp_path / "run.md").read_text()
    assert summary.startswith("# paybridge loadgen: FAILED")
    assert "| p99 |" in summary and "**FAIL**" in summary and "| p50 |" in summary
    assert summary == markdown(report)
