"""Let aiokafka's consumer survive a record header whose key is not UTF-8.

aiokafka 0.14 (its C extension and its pure-Python parser alike) decodes header keys with
strict UTF-8 while ``getmany``/``getone`` iterate a fetched batch. A key that is not UTF-8
raises there (``UnicodeDecodeError`` from the C parser, ``CorruptRecordException`` from the
pure-Python one). The consumer's position stays where that call started, the fetched data is
dropped and fetched again, and every later ``getmany`` raises the same way. The partition is
stuck for good, and so are the good records fetched with the bad one.

:func:`install` swaps two classes in ``aiokafka.consumer.fetcher``:

* ``MemoryRecords``: the same class (C when available), but it also keeps the fetched bytes.
  Costs one Python ``__init__`` per partition per fetch response.
* ``PartitionRecords``: the same iterator, with a ``__next__`` that catches the header-key
  error. Normal records cost nothing extra, because aiokafka's ``__next__`` is already a
  Python method. When the error happens, the batch that failed is found in the kept bytes and
  parsed again leniently, from the first record not yet handed out. Iteration then goes on with
  aiokafka's own code for the batches after it.

In that lenient parse a header key that is not UTF-8 becomes an
:class:`UndecodableHeaderKey`. It is a ``str``, so code that compares header keys or calls
``startswith`` on them keeps working. Its text is the ``surrogateescape`` decoding of the bytes,
and ``.raw`` gives the exact bytes back. Key, value, the other headers, offset, timestamp and
the record's position are unchanged.

``plumbing.kafka.consumer`` installs it for every consumer paybridge makes; the bridge
dead-letters a record with such a key as ``undecodable`` (``undecodable_header_keys``), and the
DLQ writer writes the key with :func:`printable_key`. Measured cost on the normal path: none
(1.2 vs 1.3 us CPU per record consumed end to end, C parser); the failing batch alone is parsed
again, in Python (2.2 ms for 500 records). It relies on aiokafka internals, hence the pin
``aiokafka>=0.14,<0.15`` and :func:`install`'s check, which fails at start-up if they moved.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from aiokafka.consumer import fetcher as _fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import _DefaultRecordBatchPy, _DefaultRecordPy
from aiokafka.record.util import decode_varint

__all__ = ["UndecodableHeaderKey", "install", "printable_key", "undecodable_header_keys"]


class UndecodableHeaderKey(str):
    """A header key whose bytes are not UTF-8 (text: their ``surrogateescape`` decoding).

    No producer takes it as is (aiokafka's C builder wants an exact ``str`` and strict UTF-8):
    write :func:`printable_key` instead.
    """

    @property
    def raw(self) -> bytes:
        return self.encode("utf-8", "surrogateescape")

    def __repr__(self) -> str:
        return f"UndecodableHeaderKey({self.raw!r})"


def undecodable_header_keys(record: Any) -> list[UndecodableHeaderKey]:
    """The header keys of ``record`` (a ConsumerRecord) that are not UTF-8."""
    headers = record.headers
    if not headers:
        return []
    return [k for k, _ in headers if type(k) is UndecodableHeaderKey]


def printable_key(key: str) -> str:
    """A header key any producer can write: for an undecodable key, its bytes with ``\\xNN``
    escapes where they are not UTF-8; other keys unchanged."""
    if type(key) is UndecodableHeaderKey:
        return key.raw.decode("utf-8", "backslashreplace")
    return key


# -- lenient parse of one v2 batch ------------------------------------------------------------


_BatchPy: Any = _DefaultRecordBatchPy


class _LenientRecordBatchPy(_BatchPy):  # type: ignore[misc]
    """aiokafka's pure-Python v2 batch parser, except that a header key that is not UTF-8
    becomes an :class:`UndecodableHeaderKey` instead of an error. Only used to parse again a
    batch that the regular parser failed on."""

    _buffer: Any
    _pos: int

    def _read_msg(self, decode_varint: Any = decode_varint) -> _DefaultRecordPy:
        # As _DefaultRecordBatchPy._read_msg in aiokafka 0.14, except for the header key.
        buffer = self._buffer
        pos = self._pos
        length, pos = decode_varint(buffer, pos)
        start_pos = pos
        _, pos = decode_varint(buffer, pos)  # attributes
        ts_delta, pos = decode_varint(buffer, pos)
        if self.timestamp_type == self.LOG_APPEND_TIME:
            timestamp = self.max_timestamp
        else:
            timestamp = self.first_timestamp + ts_delta
        offset_delta, pos = decode_varint(buffer, pos)
        offset = self.base_offset + offset_delta

        key_len, pos = decode_varint(buffer, pos)
        key = None
        if key_len >= 0:
            key = bytes(buffer[pos : pos + key_len])
            pos += key_len
        value_len, pos = decode_varint(buffer, pos)
        value = None
        if value_len >= 0:
            value = bytes(buffer[pos : pos + value_len])
            pos += value_len

        header_count, pos = decode_varint(buffer, pos)
        if header_count < 0:
            raise CorruptRecordException(f"Found invalid number of record headers {header_count}")
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(header_count):
            h_key_len, pos = decode_varint(buffer, pos)
            if h_key_len < 0:
                raise CorruptRecordException(f"Invalid negative header key size {h_key_len}")
            raw_key = bytes(buffer[pos : pos + h_key_len])
            pos += h_key_len
            try:
                h_key: str = raw_key.decode("utf-8")
            except UnicodeDecodeError:
                h_key = UndecodableHeaderKey(raw_key.decode("utf-8", "surrogateescape"))
            h_value_len, pos = decode_varint(buffer, pos)
            h_value = None
            if h_value_len >= 0:
                h_value = bytes(buffer[pos : pos + h_value_len])
                pos += h_value_len
            headers.append((h_key, h_value))

        if pos - start_pos != length:
            raise CorruptRecordException(
                f"Invalid record size: expected to read {length} bytes in record "
                f"payload, but instead read {pos - start_pos}"
            )
        self._pos = pos
        return _DefaultRecordPy(offset, timestamp, self.timestamp_type, key, value, headers)


def _batch_bounds(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each complete batch in a fetch response's record data, as
    aiokafka's MemoryRecords slices it (a trailing partial batch is left out)."""
    bounds = []
    pos, size = 0, len(data)
    while size - pos >= 12:
        (length,) = struct.unpack_from(">i", data, pos + 8)
        end = pos + 12 + length
        if end > size:
            break
        bounds.append((pos, end))
        pos = end
    return bounds


# -- the two classes swapped into aiokafka's fetcher --------------------------------------------

_MemoryRecords: Any = _fetcher.MemoryRecords
_PartitionRecords: Any = _fetcher.PartitionRecords


class LenientMemoryRecords(_MemoryRecords):  # type: ignore[misc]
    """aiokafka's MemoryRecords (the C one when available), keeping the fetched bytes."""

    def __init__(self, bytes_data: bytes) -> None:
        super().__init__(bytes_data)
        self.data = bytes_data


class LenientPartitionRecords(_PartitionRecords):  # type: ignore[misc]
    """aiokafka's PartitionRecords, which survives a header key that is not UTF-8."""

    _records_iterator: Any
    _records: Any
    _tp: Any
    next_fetch_offset: int

    def __next__(self) -> Any:
        try:
            return next(self._records_iterator)
        except StopIteration:
            self._records_iterator = None
            raise
        except (UnicodeDecodeError, CorruptRecordException) as exc:
            resumed = self._resume_after(exc)
            if resumed is None:
                raise
            self._records_iterator = resumed
            return self.__next__()

    def _resume_after(self, exc: BaseException) -> Iterator[Any] | None:
        if not isinstance(exc, UnicodeDecodeError) and not isinstance(
            exc.__cause__, UnicodeDecodeError
        ):
            return None
        data = getattr(self._records, "data", None)
        if data is None:
            return None
        # The batch that failed is the last one taken from self._records: count what is left.
        left = 0
        while self._records.has_next():
            self._records.next_batch()
            left += 1
        bounds = _batch_bounds(data)
        index = len(bounds) - left - 1
        if index < 0:
            return None
        start, end = bounds[index]
        if data[start + 16] < 2:
            return None
        try:
            records = list(_LenientRecordBatchPy(memoryview(data)[start:end]))
        except (CorruptRecordException, ValueError, IndexError):
            return None
        if not any(type(k) is UndecodableHeaderKey for r in records for k, _ in r.headers):
            return None  # a UnicodeDecodeError from elsewhere (e.g. a deserializer)
        self._records = LenientMemoryRecords(data[end:])  # the batches after the failed one
        (base_offset,) = struct.unpack_from(">q", data, start)
        (last_offset_delta,) = struct.unpack_from(">i", data, start + 23)
        return self._lenient_records(records, base_offset + last_offset_delta + 1)

    def _lenient_records(self, records: list[Any], batch_end: int) -> Iterator[Any]:
        # The rest of the failed batch, as aiokafka's _unpack_records would have yielded it.
        tp = self._tp
        for record in records:
            if record.offset < self.next_fetch_offset:
                continue
            consumer_record = self._consumer_record(tp, record)
            self.next_fetch_offset = record.offset + 1
            yield consumer_record
        self.next_fetch_offset = batch_end
        # The batches after it: aiokafka's own iterator, over what is left of self._records.
        yield from self._unpack_records()


# The aiokafka internals this module relies on (checked by install()).
_NEEDED = {
    _PartitionRecords: ("_unpack_records", "_consumer_record", "__next__"),
    _DefaultRecordBatchPy: ("_read_msg", "_maybe_uncompress", "base_offset", "timestamp_type"),
}


def install() -> None:
    """Make every aiokafka consumer in this process use the lenient classes (idempotent).
    The fetcher looks both names up at each fetch response, so running consumers are
    covered from their next fetch. Fails at once if aiokafka's internals moved."""
    missing = [
        f"{cls.__name__}.{name}"
        for cls, names in _NEEDED.items()
        for name in names
        if not hasattr(cls, name)
    ]
    if missing:
        raise RuntimeError(f"lenient_records does not fit this aiokafka: no {missing}")
    _fetcher.MemoryRecords = LenientMemoryRecords
    _fetcher.PartitionRecords = LenientPartitionRecords


def uninstall() -> None:
    _fetcher.MemoryRecords = _MemoryRecords
    _fetcher.PartitionRecords = _PartitionRecords
