"""docs/asyncapi.json is what tools/asyncapi.py makes of the routing table and schemas/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from plumbing.settings import Settings
from schemas.codec import SchemaRegistry
from tools.asyncapi import DOCUMENT, contract_defaults, document, render

ROOT = Path(__file__).resolve().parents[1]


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_the_committed_document_is_up_to_date() -> None:
    committed = DOCUMENT.read_text(encoding="utf-8")
    assert committed == render(document()), (
        "docs/asyncapi.json is out of date: run `python -m tools.asyncapi` and commit it"
    )
    done = subprocess.run(
        [sys.executable, "-m", "tools.asyncapi", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_document_follows_the_routing_table_and_the_schemas() -> None:
    doc = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    assert doc["asyncapi"] == "3.0.0"
    for ref in refs(doc):
        assert resolve(doc, ref) is not None, ref
    defaults = contract_defaults()
    addresses = {channel["address"] for channel in doc["channels"].values()}
    assert addresses == {*defaults.input_topics, defaults.topic_outcomes, defaults.topic_dlq}
    registry = SchemaRegistry.load()
    for name in ("PaymentCreated", "GatewayCallback", "PaymentCancelRequested", "PaymentOutcome"):
        message = doc["components"]["messages"][name]
        latest = next(v for v in registry.versions if v.name == f"paybridge.v1.{name}")
        assert message["payload"]["schema"] == json.loads(Path(latest.path).read_text())
        assert latest.fingerprint.hex() in message["description"]
    # received where the bridge reads, sent where paybridge writes
    actions = {
        resolve(doc, op["channel"]["$ref"])["address"]: op["action"]
        for op in doc["operations"].values()
    }
    assert actions == {
        **dict.fromkeys(defaults.input_topics, "receive"),
        defaults.topic_outcomes: "send",
        defaults.topic_dlq: "send",
    }


def test_a_changed_routing_table_changes_the_document() -> None:
    renamed = Settings.model_construct(topic_payments="orders.payments")
    addresses = {c["address"] for c in document(renamed)["channels"].values()}
    assert "orders.payments" in addresses and "payments.created" not in addresses
    assert render(document(renamed)) != DOCUMENT.read_text(encoding="utf-8")
