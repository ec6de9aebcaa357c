"""Every exception paybridge raises on purpose, in one tree.

    PaybridgeError
    ├── ConfigError            a setting is missing or invalid (names the setting)
    ├── DecodeError            a record cannot become a valid event (``kind`` is the DLQ reason)
    │   └── SignatureError     a gateway callback's HMAC does not match
    ├── OrphanError            a callback or cancel whose payment never came in time
    ├── ConsumerStopped        the bridge stopped consuming (the cause is chained)
    ├── TemporalRejected       Temporal refused a request as invalid: retrying cannot help
    ├── StackError             the embedded dev stack could not start a server
    ├── ToolError              an operator tool cannot do what it was asked
    │   ├── UnreachableError   Temporal does not answer at TEMPORAL_ADDRESS
    │   ├── NotFoundError      no workflow with that id
    │   ├── WrongStateError    the workflow is not in a state where the operation makes sense
    │   ├── ReplayError        a replay cannot be planned or run as asked
    │   ├── DlqError           the dead-letter topic cannot be read or redriven as asked
    │   ├── TopicError         Kafka refused to create a topic (too few brokers, ...)
    │   └── LoadError          the load generator cannot run as configured
    ├── GatewayError           the (simulated) payment gateway refused a request
    │   ├── GatewayDeclined    final: never retried
    │   └── GatewayUnavailable transient: the request may be retried
    └── WebhookRejected        the gateway webhook refused a callback (4xx): resending won't help

The tree lives beside the contract because class names are part of it: a dead letter's
``dlq.error.class`` header carries the exception's class name. Foreign errors (fastavro,
pydantic, aiokafka, temporalio) are mapped at the boundary with ``raise X(...) from exc`` so
that callers decide on the kind, never on a message. The module imports nothing of paybridge:
every layer can use it, and the workflow sandbox passes it through.
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


class OrphanError(PaybridgeError):
    """A callback or cancel whose ``PaymentCreated`` never came within the orphan timeout: its
    workflow run (started by the signal) dead-letters it with this class and reason ``orphan``."""


class ConsumerStopped(PaybridgeError):
    """The bridge stopped consuming (an error in the consumer, or no poll for too long): the
    process reports itself unhealthy and exits non-zero so that its supervisor restarts it."""


class TemporalRejected(PaybridgeError):
    """Temporal refused the request as invalid: retrying would not help."""


class StackError(PaybridgeError):
    """A server of the embedded dev stack failed to start or stopped unexpectedly."""


class ToolError(PaybridgeError):
    """An operator tool (CLI command) cannot do what it was asked; the message says why."""


class UnreachableError(ToolError):
    """Temporal does not answer at TEMPORAL_ADDRESS."""


class NotFoundError(ToolError):
    """No workflow with that id exists in the namespace."""


class WrongStateError(ToolError):
    """The workflow is not in a state where the operation makes sense."""


class ReplayError(ToolError):
    """A replay cannot be planned or run as asked (missing topic, live group, bad range)."""


class DlqError(ToolError):
    """The dead-letter topic cannot be read or redriven as asked."""


class TopicError(ToolError):
    """Kafka refused to create a topic as asked (e.g. more replicas than brokers)."""


class LoadError(ToolError):
    """The load generator cannot run as configured (missing topics, no outcomes topic...)."""


class GatewayError(PaybridgeError):
    """The payment gateway refused a request."""


class GatewayDeclined(GatewayError):
    """The gateway refused the authorisation request itself: final, never retried."""


class GatewayUnavailable(GatewayError):
    """A transient gateway failure (timeout, 5xx): the request may be retried."""


class WebhookRejected(PaybridgeError):
    """The gateway webhook answered a callback with a 4xx: sending it again cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"webhook answered {status}: {message}")
        self.status = status
