"""The ledger: accounts and balances in an embedded SQLite file, opened by the worker.

Balances are kept per (account, currency) and never go negative. Every movement is recorded
under an idempotency key (the payment id and the kind of movement), so a retried or replayed
activity never moves money twice.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

DEMO_ACCOUNTS = tuple(f"acct-{n:04d}" for n in range(1, 1001))
DEMO_CURRENCIES = ("EUR", "USD", "GBP")
DEMO_BALANCE_MINOR = 10_000_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    balance_minor INTEGER NOT NULL CHECK (balance_minor >= 0),
    PRIMARY KEY (account_id, currency)
);
CREATE TABLE IF NOT EXISTS movements (
    idempotency_key TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    delta_minor INTEGER NOT NULL,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
"""


class Ledger:
    """A small, thread-safe SQLite ledger; one instance per worker process."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def seed(
        self,
        accounts: Iterable[str] = DEMO_ACCOUNTS,
        currencies: Iterable[str] = DEMO_CURRENCIES,
        balance_minor: int = DEMO_BALANCE_MINOR,
    ) -> None:
        """Create the accounts that do not exist yet (existing balances are left alone)."""
        rows = [(a, c, balance_minor) for a in accounts for c in currencies]
        with self._lock:
            self._db.executemany("INSERT OR IGNORE INTO accounts VALUES (?, ?, ?)", rows)

    def account_exists(self, account_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM accounts WHERE account_id = ? LIMIT 1", (account_id,)
            ).fetchone()
        return row is not None

    def balance(self, account_id: str, currency: str) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT balance_minor FROM accounts WHERE account_id = ? AND currency = ?",
                (account_id, currency),
            ).fetchone()
        return None if row is None else int(row[0])

    def movement(self, idempotency_key: str) -> int | None:
        """The delta recorded under ``idempotency_key``, or None if nothing was moved."""
        with self._lock:
            row = self._db.execute(
                "SELECT delta_minor FROM movements WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
        return None if row is None else int(row[0])
