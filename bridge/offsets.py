"""Per-partition offset tracking for out-of-order completion.

Records of one partition run concurrently (different keys), so they finish out of order. The
offset committed for a partition is the lowest offset not yet done: everything below it is
started, signalled or dead-lettered. A crash can then only redeliver records, never skip one.
"""

from __future__ import annotations

import heapq


class PartitionOffsets:
    """Offsets of one partition between fetch and done, for one assignment generation."""

    def __init__(self) -> None:
        self._pending: set[int] = set()
        self._heap: list[int] = []
        self._next: int | None = None  # one past the highest offset fetched
        self.committed: int | None = None
        self.revoked = False

    def fetched(self, offset: int) -> None:
        self._pending.add(offset)
        heapq.heappush(self._heap, offset)
        if self._next is None or offset >= self._next:
            self._next = offset + 1

    def done(self, offset: int) -> None:
        self._pending.discard(offset)

    @property
    def inflight(self) -> int:
        return len(self._pending)

    def committable(self) -> int | None:
        """The offset to commit (next record to read after a restart), or None if nothing read."""
        while self._heap and self._heap[0] not in self._pending:
            heapq.heappop(self._heap)
        if self._heap:
            return self._heap[0]
        return self._next

    def to_commit(self) -> int | None:
        """The committable offset if it moved since the last commit, else None."""
        offset = self.committable()
        if offset is None or offset == self.committed:
            return None
        return offset
