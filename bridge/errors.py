"""The exceptions paybridge raises, in one tree.

    PaybridgeError
    ├── ConfigError          a setting is missing or invalid (names the setting)
    ├── DecodeError          a record cannot become a valid event (kind says why)
    │   └── SignatureError   a gateway callback's HMAC does not match
    └── StackError           the embedded dev stack could not start a server

Foreign errors (fastavro, pydantic, aiokafka, temporalio) are mapped at the boundary with
``raise X(...) from exc`` so callers decide on the kind, never on a message.
"""

from __future__ import annotations

from typing import Literal

DecodeKind = Literal[
    "undecodable", "unknown_schema", "schema_mismatch", "validation", "bad_signature"
]


class PaybridgeError(Exception):
    """Base of every error paybridge raises on purpose."""


class ConfigError(PaybridgeError):
    """A setting is missing or has a bad value; the message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class DecodeError(PaybridgeError):
    """A record's bytes cannot be turned into a valid event.

    ``kind`` is the DLQ reason: ``undecodable`` (not Avro single-object nor JSON),
    ``unknown_schema`` (fingerprint not in ``schemas/``), ``schema_mismatch`` (writer schema
    is another event type or cannot be resolved), ``validation`` (decoded, but a field is
    invalid) or ``bad_signature``.
    """

    def __init__(self, kind: DecodeKind, message: str) -> None:
        super().__init__(message)
        self.kind: DecodeKind = kind
        self.message = message


class SignatureError(DecodeError):
    """A gateway callback is missing its signature or the signature does not verify."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_signature", message)


class StackError(PaybridgeError):
    """A server of the embedded dev stack failed to start or stopped unexpectedly."""
