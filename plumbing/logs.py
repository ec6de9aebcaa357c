"""Logging set-up of every paybridge process: text for people, JSON for log shippers.

``PAYBRIDGE_LOG_FORMAT=json`` writes one JSON object per line: ``ts`` (UTC, ISO 8601 with
milliseconds), ``level``, ``logger``, ``message``, the fields a log call passed with ``extra=``
(``payment_id``, ``event_id``, ``topic``, ``partition``, ``offset``, ...), and ``exception``
(the traceback as one string) when there is one. Temporal's workflow and activity loggers add
``temporal_workflow`` / ``temporal_activity``; a payment workflow's id gives ``payment_id``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has: anything else on a record came with ``extra=``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_PAYMENT_WORKFLOW_PREFIX = "payment-"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if "payment_id" not in out:
            temporal = out.get("temporal_activity") or out.get("temporal_workflow")
            workflow_id = temporal.get("workflow_id") if isinstance(temporal, dict) else None
            if isinstance(workflow_id, str) and workflow_id.startswith(_PAYMENT_WORKFLOW_PREFIX):
                out["payment_id"] = workflow_id.removeprefix(_PAYMENT_WORKFLOW_PREFIX)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def setup_logging(level: int, log_format: LogFormat = "text") -> None:
    """Log ``level`` and above to stderr in ``log_format`` (replaces earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class _Record(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...


def record_fields(record: _Record) -> dict[str, Any]:
    """``extra=`` fields of a log line about a Kafka record: where it is, and its payment id
    (the key, by the contract) when the key is UTF-8."""
    fields: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
    }
    if record.key is not None:
        with contextlib.suppress(UnicodeDecodeError):
            fields["payment_id"] = record.key.decode("utf-8")
    return fields
