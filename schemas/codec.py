"""Avro single-object encoding (and JSON input) for paybridge's events.

A value is ``C3 01`` + the writer schema's 8-byte CRC-64-AVRO fingerprint (little-endian) +
the Avro binary body. The writer schema is looked up by fingerprint among every version in
``schemas/`` and resolved against the newest version (the reader schema) of the event type the
topic expects, so older producers keep working after a schema evolves. A record with header
``content-type: application/json`` is read as a JSON object with the same field names
(timestamps as epoch milliseconds, enums as symbol strings).

Every failure raises :class:`bridge.errors.DecodeError` with a ``kind`` for the DLQ.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import fastavro
import fastavro.schema
from pydantic import ValidationError

from schemas.errors import DecodeError
from schemas.events import Event, from_millis, to_millis

MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8
NAMESPACE = "paybridge.v1"
JSON_CONTENT_TYPE = b"application/json"
# No valid event comes near this size; refusing larger values before decoding keeps a hostile
# record cheap to dead-letter.
MAX_VALUE_BYTES = 1024 * 1024
# Events nest two levels deep (an object and its metadata map); a JSON value nested deeper than
# this is refused before parsing (Python's parser would raise RecursionError around 1,000).
MAX_JSON_DEPTH = 32

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")

E = TypeVar("E", bound=Event)

_FILE_NAME = re.compile(r"^(?P<stem>[a-z0-9_]+)\.v(?P<version>\d+)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    """One ``.avsc`` file: a version of one event type's schema."""

    name: str
    version: int
    path: str
    parsed: Any
    fingerprint: bytes
    timestamp_fields: tuple[str, ...]


def _load_version(path: str, text: str) -> SchemaVersion:
    match = _FILE_NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: schema files are named <event>.v<N>.avsc")
    raw = json.loads(text)
    parsed: Any = fastavro.parse_schema(raw)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    timestamps = tuple(
        field["name"]
        for field in raw["fields"]
        if isinstance(field["type"], dict)
        and field["type"].get("logicalType") == "timestamp-millis"
    )
    return SchemaVersion(
        name=parsed["name"],
        version=int(match["version"]),
        path=path,
        parsed=parsed,
        fingerprint=fingerprint,
        timestamp_fields=timestamps,
    )


class SchemaRegistry:
    """Every schema version shipped in ``schemas/``, by fingerprint and by name."""

    def __init__(self, versions: Iterable[SchemaVersion]) -> None:
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        self._latest: dict[str, SchemaVersion] = {}
        for version in versions:
            other = self._by_fingerprint.get(version.fingerprint)
            if other is not None:
                raise ValueError(f"{version.path} has the same fingerprint as {other.path}")
            self._by_fingerprint[version.fingerprint] = version
            latest = self._latest.get(version.name)
            if latest is None or version.version > latest.version:
                self._latest[version.name] = version

    @classmethod
    def load(cls, directory: str | Path | None = None) -> SchemaRegistry:
        """Every ``*.avsc`` in ``directory`` (default: the schemas shipped with paybridge)."""
        root: Any = Path(directory) if directory is not None else resources.files("schemas")
        files = sorted((entry for entry in root.iterdir() if entry.name.endswith(".avsc")), key=str)
        return cls(_load_version(str(entry), entry.read_text(encoding="utf-8")) for entry in files)

    def by_fingerprint(self, fingerprint: bytes) -> SchemaVersion | None:
        return self._by_fingerprint.get(fingerprint)

    def latest(self, event_type: type[Event]) -> SchemaVersion:
        return self._latest[f"{NAMESPACE}.{event_type.__name__}"]

    @property
    def versions(self) -> Sequence[SchemaVersion]:
        return list(self._by_fingerprint.values())


def _validation_message(event_type: type[Event], exc: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or '(record)'}: {err['msg']}"
        for err in exc.errors(include_url=False)[:5]
    )
    return f"invalid {event_type.__name__}: {problems}"


class Codec:
    """Encodes events to Avro single-object bytes and decodes Avro or JSON values into events."""

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.registry = registry or SchemaRegistry.load()

    def encode(self, event: Event, *, schema: SchemaVersion | None = None) -> bytes:
        """Avro single-object bytes of ``event``, written with ``schema`` (default: newest)."""
        writer = schema or self.registry.latest(type(event))
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(writer.fingerprint)
        fastavro.schemaless_writer(out, writer.parsed, event.model_dump(mode="python"))
        return out.getvalue()

    def encode_json(self, event: Event) -> bytes:
        """JSON bytes of ``event`` as the contract's JSON input (timestamps in epoch millis)."""
        schema = self.registry.latest(type(event))
        data = event.model_dump(mode="json")
        for name in schema.timestamp_fields:
            data[name] = to_millis(getattr(event, name))
        return json.dumps(data, separators=(",", ":")).encode()

    def decode(
        self,
        event_type: type[E],
        value: bytes | None,
        *,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> E:
        """The validated event in ``value``; raises :class:`DecodeError` saying what is wrong."""
        if value is None:
            raise DecodeError("undecodable", "record has no value (tombstone)")
        if len(value) > MAX_VALUE_BYTES:
            raise DecodeError(
                "undecodable", f"value is {len(value)} bytes; events are at most {MAX_VALUE_BYTES}"
            )
        if _is_json(headers):
            data = self._read_json(event_type, value)
        elif value[: len(MAGIC)] == MAGIC:
            data = self._read_avro(event_type, value)
        else:
            raise DecodeError(
                "undecodable",
                "value is neither Avro single-object encoded (no C3 01 marker) "
                "nor marked with header content-type: application/json",
            )
        try:
            return event_type.model_validate(data)
        except ValidationError as exc:
            raise DecodeError("validation", _validation_message(event_type, exc)) from exc

    def _read_avro(self, event_type: type[Event], value: bytes) -> Any:
        if len(value) < HEADER_LEN:
            raise DecodeError("undecodable", f"Avro value too short ({len(value)} bytes)")
        fingerprint = value[len(MAGIC) : HEADER_LEN]
        writer = self.registry.by_fingerprint(fingerprint)
        if writer is None:
            raise DecodeError(
                "unknown_schema",
                f"writer schema fingerprint {fingerprint.hex()} is not in schemas/",
            )
        reader = self.registry.latest(event_type)
        if writer.name != reader.name:
            raise DecodeError(
                "schema_mismatch", f"record is a {writer.name}, this topic carries {reader.name}"
            )
        body = io.BytesIO(value[HEADER_LEN:])
        try:
            data = fastavro.schemaless_reader(body, writer.parsed, reader.parsed)
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError...
            raise DecodeError(
                "undecodable", f"Avro body does not match {writer.name} v{writer.version}: {exc!r}"
            ) from exc
        if body.tell() != len(value) - HEADER_LEN:
            raise DecodeError(
                "undecodable",
                f"{len(value) - HEADER_LEN - body.tell()} bytes left after the Avro body",
            )
        return data

    def _read_json(self, event_type: type[Event], value: bytes) -> Any:
        depth = json_depth(value)
        if depth > MAX_JSON_DEPTH:
            raise DecodeError(
                "undecodable", f"JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH}"
            )
        try:
            data = json.loads(value.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise DecodeError("undecodable", f"value is not UTF-8 JSON: {exc!r}") from exc
        if not isinstance(data, dict):
            raise DecodeError("undecodable", "JSON value is not an object")
        for name in self.registry.latest(event_type).timestamp_fields:
            raw = data.get(name)
            if raw is None:
                continue
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise DecodeError(
                    "validation",
                    f"invalid {event_type.__name__}: {name}: expected epoch milliseconds "
                    f"(integer), got {raw!r}",
                )
            try:
                data[name] = from_millis(raw)
            except (OverflowError, OSError, ValueError) as exc:
                raise DecodeError(
                    "validation", f"invalid {event_type.__name__}: {name}: {raw} is out of range"
                ) from exc
        return data


def json_depth(value: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (brackets inside strings do not
    count); linear, and cheap on a flat event: strings are cut out by one regex."""
    brackets = _JSON_STRING.sub(b"", value).translate(None, _NOT_A_BRACKET)
    opened = brackets.count(b"[") + brackets.count(b"{")
    if opened <= 1:
        return opened
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _is_json(headers: Sequence[tuple[str, bytes]]) -> bool:
    for key, raw in headers:
        if key.lower() == "content-type" and raw is not None:
            return raw.split(b";", 1)[0].strip().lower() == JSON_CONTENT_TYPE
    return False
