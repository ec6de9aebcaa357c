"""`paybridge produce payment|callback|cancel` and `paybridge outcomes`: events in, outcomes out."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import click

from tools.cli.common import (
    CONNECTION_FLAGS,
    guard,
    run_async,
    settings_from,
    settings_options,
    timestamp_arg,
)


@click.group()
def produce() -> None:
    """Produce events to the input topics (Avro single-object encoding, or --json)."""


@produce.command("payment")
@click.option("--payment-id", default=None, help="Payment id [default: pay-<random>]")
@click.option("--event-id", default=None, help="Event id [default: random UUID]")
@click.option("--account", "account_id", default="acct-0001", help="Account to debit")
@click.option("--merchant", "merchant_id", default="merchant-0001", help="Merchant id")
@click.option("--amount", "amount_minor", type=int, default=1250, help="Amount in minor units")
@click.option("--currency", default="EUR", help="ISO 4217 code")
@click.option("--method", type=click.Choice(["CARD", "WALLET", "BANK_TRANSFER"]), default="CARD")
@click.option("--created-at", default=None, help="ISO 8601 or epoch ms [default: now]")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Repeatable")
@click.option("--json", "as_json", is_flag=True, help="Send JSON (content-type header) not Avro")
@click.option("--count", type=click.IntRange(min=1), default=1, help="Send this many payments")
@settings_options(CONNECTION_FLAGS[:2], (("topic_payments", "--topic", "topic"),))
@guard
def produce_payment(
    payment_id: str | None,
    event_id: str | None,
    metadata: tuple[str, ...],
    created_at: str | None,
    as_json: bool,
    count: int,
    **options: Any,
) -> None:
    """Produce PaymentCreated events; prints each payment id and its workflow id."""
    from schemas.events import PaymentCreated
    from schemas.ids import payment_workflow_id
    from tools.producing import send_events

    fields = {
        k: options.pop(k)
        for k in ("account_id", "merchant_id", "amount_minor", "currency", "method")
    }
    settings = settings_from(options)
    pairs = dict(item.split("=", 1) for item in metadata if "=" in item)
    if count > 1 and (payment_id or event_id):
        raise click.UsageError("--payment-id and --event-id name one payment: drop --count")
    events = []
    for _ in range(count):
        pid = payment_id or f"pay-{uuid.uuid4().hex[:12]}"
        data = {
            **fields,
            "event_id": event_id or str(uuid.uuid4()),
            "payment_id": pid,
            "created_at": timestamp_arg(created_at),
            "metadata": pairs,
        }
        try:
            events.append(PaymentCreated.model_validate(data))
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    run_async(send_events(settings, settings.topic_payments, events, as_json=as_json))
    for event in events:
        click.echo(f"{event.payment_id}  workflow {payment_workflow_id(event.payment_id)}")


@produce.command("callback")
@click.option("--payment-id", required=True, help="The payment the gateway answers for")
@click.option(
    "--status", type=click.Choice(["AUTHORIZED", "DECLINED", "ERROR"]), default="AUTHORIZED"
)
@click.option("--gateway-ref", default=None, help="Gateway reference [default: gw-PAYMENT_ID]")
@click.option("--reason", default=None, help="Why (declines and errors)")
@click.option("--event-id", default=None, help="Event id [default: random UUID]")
@click.option("--occurred-at", default=None, help="ISO 8601 or epoch ms [default: now]")
@click.option(
    "--signature",
    default=None,
    help="Send this signature instead of signing (to try the bridge's check)",
)
@click.option("--json", "as_json", is_flag=True, help="Send JSON (content-type header) not Avro")
@settings_options(CONNECTION_FLAGS[:2], (("topic_callbacks", "--topic", "topic"),))
@guard
def produce_callback(
    payment_id: str,
    status: str,
    gateway_ref: str | None,
    reason: str | None,
    event_id: str | None,
    occurred_at: str | None,
    signature: str | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Produce a GatewayCallback, signed with PAYBRIDGE_GATEWAY_SECRET (HMAC-SHA256)."""
    from schemas.events import GatewayCallback
    from tools.producing import send_events

    settings = settings_from(options)
    callback = GatewayCallback(
        event_id=event_id or str(uuid.uuid4()),
        payment_id=payment_id,
        gateway_ref=gateway_ref or f"gw-{payment_id}",
        status=status,
        reason=reason,
        occurred_at=timestamp_arg(occurred_at),
        signature=signature or "",
    )
    if signature is None:
        secret = settings.require_gateway_secret()
        callback = callback.model_copy(update={"signature": callback.expected_signature(secret)})
    run_async(send_events(settings, settings.topic_callbacks, [callback], as_json=as_json))
    click.echo(f"{callback.event_id}  {status} for {payment_id}")


@produce.command("cancel")
@click.option("--payment-id", required=True, help="The payment to cancel")
@click.option("--reason", default="requested by customer", help="Why (recorded in the outcome)")
@click.option("--event-id", default=None, help="Event id [default: random UUID]")
@click.option("--json", "as_json", is_flag=True, help="Send JSON (content-type header) not Avro")
@settings_options(CONNECTION_FLAGS[:2], (("topic_cancels", "--topic", "topic"),))
@guard
def produce_cancel(
    payment_id: str, reason: str, event_id: str | None, as_json: bool, **options: Any
) -> None:
    """Produce a PaymentCancelRequested."""
    from schemas.events import PaymentCancelRequested
    from tools.producing import send_events

    settings = settings_from(options)
    cancel = PaymentCancelRequested(
        event_id=event_id or str(uuid.uuid4()),
        payment_id=payment_id,
        reason=reason,
        requested_at=datetime.now(UTC),
    )
    run_async(send_events(settings, settings.topic_cancels, [cancel], as_json=as_json))
    click.echo(f"{cancel.event_id}  cancel for {payment_id}")


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new outcomes.")
@click.option("--payment-id", default=None, help="Only this payment's outcome.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@settings_options(CONNECTION_FLAGS[:2], (("topic_outcomes", "--topic", "topic"),))
@guard
def outcomes(follow: bool, payment_id: str | None, as_json: bool, **options: Any) -> None:
    """Print payment outcomes from the outcomes topic (from the beginning)."""
    from tools.producing import read_outcomes

    settings = settings_from(options)

    def show(outcome: Any) -> None:
        if as_json:
            click.echo(json.dumps(outcome.model_dump(mode="json")))
        else:
            reason = f"  ({outcome.reason})" if outcome.reason else ""
            click.echo(
                f"{outcome.completed_at:%H:%M:%S}  {outcome.payment_id:<24} "
                f"{outcome.status.value:<10} {outcome.amount_minor} {outcome.currency}{reason}"
            )

    run_async(read_outcomes(settings, show, follow=follow, payment_id=payment_id))
