"""Offset tracking: the committed offset never passes a record that is not done."""

from __future__ import annotations

from bridge.offsets import PartitionOffsets


def test_commits_lowest_unfinished_offset() -> None:
    offsets = PartitionOffsets()
    assert offsets.committable() is None
    for n in range(10, 15):
        offsets.fetched(n)
    assert offsets.committable() == 10
    for n in (11, 12, 14):
        offsets.done(n)
    assert offsets.committable() == 10  # 10 is still running: a crash must redeliver it
    offsets.done(10)
    assert offsets.committable() == 13
    offsets.done(13)
    assert offsets.committable() == 15
    assert offsets.inflight == 0


def test_to_commit_only_when_moved() -> None:
    offsets = PartitionOffsets()
    offsets.fetched(0)
    offsets.done(0)
    assert offsets.to_commit() == 1
    offsets.committed = 1
    assert offsets.to_commit() is None
    offsets.fetched(1)
    assert offsets.to_commit() is None
    offsets.done(1)
    assert offsets.to_commit() == 2
