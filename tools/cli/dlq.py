"""`paybridge dlq list|redrive`: what is in the dead-letter topic, and sending it back."""

from __future__ import annotations

import json
from typing import Any

import click

from tools.cli.common import KAFKA_FLAGS, guard, run_async, settings_from, settings_options


@click.group()
def dlq() -> None:
    """Inspect the dead-letter topic and send records back to their source topics."""


@dlq.command("list")
@click.option("--reason", "reasons", multiple=True, help="Only these reasons (repeat).")
@click.option("--limit", type=click.IntRange(min=0), default=20, help="Records shown per reason.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dead letter.")
@settings_options(KAFKA_FLAGS, (("topic_dlq", "--topic", "DLQ topic"),))
@guard
def dlq_list(reasons: tuple[str, ...], limit: int, as_json: bool, **options: Any) -> None:
    """Dead letters grouped by reason, with their source coordinates and redrive state."""
    from tools.dlq import read_dlq

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
@guard
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
    from tools.dlq import Selection, parse_refs, redrive

    settings = settings_from(options)
    try:
        selection = Selection(parse_refs(offsets), frozenset(reasons), everything)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    from tools.cli.progress import progress

    with progress("redrive") as update:
        result = run_async(
            redrive(settings, selection, force=force, dry_run=dry_run, on_progress=update)
        )
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
