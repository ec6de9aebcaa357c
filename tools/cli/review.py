"""`paybridge review list`: the payments waiting for an operator's verdict."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from tools.cli.common import (
    TEMPORAL_FLAGS,
    exit_before_finalizing,
    guard,
    run_async,
    settings_from,
    settings_options,
)


@click.group()
def review() -> None:
    """Payments in manual review (decide each with `paybridge resolve`)."""


@review.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most this many.")
@click.option(
    "--all-task-queues",
    is_flag=True,
    help="Every payment workflow of the namespace, not only those of --task-queue.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per payment.")
@settings_options(TEMPORAL_FLAGS)
@exit_before_finalizing
@guard
def review_list(limit: int | None, all_task_queues: bool, as_json: bool, **options: Any) -> None:
    """Payments waiting in MANUAL_REVIEW, oldest first (by the payment's start).

    Found through the PaymentStatus search attribute; `paybridge namespace register` creates
    it (the dev stack and docker compose do so themselves).
    """
    from tools.operations import connect_client, review_queue

    settings = settings_from(options)

    async def run() -> Any:
        client = await connect_client(settings)
        queue = None if all_task_queues else settings.temporal_task_queue
        return await review_queue(client, task_queue=queue, limit=limit)

    waiting = run_async(run())
    now = datetime.now(UTC)
    for item in waiting:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "payment_id": item.payment_id,
                        "workflow_id": item.workflow_id,
                        "started_at": item.started_at.isoformat(timespec="milliseconds"),
                        "merchant_id": item.merchant_id,
                    }
                )
            )
        else:
            age = now - item.started_at
            click.echo(
                f"{item.payment_id:<28} started {item.started_at:%Y-%m-%d %H:%M:%S} "
                f"({_age(age.total_seconds())} ago)  merchant {item.merchant_id or '-'}"
            )
    if not as_json:
        click.echo(f"{len(waiting)} payment(s) in manual review")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
