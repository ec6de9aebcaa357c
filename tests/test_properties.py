"""Property-based tests of the codec and the callback signature (hypothesis, fixed profile)."""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import MAGIC, Codec
from schemas.errors import DecodeError
from schemas.events import (
    CallbackStatus,
    Event,
    GatewayCallback,
    PaymentCancelRequested,
    PaymentCreated,
    PaymentMethod,
)

CODEC = Codec()
JSON = [("content-type", b"application/json")]
EVENT_TYPES: list[type[Event]] = [PaymentCreated, GatewayCallback, PaymentCancelRequested]

ids = st.text(min_size=1, max_size=40)
moments = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
currencies = st.sampled_from(["EUR", "USD", "GBP", "JPY", "CHF", "SEK"])

payments = st.builds(
    PaymentCreated,
    event_id=ids,
    payment_id=ids,
    account_id=ids,
    merchant_id=ids,
    amount_minor=st.integers(min_value=1, max_value=2**63 - 1),
    currency=currencies,
    method=st.sampled_from(list(PaymentMethod)),
    created_at=moments,
    metadata=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
)
callbacks = st.builds(
    GatewayCallback,
    event_id=ids,
    payment_id=ids,
    gateway_ref=ids,
    status=st.sampled_from(list(CallbackStatus)),
    reason=st.none() | st.text(max_size=30),
    occurred_at=moments,
    signature=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
cancels = st.builds(
    PaymentCancelRequested,
    event_id=ids,
    payment_id=ids,
    reason=st.text(max_size=30),
    requested_at=moments,
)
events = st.one_of(payments, callbacks, cancels)


@given(events)
def test_avro_round_trip(event: Event) -> None:
    assert CODEC.decode(type(event), CODEC.encode(event)) == event


@given(events)
def test_json_round_trip(event: Event) -> None:
    assert CODEC.decode(type(event), CODEC.encode_json(event), headers=JSON) == event


def _decodes_or_raises_typed(event_type: type[Event], value: bytes, headers: list) -> None:
    try:
        decoded = CODEC.decode(event_type, value, headers=headers)
    except DecodeError as exc:
        assert exc.kind in {"undecodable", "unknown_schema", "schema_mismatch", "validation"}
        assert exc.message
    else:
        assert isinstance(decoded, event_type)


@given(st.sampled_from(EVENT_TYPES), st.binary(max_size=300))
def test_any_bytes_decode_or_raise_the_typed_error(event_type: type[Event], value: bytes) -> None:
    _decodes_or_raises_typed(event_type, value, [])
    _decodes_or_raises_typed(event_type, value, JSON)


@given(st.sampled_from(EVENT_TYPES), st.binary(max_size=200), events)
def test_any_body_after_a_known_fingerprint_decodes_or_raises(
    event_type: type[Event], body: bytes, event: Event
) -> None:
    header = CODEC.encode(event)[:10]
    _decodes_or_raises_typed(event_type, header + body, [])


@given(events, st.data())
def test_corrupted_avro_decodes_or_raises(event: Event, data: st.DataObject) -> None:
    encoded = bytearray(CODEC.encode(event))
    position = data.draw(st.integers(min_value=len(MAGIC), max_value=len(encoded) - 1))
    encoded[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    _decodes_or_raises_typed(type(event), bytes(encoded), [])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(payments, st.sampled_from(list(PaymentCreated.model_fields)), json_values)
def test_any_json_field_value_decodes_or_raises(
    payment: PaymentCreated, field: str, value: object
) -> None:
    raw = json.loads(CODEC.encode_json(payment))
    raw[field] = value
    _decodes_or_raises_typed(PaymentCreated, json.dumps(raw).encode(), JSON)


secrets = st.text(alphabet=string.printable, min_size=1, max_size=32)


@given(callbacks, secrets, secrets)
def test_signature_accepts_exactly_the_correctly_signed(
    callback: GatewayCallback, secret: str, other: str
) -> None:
    signed = callback.model_copy(update={"signature": callback.expected_signature(secret)})
    assert signed.signature_valid(secret)
    assert signed.signature_valid(other) == (other == secret)
    assert callback.signature_valid(secret) == (callback.signature == signed.signature)


@given(
    callbacks,
    secrets,
    st.sampled_from(["event_id", "payment_id", "gateway_ref", "status", "occurred_at"]),
)
def test_signature_covers_every_signed_field(
    callback: GatewayCallback, secret: str, field: str
) -> None:
    signed = callback.model_copy(update={"signature": callback.expected_signature(secret)})
    changed = {
        "event_id": signed.event_id + "x",
        "payment_id": signed.payment_id + "x",
        "gateway_ref": signed.gateway_ref + "x",
        "status": next(s for s in CallbackStatus if s != signed.status),
        "occurred_at": signed.occurred_at + timedelta(milliseconds=1),
    }[field]
    tampered = signed.model_copy(update={field: changed})
    assert not tampered.signature_valid(secret)
