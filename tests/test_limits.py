"""The contract's limits (docs/contract.md "Limits") and hostile values the bridge misfiled
or let through (issue 12, break 5): each must be a clear DecodeError with the DLQ reason."""

from __future__ import annotations

import json

import pytest

from bridge.consumer import check_key
from bridge.routing import verify_signature
from schemas.codec import MAX_JSON_DEPTH, Codec, json_depth
from schemas.errors import DecodeError, SignatureError
from schemas.events import CallbackStatus, PaymentCancelRequested, PaymentCreated
from tests.support import payment
from workflows.simulations.gateway import signed_callback

CODEC = Codec()
JSON = [("content-type", b"application/json")]


def decode_json(event_type: type, data: object) -> object:
    return CODEC.decode(event_type, json.dumps(data).encode(), headers=JSON)


def payment_json(**changes: object) -> dict[str, object]:
    data: dict[str, object] = json.loads(CODEC.encode_json(payment(1)))
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("metadata", "ok"),
    [
        ({f"k{n}": "v" for n in range(50)}, True),
        ({f"k{n}": "v" for n in range(51)}, False),
        ({"k" * 40: "v"}, True),
        ({"k" * 41: "v"}, False),
        ({"k": "v" * 500}, True),
        ({"k": "v" * 501}, False),
        ({"k": "v" * 900_000}, False),  # the 900 KB map that was accepted and started
    ],
)
def test_metadata_is_bounded(metadata: dict[str, str], ok: bool) -> None:
    data = payment_json(metadata=metadata)
    if ok:
        decoded = decode_json(PaymentCreated, data)
        assert isinstance(decoded, PaymentCreated) and decoded.metadata == metadata
        return
    with pytest.raises(DecodeError) as raised:
        decode_json(PaymentCreated, data)
    assert raised.value.kind == "validation"
    assert "metadata" in raised.value.message
    # Avro too: the limits are the model's, whatever the encoding.
    unchecked = PaymentCreated.model_construct(**{**payment(2).model_dump(), "metadata": metadata})
    with pytest.raises(DecodeError, match="metadata"):
        CODEC.decode(PaymentCreated, CODEC.encode(unchecked))


@pytest.mark.parametrize("length", [500, 501])
def test_reasons_are_bounded(length: int) -> None:
    cancel = {
        "event_id": "e",
        "payment_id": "p",
        "reason": "r" * length,
        "requested_at": 1_700_000_000_000,
    }
    if length <= 500:
        assert decode_json(PaymentCancelRequested, cancel)
        return
    with pytest.raises(DecodeError, match="reason") as raised:
        decode_json(PaymentCancelRequested, cancel)
    assert raised.value.kind == "validation"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 100_000])
def test_deeply_nested_json_is_undecodable_not_a_crash(depth: int) -> None:
    """100,000 levels raised RecursionError out of the codec (filed as processing_error)."""
    nested = "[" * (depth - 1) + "]" * (depth - 1)
    value = json.dumps(payment_json())[:-1].encode() + b', "extra": ' + nested.encode() + b"}"
    assert json_depth(value) == depth
    if depth <= MAX_JSON_DEPTH:
        assert CODEC.decode(PaymentCreated, value, headers=JSON)
        return
    with pytest.raises(DecodeError) as raised:
        CODEC.decode(PaymentCreated, value, headers=JSON)
    assert raised.value.kind == "undecodable"
    assert "nested" in raised.value.message


def test_brackets_inside_strings_do_not_count() -> None:
    assert json_depth(b'{"a": "[[[[{{{{", "b": "\\"[", "c": [1, [2]]}') == 3


@pytest.mark.parametrize("signature", ["é" * 64, "\udcff" * 64, "00" * 32, ""])
def test_a_forged_signature_is_a_bad_signature_whatever_its_characters(signature: str) -> None:
    """A non-ASCII signature made compare_digest raise TypeError: processing_error."""
    forged = signed_callback(
        payment_id="p", gateway_ref="g", status=CallbackStatus.AUTHORIZED, secret="s"
    ).model_copy(update={"signature": signature})
    assert not forged.signature_valid("s")
    with pytest.raises(SignatureError) as raised:
        verify_signature("s")(forged)
    assert raised.value.kind == "bad_signature"


def test_a_record_without_key_is_refused() -> None:
    """The key orders a payment's events: a null key was accepted."""
    with pytest.raises(DecodeError, match="no key") as raised:
        check_key(None, "p-1")
    assert raised.value.kind == "validation"
    with pytest.raises(DecodeError, match="not UTF-8"):
        check_key(b"\xff\xfe", "p-1")
    with pytest.raises(DecodeError, match="not the payment_id"):
        check_key(b"p-2", "p-1")
    check_key(b"p-1", "p-1")
