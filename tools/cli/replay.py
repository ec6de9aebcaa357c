"""`paybridge replay`: copy a topic range into an input topic, or rewind the bridge's group."""

from __future__ import annotations

from typing import Any

import click

from plumbing.settings import parse_duration
from tools.cli.common import KAFKA_FLAGS, guard, run_async, settings_from, settings_options


def _timestamp_ms(value: str | None) -> int | None:
    """ISO 8601, epoch milliseconds, or a duration meaning that long ago (``30m``)."""
    if value is None:
        return None
    from datetime import UTC, datetime

    from schemas.events import to_millis

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
    from tools.replay import Position

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
@guard
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
    from schemas.errors import ReplayError
    from tools.replay import Rewriter, event_type_of, plan_replay, run_replay

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
        from schemas.codec import Codec

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
    from tools.cli.progress import progress

    try:
        with progress("replay", plan.size) as update:
            result = run_async(
                run_replay(
                    settings,
                    plan,
                    rewrite=rewrite,
                    on_progress=lambda done: update(done.copied + done.skipped_undecodable),
                )
            )
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"copied {result.copied} records into {destination}")
    if result.skipped_undecodable:
        click.echo(f"skipped {result.skipped_undecodable} undecodable records (not rewritable)")


def _reset_group(settings: Any, when: str, topic: str | None, dry_run: bool) -> None:
    from tools.replay import reset_group

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
