"""`paybridge recurring create|status|cancel`: recurring payment contracts."""

from __future__ import annotations

import uuid
from typing import Any

import click

from tools.cli.common import (
    TEMPORAL_FLAGS,
    duration_arg,
    exit_before_finalizing,
    guard,
    run_async,
    settings_from,
    settings_options,
)


@click.group()
def recurring() -> None:
    """Recurring payment contracts (RecurringPaymentWorkflow, id recurring-SUBSCRIPTION_ID)."""


@recurring.command("create")
@click.option("--subscription-id", default=None, help="Contract id [default: sub-<random>]")
@click.option("--account", "account_id", default="acct-0001", help="Account charged each term")
@click.option("--merchant", "merchant_id", default="merchant-0001", help="Merchant id")
@click.option("--amount", "amount_minor", type=click.IntRange(min=1), default=2999)
@click.option("--currency", default="EUR", help="ISO 4217 code")
@click.option("--method", type=click.Choice(["CARD", "WALLET", "BANK_TRANSFER"]), default="CARD")
@click.option(
    "--period", default="30d", callback=duration_arg, help="Time between terms (30d, 1h...)"
)
@click.option("--terms", type=click.IntRange(min=1), default=12, help="Number of payments")
@settings_options(TEMPORAL_FLAGS)
@exit_before_finalizing
@guard
def recurring_create(subscription_id: str | None, **options: Any) -> None:
    """Start a contract: TERMS payments of AMOUNT, one every PERIOD, each a PaymentWorkflow."""
    from schemas.workflow_api import RecurringInput
    from tools.operations import connect_client, start_recurring

    fields = {
        k: options.pop(k)
        for k in ("account_id", "merchant_id", "amount_minor", "currency", "method", "period")
    }
    fields["terms"] = options.pop("terms")
    settings = settings_from(options)
    try:
        contract = RecurringInput.model_validate(
            {**fields, "subscription_id": subscription_id or f"sub-{uuid.uuid4().hex[:10]}"}
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc

    async def run() -> str:
        return await start_recurring(await connect_client(settings), settings, contract)

    workflow_id = run_async(run())
    click.echo(f"{contract.subscription_id}  workflow {workflow_id}")


@recurring.command("status")
@click.argument("subscription_id")
@settings_options(TEMPORAL_FLAGS)
@exit_before_finalizing
@guard
def recurring_status(subscription_id: str, **options: Any) -> None:
    """Show a contract's progress: terms charged and what comes next."""
    from tools.operations import connect_client
    from tools.operations import recurring_status as query

    settings = settings_from(options)

    async def run() -> Any:
        return await query(await connect_client(settings), subscription_id)

    state = run_async(run())
    charged = f"{len(state.charges)} of {state.terms} terms charged"
    if state.done:
        click.echo(f"{state.subscription_id}  ended  {charged}")
    else:
        cancelling = "  (cancelled: ends after this term)" if state.cancel_requested else ""
        click.echo(
            f"{state.subscription_id}  running  {charged}, next term {state.next_term}{cancelling}"
        )
    for charge in state.charges:
        click.echo(f"  term {charge.term:>3}  {charge.payment_id}  {charge.status.value}")


@recurring.command("cancel")
@click.argument("subscription_id")
@click.option("--reason", default="cancelled by customer")
@settings_options(TEMPORAL_FLAGS)
@exit_before_finalizing
@guard
def recurring_cancel(subscription_id: str, reason: str, **options: Any) -> None:
    """End a contract after its current term (no further terms are charged)."""
    from tools.operations import cancel_recurring, connect_client

    settings = settings_from(options)

    async def run() -> None:
        await cancel_recurring(await connect_client(settings), subscription_id, reason=reason)

    run_async(run())
    click.echo(f"{subscription_id} ends after its current term")
