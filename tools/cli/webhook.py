"""`paybridge webhook`: the gateway's HTTP callbacks in, records on the callbacks topic out."""

from __future__ import annotations

from typing import Any

import click

from tools.cli.common import KAFKA_FLAGS, guard, run_async, settings_from, settings_options

WEBHOOK_FLAGS = (
    ("webhook_port", "--port", "port of POST /v1/gateway/callbacks"),
    ("metrics_port", "--metrics-port", "port of /metrics, /healthz and /readyz"),
    ("topic_callbacks", "--topic", "callbacks topic"),
)


@click.command()
@settings_options(KAFKA_FLAGS, WEBHOOK_FLAGS)
@guard
def webhook(**options: Any) -> None:
    """Run the gateway webhook: POST /v1/gateway/callbacks, signed with X-Signature.

    The body is a GatewayCallback as JSON (timestamps in epoch milliseconds); X-Signature is
    the lower-case hex HMAC-SHA256 of the raw body with PAYBRIDGE_GATEWAY_SECRET (required).
    Answers 202 once Kafka acknowledged the record, 401 for a bad signature, 400 for an
    invalid body, 413 for a body over 64 KiB, 503 while Kafka does not acknowledge.
    """
    from webhook.service import run_webhook

    settings = settings_from(options)
    settings.require_gateway_secret()
    run_async(run_webhook(settings, say=click.echo), service=True)
