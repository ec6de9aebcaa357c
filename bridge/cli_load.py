"""`paybridge` commands for the load area; registered on the main group by `bridge.cli`.

`loadgen`, `replay` and `dlq list|redrive`. The logic lives in ``bridge.loadgen``,
``bridge.replay`` and ``bridge.dlq_tools``; this module only parses flags and prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from bridge.cli import CONNECTION_FLAGS, _guard, run_async, settings_from, settings_options
from bridge.settings import parse_duration

KAFKA_FLAGS = CONNECTION_FLAGS[:2]


def _duration(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value).total_seconds()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    group.add_command(loadgen)
    group.add_command(replay)
    group.add_command(dlq)


# -- loadgen -------------------------------------------------------------------------------


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
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--quiet", is_flag=True, help="No live progress.")
@settings_options(KAFKA_FLAGS)
@_guard
def loadgen(
    count: int | None,
    duration: str | None,
    rate: float,
    mix_text: str,
    timeout: str,
    seed: int | None,
    report: Path | None,
    chart: Path | None,
    quiet: bool,
    **options: Any,
) -> None:
    """Produce payments, match their outcomes, and report throughput and latency.

    Reads the outcomes topic from its end offsets taken before producing, matches outcomes by
    payment id, and exits with status 1 if any payment is missing or has two outcomes.
    Latency is the outcome's arrival at loadgen minus the payment's created_at.
    """
    from rich.console import Console
    from rich.live import Live

    from bridge.loadchart import write_chart
    from bridge.loadgen import LoadConfig, run_load
    from bridge.loadmix import Mix
    from bridge.loadstats import Tracker
    from bridge.loadview import progress, summary

    if (count is None) == (duration is None):
        raise click.UsageError("give exactly one of --count and --duration")
    settings = settings_from(options)
    try:
        config = LoadConfig(
            count=count,
            duration=_duration(duration),
            rate=rate or None,
            mix=Mix.parse(mix_text) if mix_text else Mix(),
            timeout=_duration(timeout) or 0.0,
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
    Console().print(summary(result))
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result, indent=2) + "\n")
        click.echo(f"report: {report}")
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


# -- replay ------------------------------------------------------------------------------


def _timestamp_ms(value: str | None) -> int | None:
    """ISO 8601, epoch milliseconds, or a duration meaning that long ago (``30m``)."""
    if value is None:
        return None
    from datetime import UTC, datetime

    from bridge.events import to_millis

    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            ago = parse_duration(text)
        except ValueError:
            raise click.BadParameter(
                f"{value!r}: use ISO 8601, epoch milliseconds or a duration ago (30m)"
            ) from None
        return to_millis(datetime.now(UTC) - ago)
    return to_millis(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


def _position(offset: int | None, when: str | None, what: str) -> Any:
    from bridge.replay import Position

    if offset is not None and when is not None:
        raise click.UsageError(f"give the {what} as an offset or a time, not both")
    if offset is not None:
        return Position(offset=offset)
    stamp = _timestamp_ms(when)
    return None if stamp is None else Position(timestamp_ms=stamp)


@click.command()
@click.option("--from", "source", default=None, help="Topic to copy from [default: payments topic]")
@click.option(
    "--to", "destination", default=None, help="Input topic to copy into [default: --from]"
)
@click.option("--partition", "partitions", type=int, multiple=True, help="Only these (repeat).")
@click.option("--start-offset", type=click.IntRange(min=0), default=None, help="First offset.")
@click.option("--end-offset", type=click.IntRange(min=0), default=None, help="Stop before it.")
@click.option("--since", default=None, help="First record at/after: ISO 8601, epoch ms, or 30m ago")
@click.option("--until", default=None, help="Stop at the first record at/after this time.")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, help="Records/s; 0: flat out.")
@click.option(
    "--rewrite-ids",
    "suffix",
    default=None,
    metavar="SUFFIX",
    help="Append SUFFIX to every id: fresh load.",
)
@click.option(
    "--refresh-timestamps",
    is_flag=True,
    help="With --rewrite-ids: move the events' timestamps (created_at...) by one shift so that "
    "the first record copied looks produced now.",
)
@click.option(
    "--gateway-secret",
    envvar="PAYBRIDGE_GATEWAY_SECRET",
    default=None,
    help="Re-sign rewritten callbacks with this secret [env PAYBRIDGE_GATEWAY_SECRET]",
)
@click.option(
    "--keep-signatures",
    is_flag=True,
    help="Copy rewritten callbacks with their old, now invalid, signatures (they will be "
    "dead-lettered as bad_signature).",
)
@click.option(
    "--reset-group-to",
    default=None,
    metavar="TIME",
    help="Other mode: rewind the bridge's consumer group to TIME on the input topics "
    "(or on --from only) instead of copying. Refused while the group has members.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be copied (or reset), do nothing.")
@settings_options(KAFKA_FLAGS, (("consumer_group", "--consumer-group", "group to reset"),))
@_guard
def replay(
    source: str | None,
    destination: str | None,
    partitions: tuple[int, ...],
    start_offset: int | None,
    end_offset: int | None,
    since: str | None,
    until: str | None,
    rate: float,
    suffix: str | None,
    refresh_timestamps: bool,
    gateway_secret: str | None,
    keep_signatures: bool,
    reset_group_to: str | None,
    dry_run: bool,
    **options: Any,
) -> None:
    """Copy a range of a topic into an input topic, keeping keys, values and headers.

    Without --rewrite-ids a replay is deduplicated by the bridge: it starts no new workflow.
    With it, every id gets the suffix and each replayed payment is a new workflow.
    """
    settings = settings_from(options)
    if reset_group_to is not None:
        _reset_group(settings, reset_group_to, source, dry_run)
        return
    from bridge.replay import ReplayError, Rewriter, event_type_of, plan_replay, run_replay

    source = source or settings.topic_payments
    destination = destination or source
    start = _position(start_offset, since, "start")
    end = _position(end_offset, until, "end")
    rewrite = None
    if suffix is not None:
        event_type = event_type_of(settings, source) or event_type_of(settings, destination)
        if event_type is None:
            raise click.UsageError("--rewrite-ids needs --from or --to to be an input topic")
        if event_type.__name__ == "GatewayCallback" and not gateway_secret and not keep_signatures:
            raise click.UsageError(
                "rewritten callbacks need a new signature: give --gateway-secret (the secret of "
                "the environment replayed into) or --keep-signatures"
            )
        from bridge.codec import Codec

        secret = None if keep_signatures else gateway_secret
        rewrite = Rewriter(
            event_type,
            suffix,
            codec=Codec(),
            secret=secret,
            refresh_timestamps=refresh_timestamps,
        )
    elif refresh_timestamps:
        raise click.UsageError("--refresh-timestamps goes with --rewrite-ids")
    plan = run_async(
        plan_replay(
            settings,
            source,
            destination,
            partitions=partitions,
            start=start,
            end=end,
            rate=rate or None,
        )
    )
    for part in plan.ranges:
        click.echo(f"{source}-{part.partition}  offsets {part.start}..{part.end}  ({part.size})")
    what = f"with ids rewritten (+{suffix!r})" if suffix else "unchanged"
    click.echo(
        f"{'would copy' if dry_run else 'copying'} up to {plan.size} records {what} "
        f"into {destination}"
    )
    if dry_run:
        return
    try:
        result = run_async(run_replay(settings, plan, rewrite=rewrite))
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"copied {result.copied} records into {destination}")
    if result.skipped_undecodable:
        click.echo(f"skipped {result.skipped_undecodable} undecodable records (not rewritable)")


def _reset_group(settings: Any, when: str, topic: str | None, dry_run: bool) -> None:
    from bridge.replay import reset_group

    stamp = _timestamp_ms(when)
    assert stamp is not None
    plan = run_async(
        reset_group(
            settings,
            timestamp_ms=stamp,
            topics=[topic] if topic else None,
            dry_run=dry_run,
        )
    )
    for row in plan.rows:
        before = "-" if row.committed is None else str(row.committed)
        click.echo(f"{row.topic}-{row.partition}  {before} -> {row.new}")
    verb = "would reset" if dry_run else "reset"
    click.echo(f"{verb} group {plan.group} on {len(plan.rows)} partitions")
    if plan.members:
        click.echo(
            f"group {plan.group} has {len(plan.members)} live member(s) now: "
            "a reset would be refused until every bridge of the group is stopped"
        )


# -- dlq -----------------------------------------------------------------------------------


@click.group()
def dlq() -> None:
    """Inspect the dead-letter topic and send records back to their source topics."""


@dlq.command("list")
@click.option("--reason", "reasons", multiple=True, help="Only these reasons (repeat).")
@click.option("--limit", type=click.IntRange(min=0), default=20, help="Records shown per reason.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dead letter.")
@settings_options(KAFKA_FLAGS, (("topic_dlq", "--topic", "DLQ topic"),))
@_guard
def dlq_list(reasons: tuple[str, ...], limit: int, as_json: bool, **options: Any) -> None:
    """Dead letters grouped by reason, with their source coordinates and redrive state."""
    from bridge.dlq_tools import read_dlq

    settings = settings_from(options)
    contents = run_async(read_dlq(settings))
    groups = {k: v for k, v in contents.by_reason().items() if not reasons or k in reasons}
    if as_json:
        for letters in groups.values():
            for letter in letters:
                marker = contents.redriven(letter)
                click.echo(json.dumps(_letter_json(letter, marker)))
        return
    if not groups:
        click.echo(f"{settings.topic_dlq}: no dead letters")
    for reason, letters in groups.items():
        redriven = sum(1 for letter in letters if contents.redriven(letter))
        click.echo(f"{reason}: {len(letters)} ({redriven} redriven)")
        for letter in letters[:limit]:
            marker = contents.redriven(letter)
            state = f"redriven -> {marker.redriven_to}" if marker else "pending"
            if letter.value_omitted:
                state = "value omitted (too large): not redrivable"
            if letter.redriven_from:
                state += f" (failed again after redrive of {letter.redriven_from})"
            message = letter.error_message.replace("\n", " ")[:100]
            click.echo(
                f"  {letter.ref:<8} from {letter.source:<40} {letter.failed_at}  {state}\n"
                f"           {letter.error_class}: {message}"
            )
        if len(letters) > limit:
            click.echo(f"  ... {len(letters) - limit} more (--limit)")


def _letter_json(letter: Any, marker: Any) -> dict[str, Any]:
    return {
        "dlq": letter.ref,
        "reason": letter.reason,
        "source_topic": letter.source_topic,
        "source_partition": letter.source_partition,
        "source_offset": letter.source_offset,
        "key": None if letter.key is None else letter.key.decode("utf-8", errors="replace"),
        "error_class": letter.error_class,
        "error_message": letter.error_message,
        "failed_at": letter.failed_at,
        "redriven_from": letter.redriven_from,
        "redriven_to": marker.redriven_to if marker else None,
    }


@dlq.command("redrive")
@click.option("--offset", "offsets", multiple=True, help="DLQ OFFSET or PARTITION:OFFSET (repeat).")
@click.option("--reason", "reasons", multiple=True, help="Every dead letter with this reason.")
@click.option("--all", "everything", is_flag=True, help="Every dead letter.")
@click.option("--force", is_flag=True, help="Also records that were redriven before.")
@click.option("--dry-run", is_flag=True, help="Say what would be redriven, send nothing.")
@settings_options(KAFKA_FLAGS, (("topic_dlq", "--topic", "DLQ topic"),))
@_guard
def dlq_redrive(
    offsets: tuple[str, ...],
    reasons: tuple[str, ...],
    everything: bool,
    force: bool,
    dry_run: bool,
    **options: Any,
) -> None:
    """Send dead letters back to their source topic, each at most once (unless --force).

    The copy keeps the original key, value and headers (without dlq.*). A marker written in
    the same Kafka transaction records the redrive on the DLQ topic.
    """
    from bridge.dlq_tools import Selection, parse_refs, redrive

    settings = settings_from(options)
    try:
        selection = Selection(parse_refs(offsets), frozenset(reasons), everything)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    result = run_async(redrive(settings, selection, force=force, dry_run=dry_run))
    plan = result.plan
    for ref in plan.not_found:
        click.echo(f"{ref}: no dead letter at this DLQ offset")
    for letter, marker in plan.already:
        click.echo(f"{letter.ref}: already redriven to {marker.redriven_to} ({marker.at}); skipped")
    for letter in plan.unsendable:
        click.echo(f"{letter.ref}: value omitted (too large); fetch it from {letter.source}")
    if dry_run:
        for letter in plan.chosen:
            click.echo(f"{letter.ref}: would redrive to {letter.source_topic} ({letter.reason})")
        click.echo(f"would redrive {len(plan.chosen)} records")
        return
    for letter, to in result.redriven:
        click.echo(f"{letter.ref}: redriven to {to} ({letter.reason})")
    click.echo(f"{len(result.redriven)} records redriven (redrive id {result.redrive_id})")
