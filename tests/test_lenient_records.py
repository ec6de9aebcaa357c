"""plumbing.lenient_records: aiokafka's fetcher survives a header key that is not UTF-8.

Offline (record batches built here, no broker), with aiokafka's C parser in this process and
its pure-Python parser in a subprocess (``AIOKAFKA_NO_EXTENSIONS=1`` is read at import): the
two raise different errors on such a key, and the fix must handle both. The broker and the
bridge are in tests/test_hostile_records.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aiokafka.util
import pytest
from aiokafka.consumer.fetcher import READ_COMMITTED
from aiokafka.structs import TopicPartition

from plumbing import lenient_records as lr
from tests.raw_kafka import build_batch

ROOT = Path(__file__).resolve().parent.parent
TP = TopicPartition("payments.created", 0)
BAD_KEY = b"\xff\xfebad-key"
BAD_HEADERS = [("ok", b"1"), (BAD_KEY, b"\xff"), ("", None)]


def good(n: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return f"p{n}".encode(), f"good-{n}".encode(), [("schema", b"v1")]


BAD = (b"p-bad", b"\x00BAD\xff", BAD_HEADERS)
# (first offset, batch): the bad record in the middle, alone, at the start, and gzip-compressed
BATCHES = [
    (0, build_batch([good(0), good(1), BAD, good(3)], base_offset=0)),
    (4, build_batch([BAD], base_offset=4)),
    (5, build_batch([good(5), good(6)], base_offset=5)),
    (7, build_batch([good(7), BAD, good(9)], base_offset=7, compression_type=1)),
]
BAD_OFFSETS = [2, 4, 8]


def fetched_from(offset: int) -> bytes:
    """What a broker returns for a fetch at ``offset``: from the batch holding it on."""
    first = max(n for n, (base, _) in enumerate(BATCHES) if base <= offset)
    return b"".join(batch for _, batch in BATCHES[first:])


def consume(start: int = 0, data: bytes | None = None, deserializer: object = None) -> list:  # type: ignore[type-arg]
    records = lr.LenientMemoryRecords(data if data is not None else fetched_from(start))
    partition = lr.LenientPartitionRecords(
        TP, records, [], start, None, deserializer, True, READ_COMMITTED
    )
    return list(partition)


def check_offline() -> str:
    out = consume()
    assert [r.offset for r in out] == list(range(10)), [r.offset for r in out]
    bad = [r for r in out if lr.undecodable_header_keys(r)]
    assert [r.offset for r in bad] == BAD_OFFSETS
    for record in bad:
        assert (record.key, record.value) == (b"p-bad", b"\x00BAD\xff")
        raw = [
            (k.raw if isinstance(k, lr.UndecodableHeaderKey) else k, v) for k, v in record.headers
        ]
        assert raw == BAD_HEADERS
        assert [lr.printable_key(k) for k, _ in record.headers] == ["ok", "\\xff\\xfebad-key", ""]
        assert all(k.startswith("") for k, _ in record.headers)  # still a str for callers
    assert all(type(k) is str for r in out if r not in bad for k, _ in r.headers)
    # a fetch that starts after a bad record inside its batch (restart from a committed offset)
    for start in (1, 3, 4, 9):
        assert [r.offset for r in consume(start)] == list(range(start, 10)), start
    # a partial batch at the end of the fetched data (cut by the fetch size) is left for later
    cut = fetched_from(4) + build_batch([good(10), BAD], base_offset=10)[:-20]
    records = lr.LenientPartitionRecords(
        TP, lr.LenientMemoryRecords(cut), [], 4, None, None, True, READ_COMMITTED
    )
    assert [r.offset for r in records] == list(range(4, 10))
    assert records.next_fetch_offset == 10

    # a UnicodeDecodeError that is not about a header key is not swallowed
    def deserializer(value: bytes) -> str:
        return value.decode("ascii")

    with pytest.raises(UnicodeDecodeError):
        consume(data=fetched_from(0), deserializer=deserializer)
    return "pure-Python" if aiokafka.util.NO_EXTENSIONS else "C"


@pytest.fixture(autouse=True)
def installed() -> None:
    lr.install()


def test_the_c_parser_survives_a_header_key_that_is_not_utf8() -> None:
    assert check_offline() == "C"


def test_the_pure_python_parser_survives_it_too() -> None:
    code = (
        "import pytest, sys; from tests import test_lenient_records as t; "
        "t.lr.install(); print(t.check_offline())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pure-Python"


def test_without_the_fix_the_batch_cannot_be_read() -> None:
    """What the fix is for: aiokafka's own classes raise on the first bad record."""
    from aiokafka.consumer.fetcher import PartitionRecords
    from aiokafka.record.memory_records import MemoryRecords

    records = PartitionRecords(
        TP, MemoryRecords(fetched_from(0)), [], 0, None, None, True, READ_COMMITTED
    )
    with pytest.raises((UnicodeDecodeError, aiokafka.errors.CorruptRecordException)):
        list(records)


def test_install_refuses_an_aiokafka_whose_internals_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(lr._PartitionRecords, "_consumer_record")
    with pytest.raises(RuntimeError, match="_consumer_record"):
        lr.install()


async def test_the_kafka_module_installs_it() -> None:
    from aiokafka.consumer import fetcher

    from plumbing.kafka import consumer
    from plumbing.settings import Settings

    lr.uninstall()
    assert fetcher.PartitionRecords is lr._PartitionRecords
    consumer(Settings())
    assert fetcher.PartitionRecords is lr.LenientPartitionRecords
    assert fetcher.MemoryRecords is lr.LenientMemoryRecords
