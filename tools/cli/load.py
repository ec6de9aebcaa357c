"""`paybridge loadgen`: produce a realistic mix of payments and report what came back."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from tools.cli.common import (
    KAFKA_FLAGS,
    duration_seconds,
    guard,
    need_tools_extra,
    run_async,
    settings_from,
    settings_options,
)


@click.command()
@click.option("--count", type=click.IntRange(min=1), default=None, help="Payments to send.")
@click.option("--duration", default=None, help="Send for this long instead (30s, 5m).")
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Payments per second; 0 sends as fast as possible.",
)
@click.option(
    "--mix",
    "mix_text",
    default="",
    show_default=False,
    help="Shares by intent, e.g. 'decline=0.1,cancel=0.05,timeout=0.01' or 'none'. "
    "Names: unknown_account, unsupported_currency, decline, gateway_error, cancel, timeout, "
    "json. [default: unknown_account=0.03, unsupported_currency=0.02, decline=0.05, "
    "gateway_error=0, cancel=0.03, timeout=0, json=0.1]",
)
@click.option(
    "--timeout",
    default="2m",
    help="After the last send, give up on the missing outcomes once none has arrived for this "
    "long.",
)
@click.option("--seed", type=int, default=None, help="Seed of the payment mix (reproducible).")
@click.option(
    "--max-p50", default=None, help="Fail the run (exit 99) if latency p50 is above this."
)
@click.option(
    "--max-p95", default=None, help="Fail the run (exit 99) if latency p95 is above this."
)
@click.option(
    "--max-p99",
    default=None,
    help="Fail the run (exit 99) if latency p99 is above this (a duration: 500ms, 5s).",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the JSON report here, and a Markdown summary beside it (same name, .md).",
)
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--quiet", is_flag=True, help="No live progress.")
@settings_options(KAFKA_FLAGS)
@guard
def loadgen(
    count: int | None,
    duration: str | None,
    rate: float,
    mix_text: str,
    timeout: str,
    seed: int | None,
    max_p50: str | None,
    max_p95: str | None,
    max_p99: str | None,
    report: Path | None,
    chart: Path | None,
    quiet: bool,
    **options: Any,
) -> None:
    """Produce payments, match their outcomes, and report throughput and latency.

    Reads the outcomes topic from its end offsets taken before producing, matches outcomes by
    payment id, and exits with status 1 if any payment is missing or has two outcomes.
    Latency is the outcome's arrival at loadgen minus the payment's created_at. With
    --max-p50/--max-p95/--max-p99 the run also fails (exit 99, as k6 thresholds) when a
    percentile is above its limit.
    """
    need_tools_extra("loadgen")
    from rich.console import Console
    from rich.live import Live

    from tools.load.chart import write_chart
    from tools.load.generator import LoadConfig, run_load
    from tools.load.mix import Mix
    from tools.load.stats import Tracker
    from tools.load.thresholds import (
        THRESHOLD_EXIT_CODE,
        Thresholds,
        evaluate,
        failures,
        markdown,
    )
    from tools.load.view import progress, summary

    if (count is None) == (duration is None):
        raise click.UsageError("give exactly one of --count and --duration")
    settings = settings_from(options)
    thresholds = Thresholds(
        p50=duration_seconds(max_p50), p95=duration_seconds(max_p95), p99=duration_seconds(max_p99)
    )
    try:
        config = LoadConfig(
            count=count,
            duration=duration_seconds(duration),
            rate=rate or None,
            mix=Mix.parse(mix_text) if mix_text else Mix(),
            timeout=duration_seconds(timeout) or 0.0,
            seed=seed,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    console = Console(stderr=True)
    live = Live(console=console, auto_refresh=False, transient=False, redirect_stdout=False)

    def tick(tracker: Any) -> None:
        live.update(progress(tracker, target=count), refresh=True)

    tracker = Tracker()
    interrupted = False
    try:
        if quiet or not console.is_terminal:
            run_async(run_load(settings, config, tracker=tracker))
        else:
            with live:
                run_async(run_load(settings, config, on_tick=tick, tracker=tracker))
    except KeyboardInterrupt:
        interrupted = True  # report what was seen so far
    result = tracker.report(config=config.describe())
    result["thresholds"] = evaluate(result, thresholds)
    crossed = failures(result["thresholds"])
    Console().print(summary(result))
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result, indent=2) + "\n")
        summary_path = (
            report.with_suffix(".md")
            if report.suffix != ".md"
            else report.with_name(f"{report.name}.summary.md")
        )
        summary_path.write_text(markdown(result))
        click.echo(f"report: {report}  summary: {summary_path}")
    if chart is not None:
        write_chart(result, chart)
        click.echo(f"chart:  {chart}")
    if interrupted:
        click.echo("interrupted: the figures cover the run so far", err=True)
        sys.exit(130)
    if not result["ok"]:
        click.echo(
            f"FAILED: {result['missing']} missing, "
            f"{result['duplicates']['by_payment_id']} duplicated",
            err=True,
        )
        sys.exit(1)
    if crossed:
        click.echo(f"FAILED thresholds: {'; '.join(crossed)}", err=True)
        sys.exit(THRESHOLD_EXIT_CODE)
