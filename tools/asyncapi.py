"""docs/asyncapi.json: paybridge's topics and their messages as an AsyncAPI 3.0 document.

Generated, never edited: the input topics and their event types come from the bridge's routing
table (``bridge.routing.build_routes``), the payloads from the Avro schemas in ``schemas/``
(every version, newest as the payload), the outcomes and dead-letter topics from the settings'
defaults and the contract's headers. ``tests/test_asyncapi.py`` fails when the committed
document differs from what this produces::

    python -m tools.asyncapi            # rewrite docs/asyncapi.json
    python -m tools.asyncapi --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

from bridge.routing import build_routes
from bridge.temporal_calls import TemporalCalls
from plumbing.settings import Settings
from schemas.codec import MAGIC, SchemaRegistry
from schemas.events import Event, PaymentOutcome

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"
AVRO_FORMAT = "application/vnd.apache.avro+json;version=1.9.0"

# What each event does once consumed, for the operation's summary (by event type).
RECEIVED = {
    "PaymentCreated": "starts the payment's workflow payment-{payment_id} (once, ever)",
    "GatewayCallback": "verifies the signature and signals the payment's workflow",
    "PaymentCancelRequested": "signals the payment's workflow to cancel",
}

OPTIONAL_INPUT_HEADERS: dict[str, Any] = {
    "content-type": {
        "type": "string",
        "enum": ["application/json"],
        "description": "The value is the JSON form of the event instead of Avro (same field "
        "names, timestamps as epoch milliseconds, enums as symbol strings).",
    },
    "traceparent": {
        "type": "string",
        "description": "W3C trace context: the workflow's spans join this trace when tracing "
        "is on (OTEL_*).",
    },
}

DLQ_HEADERS: dict[str, Any] = {
    "dlq.source.topic": {"type": "string"},
    "dlq.source.partition": {"type": "string", "description": "decimal"},
    "dlq.source.offset": {"type": "string", "description": "decimal"},
    "dlq.reason": {
        "type": "string",
        "enum": [
            "undecodable",
            "unknown_schema",
            "schema_mismatch",
            "validation",
            "bad_signature",
            "orphan",
            "rejected_by_temporal",
            "processing_error",
        ],
    },
    "dlq.error.class": {"type": "string", "description": "a class name of schemas/errors.py"},
    "dlq.error.message": {"type": "string"},
    "dlq.failed_at": {"type": "string", "description": "ISO 8601 UTC with milliseconds"},
    "dlq.value.omitted_bytes": {
        "type": "string",
        "description": "present when the value was too large to keep: its size in bytes",
    },
}


def _channel_id(topic: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", topic)
    return words[0] + "".join(word.capitalize() for word in words[1:])


def _message(registry: SchemaRegistry, event_type: type[Event]) -> dict[str, Any]:
    name = event_type.__name__
    latest = registry.latest(event_type)
    versions = sorted(
        (v for v in registry.versions if v.name == latest.name), key=lambda v: v.version
    )
    schema = json.loads(Path(latest.path).read_text(encoding="utf-8"))
    return {
        "name": name,
        "title": name,
        "summary": schema.get("doc", name),
        "contentType": "application/octet-stream",
        "description": (
            f"Avro single-object encoding: bytes {MAGIC.hex(' ')}, the writer schema's 8-byte "
            "CRC-64-AVRO fingerprint (little-endian), then the Avro body. Writer schemas: "
            + ", ".join(
                f"v{v.version} {v.fingerprint.hex()} ({Path(v.path).name})" for v in versions
            )
            + ". Records written with any of them are read with the newest (the payload below)."
        ),
        "payload": {"schemaFormat": AVRO_FORMAT, "schema": schema},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": "payment_id, UTF-8"},
                "bindingVersion": "0.5.0",
            }
        },
    }


def _headers(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


def contract_defaults() -> Settings:
    """The settings' defaults (the contract's names), whatever the environment says."""
    return Settings.model_construct()


def document(settings: Settings | None = None) -> dict[str, Any]:
    """The AsyncAPI document of ``settings``' topics (default: the contract's names)."""
    settings = settings or contract_defaults()
    registry = SchemaRegistry.load()
    # Only the table's topics and event types are read: no Temporal call is ever made.
    routes = build_routes(settings, cast(TemporalCalls, None), gateway_secret="")
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic, route in sorted(routes.items()):
        name = route.event_type.__name__
        message = _message(registry, route.event_type)
        message["headers"] = _headers(OPTIONAL_INPUT_HEADERS)
        messages[name] = message
        channel = _channel_id(topic)
        channels[channel] = {
            "address": topic,
            "description": f"Input topic: {name} events, keyed by payment id.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {
                "kafka": {"partitions": settings.input_partitions, "bindingVersion": "0.5.0"}
            },
        }
        operations[f"receive{name}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"The bridge {RECEIVED.get(name, 'applies it to Temporal')}.",
            "description": "A record's offset is committed once Temporal durably accepted it, "
            "or once it is in the dead-letter topic. Records of one key are applied in order.",
            "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"}],
        }
    outcome = _message(registry, PaymentOutcome)
    outcome["headers"] = _headers(
        {
            "event_id": {"type": "string", "description": "the outcome's event_id"},
            "traceparent": OPTIONAL_INPUT_HEADERS["traceparent"]
            | {"description": "W3C trace context of the publishing activity (tracing on)."},
        },
        required=["event_id"],
    )
    messages["PaymentOutcome"] = outcome
    outcomes = _channel_id(settings.topic_outcomes)
    channels[outcomes] = {
        "address": settings.topic_outcomes,
        "description": "One terminal PaymentOutcome per payment, keyed by payment id.",
        "messages": {"PaymentOutcome": {"$ref": "#/components/messages/PaymentOutcome"}},
    }
    operations["sendPaymentOutcome"] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{outcomes}"},
        "summary": "The worker publishes each payment's outcome once (idempotent producer; a "
        "re-publish carries the same event_id).",
        "messages": [{"$ref": f"#/channels/{outcomes}/messages/PaymentOutcome"}],
    }
    messages["DeadLetter"] = {
        "name": "DeadLetter",
        "title": "DeadLetter",
        "summary": "An input record that could not be applied, untouched, with why.",
        "contentType": "application/octet-stream",
        "payload": {"type": "string", "format": "binary", "description": "the original value"},
        "headers": _headers(
            DLQ_HEADERS,
            required=[
                "dlq.source.topic",
                "dlq.source.partition",
                "dlq.source.offset",
                "dlq.reason",
                "dlq.error.class",
                "dlq.error.message",
                "dlq.failed_at",
            ],
        ),
        "bindings": {
            "kafka": {
                "key": {"type": "string", "format": "binary", "description": "the original key"},
                "bindingVersion": "0.5.0",
            }
        },
    }
    dlq = _channel_id(settings.topic_dlq)
    channels[dlq] = {
        "address": settings.topic_dlq,
        "description": "Dead letters of every input topic (also redrive markers, see "
        "`paybridge dlq`), with the original key, value and headers plus dlq.* headers.",
        "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
    }
    operations["sendDeadLetter"] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{dlq}"},
        "summary": "The bridge dead-letters a record it cannot decode, validate, verify or apply.",
        "messages": [{"$ref": f"#/channels/{dlq}/messages/DeadLetter"}],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "paybridge",
            "version": version("paybridge"),
            "description": "Kafka events in, durable Temporal payment workflows out. Generated "
            "by `python -m tools.asyncapi` from the bridge's routing table and schemas/; the "
            "contract in prose is docs/contract.md.",
        },
        "defaultContentType": "application/octet-stream",
        "servers": {
            "kafka": {
                "host": settings.kafka_bootstrap_servers,
                "protocol": "kafka",
                "description": "KAFKA_BOOTSTRAP_SERVERS (the default shown)",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) docs/asyncapi.json.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=DOCUMENT)
    args = parser.parse_args(argv)
    text = render(document(contract_defaults()))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python -m tools.asyncapi", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
