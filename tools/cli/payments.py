"""`paybridge status`, `cancel` and `resolve`: one payment's state, cancellation and review."""

from __future__ import annotations

import json
from typing import Any

import click

from tools.cli.common import (
    KAFKA_FLAGS,
    TEMPORAL_FLAGS,
    exit_before_finalizing,
    guard,
    run_async,
    settings_from,
    settings_options,
)


@click.command()
@click.argument("payment_id")
@click.option("--json", "as_json", is_flag=True, help="Print the state as one JSON object.")
@settings_options(TEMPORAL_FLAGS)
@exit_before_finalizing
@guard
def status(payment_id: str, as_json: bool, **options: Any) -> None:
    """Show a payment's state (the workflow's `status` query) and its history of steps."""
    from tools.operations import connect_client, payment_status

    settings = settings_from(options)

    async def run() -> Any:
        return await payment_status(await connect_client(settings), payment_id)

    state = run_async(run())
    if as_json:
        click.echo(json.dumps(state.model_dump(mode="json")))
        return
    reason = f"  ({state.reason})" if state.reason else ""
    click.echo(f"{state.payment_id}  {state.status.value}{reason}")
    if state.gateway_ref:
        click.echo(f"gateway ref  {state.gateway_ref}")
    for step in state.steps:
        detail = f"  {step.detail}" if step.detail else ""
        click.echo(f"  {step.at:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f"  {step.name}{detail}")


@click.command()
@click.argument("payment_id")
@click.option("--reason", default="requested by operator", help="Why (recorded in the outcome).")
@settings_options(KAFKA_FLAGS, (("topic_cancels", "--topic", "cancel topic"),))
@guard
def cancel(payment_id: str, reason: str, **options: Any) -> None:
    """Ask for a payment to be cancelled: produces a PaymentCancelRequested to the cancel topic.

    The payment is cancelled (and compensated) if it has not succeeded yet; `paybridge status`
    shows whether it was.
    """
    from tools.operations import request_cancel

    settings = settings_from(options)
    event_id = run_async(request_cancel(settings, payment_id, reason=reason))
    click.echo(f"cancel requested for {payment_id} (event {event_id} on {settings.topic_cancels})")


@click.command()
@click.argument("payment_id")
@click.option("--approve/--decline", default=None, help="The verdict (one is required).")
@click.option("--operator", default=None, help="Who decides (recorded in the steps).")
@click.option("--note", default=None, help="Free text kept with the verdict.")
@settings_options(TEMPORAL_FLAGS)
@exit_before_finalizing
@guard
def resolve(
    payment_id: str, approve: bool | None, operator: str | None, note: str | None, **options: Any
) -> None:
    """Resolve a payment waiting in manual review: --approve or --decline."""
    from tools.operations import connect_client, resolve_payment

    if approve is None:
        raise click.UsageError("say --approve or --decline")
    settings = settings_from(options)

    async def run() -> None:
        await resolve_payment(
            await connect_client(settings),
            payment_id,
            approve=approve,
            operator=operator,
            note=note,
        )

    run_async(run())
    click.echo(f"{payment_id} {'approved' if approve else 'declined'}")
