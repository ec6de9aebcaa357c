"""The codec: Avro single-object encoding, JSON input, schema evolution, typed errors."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.codec import MAGIC, Codec, SchemaRegistry
from schemas.errors import DecodeError
from schemas.events import (
    CallbackStatus,
    GatewayCallback,
    OutcomeStatus,
    PaymentCancelRequested,
    PaymentCreated,
    PaymentOutcome,
)
from schemas.ids import outcome_event_id
from tests.support import payment

JSON = [("content-type", b"application/json")]
NOW = datetime(2026, 11, 21, 12, 30, 15, 123000, tzinfo=UTC)

EVENTS = [
    payment(1, created_at=NOW, metadata={"order": "o-1"}),
    GatewayCallback(
        event_id="e2",
        payment_id="p2",
        gateway_ref="g-1",
        status=CallbackStatus.DECLINED,
        reason="insufficient funds",
        occurred_at=NOW,
        signature="ab" * 32,
    ),
    PaymentCancelRequested(event_id="e3", payment_id="p3", reason="customer", requested_at=NOW),
    PaymentOutcome(
        event_id=outcome_event_id("p4", OutcomeStatus.SUCCEEDED),
        payment_id="p4",
        status=OutcomeStatus.SUCCEEDED,
        amount_minor=5,
        currency="EUR",
        workflow_id="payment-p4",
        created_at=NOW,
        completed_at=NOW,
    ),
]


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_avro_round_trip(codec: Codec, event: PaymentCreated) -> None:
    encoded = codec.encode(event)
    assert encoded[:2] == MAGIC
    assert encoded[2:10] == codec.registry.latest(type(event)).fingerprint
    assert codec.decode(type(event), encoded) == event


@pytest.mark.parametrize("event", EVENTS[:3], ids=lambda e: type(e).__name__)
def test_json_round_trip(codec: Codec, event: PaymentCreated) -> None:
    assert codec.decode(type(event), codec.encode_json(event), headers=JSON) == event


def test_json_timestamps_are_epoch_millis(codec: Codec) -> None:
    raw = json.loads(codec.encode_json(EVENTS[0]))
    assert raw["created_at"] == 1795264215123
    assert raw["method"] == "CARD"


def test_fingerprint_is_crc64_avro_little_endian(codec: Codec) -> None:
    # Reference value from the Avro specification's test vector for the schema "int".
    from fastavro.schema import fingerprint

    assert fingerprint('"int"', "CRC-64-AVRO") == "8f5c393f1ad57572"


def _kind(
    codec: Codec,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None = None,
    event_type: type = PaymentCreated,
) -> str:
    with pytest.raises(DecodeError) as caught:
        codec.decode(event_type, value, headers=headers or [])
    assert str(caught.value)
    return caught.value.kind


def test_bad_values_raise_one_typed_error(codec: Codec) -> None:
    good = codec.encode(EVENTS[0])
    assert _kind(codec, os.urandom(64).replace(b"\xc3", b"\x00")) == "undecodable"
    assert _kind(codec, None) == "undecodable"
    assert _kind(codec, good[:20]) == "undecodable"
    assert _kind(codec, good + b"\x00\x01") == "undecodable"
    assert _kind(codec, MAGIC + b"\x00" * 8 + good[10:]) == "unknown_schema"
    assert _kind(codec, codec.encode(EVENTS[2])) == "schema_mismatch"
    assert _kind(codec, b"\xff\xfe not utf-8", JSON) == "undecodable"
    assert _kind(codec, b"[1, 2]", JSON) == "undecodable"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount_minor": -5}, "amount_minor"),
        ({"amount_minor": 0}, "amount_minor"),
        ({"currency": "eur"}, "currency"),
        ({"currency": "XYZ"}, "currency"),
        ({"method": "CHEQUE"}, "method"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"payment_id": ""}, "payment_id"),
    ],
)
def test_invalid_json_fields_are_named(codec: Codec, change: dict[str, object], field: str) -> None:
    raw = json.loads(codec.encode_json(EVENTS[0]))
    raw.update(change)
    with pytest.raises(DecodeError) as caught:
        codec.decode(PaymentCreated, json.dumps(raw).encode(), headers=JSON)
    assert caught.value.kind == "validation"
    assert field in caught.value.message


def test_missing_json_field_is_named(codec: Codec) -> None:
    raw = json.loads(codec.encode_json(EVENTS[0]))
    del raw["account_id"]
    with pytest.raises(DecodeError, match="account_id") as caught:
        codec.decode(PaymentCreated, json.dumps(raw).encode(), headers=JSON)
    assert caught.value.kind == "validation"


def test_invalid_avro_field_is_a_validation_error(codec: Codec) -> None:
    bad = EVENTS[0].model_copy(update={"amount_minor": -1, "currency": "eur"})
    assert _kind(codec, codec.encode(bad)) == "validation"


def test_older_writer_schema_resolves_against_newer_reader(tmp_path: Path) -> None:
    """A v1 producer keeps working after PaymentCreated gains an optional field in v2."""
    shipped = Path(__file__).parents[1] / "schemas"
    for avsc in shipped.glob("*.avsc"):
        shutil.copy(avsc, tmp_path / avsc.name)
    v2 = json.loads((shipped / "payment_created.v1.avsc").read_text())
    v2["fields"].append({"name": "channel", "type": ["null", "string"], "default": None})
    (tmp_path / "payment_created.v2.avsc").write_text(json.dumps(v2))

    old = Codec()
    new = Codec(SchemaRegistry.load(tmp_path))
    assert new.registry.latest(PaymentCreated).version == 2
    written_by_v1 = old.encode(EVENTS[0])
    assert new.decode(PaymentCreated, written_by_v1) == EVENTS[0]
    # and a v2 record is readable by a reader that has v2 on file
    written_by_v2 = new.encode(EVENTS[0])
    assert written_by_v2[2:10] != written_by_v1[2:10]
    assert new.decode(PaymentCreated, written_by_v2) == EVENTS[0]
    # an old deployment that does not know v2 says so rather than guessing
    with pytest.raises(DecodeError) as caught:
        old.decode(PaymentCreated, written_by_v2)
    assert caught.value.kind == "unknown_schema"


def test_every_shipped_schema_is_in_namespace_v1(codec: Codec) -> None:
    names = {v.name for v in codec.registry.versions}
    assert names == {
        "paybridge.v1.PaymentCreated",
        "paybridge.v1.GatewayCallback",
        "paybridge.v1.PaymentCancelRequested",
        "paybridge.v1.PaymentOutcome",
    }


def test_callback_signature(codec: Codec) -> None:
    unsigned = EVENTS[1]
    signed = unsigned.model_copy(update={"signature": unsigned.expected_signature("s3cret")})
    assert signed.signature_valid("s3cret")
    assert not signed.signature_valid("other")
    assert not unsigned.signature_valid("s3cret")
    ms = str(int(NOW.timestamp() * 1000))
    assert signed.signed_payload() == f"e2|p2|g-1|DECLINED|{ms}".encode()
