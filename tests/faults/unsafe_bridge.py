"""``paybridge bridge`` with the bug the fault suite must catch: offsets marked done as soon as a
record is fetched, before Temporal accepted anything (what auto-commit consumers do)."""

from __future__ import annotations

from typing import Any

from bridge import consumer

_dispatch = consumer.Bridge._dispatch


def _commit_on_fetch(self: consumer.Bridge, tp: Any, offsets: Any, record: Any) -> None:
    _dispatch(self, tp, offsets, record)
    offsets.done(record.offset)


consumer.Bridge._dispatch = _commit_on_fetch  # type: ignore[method-assign]

if __name__ == "__main__":
    from tools.cli import main

    main()
