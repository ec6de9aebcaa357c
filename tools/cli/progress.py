"""Progress of long operator commands (`replay`, `dlq redrive`): a bar on a terminal, plain
lines otherwise.

The bar is rich's, from the ``tools`` extra; without the extra, or when stderr is not a terminal
(CI logs, pipes, `docker compose run -T`), a line ``LABEL: DONE/TOTAL records`` goes to stderr
at most every ``interval`` seconds, and once at the end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections.abc import Callable, Iterator

import click

Update = Callable[..., None]


@contextlib.contextmanager
def progress(label: str, total: int | None = None, *, interval: float = 1.0) -> Iterator[Update]:
    """Yields ``update(done, total=None)``; ``total`` may be given (or changed) later."""
    if sys.stderr.isatty() and importlib.util.find_spec("rich") is not None:
        with _bar(label, total) as update:
            yield update
        return
    lines = _Lines(label, total, interval)
    yield lines.update
    lines.finish()


class _Lines:
    def __init__(self, label: str, total: int | None, interval: float) -> None:
        self.label, self.total, self.interval = label, total, interval
        self.done = self.shown = -1
        self.at = 0.0

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if done != self.shown and time.monotonic() - self.at >= self.interval:
            self.show()

    def finish(self) -> None:
        if self.done >= 0 and self.done != self.shown:
            self.show()

    def show(self) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        click.echo(f"{self.label}: {self.done}{of} records", err=True)
        self.shown, self.at = self.done, time.monotonic()


@contextlib.contextmanager
def _bar(label: str, total: int | None) -> Iterator[Update]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(label, total=total)

        def update(done: int, total: int | None = None) -> None:
            if total is not None:
                bar.update(task, total=total)
            bar.update(task, completed=done)

        yield update
