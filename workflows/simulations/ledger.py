"""The ledger: accounts and balances in an embedded SQLite file, opened by the worker.

Balances are kept per (account, currency) and never go negative. Every movement is recorded
under an idempotency key (the payment id and the kind of movement), so a retried or replayed
activity never moves money twice. A movement also records the workflow run that made it: a
retried debit of the same run is idempotent, while another run of the same payment id (the
payment started again after Temporal forgot the first run) is told it is a duplicate, and can
never credit back the first run's debit. Rows written before runs were recorded have none and
count as the asking run's own (the behaviour they were written under).

Durability: ``synchronous=FULL``, so that a movement Temporal has recorded as done survives a
power loss (with ``NORMAL`` the last commits in the write-ahead log can be lost). A failed
COMMIT (I/O error, full disk) is rolled back, or the connection is reopened, so that the write
lock is never left held.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

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
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    run_id TEXT
);
"""

# Ledgers created before movements recorded their workflow run get the column (NULL = unknown).
_ADD_RUN_ID = "ALTER TABLE movements ADD COLUMN run_id TEXT"


DebitVerdict = Literal[
    "debited", "already_debited", "duplicate_payment", "insufficient_funds", "no_such_balance"
]
CreditVerdict = Literal["credited", "already_credited", "nothing_to_credit", "not_this_run"]


def debit_key(payment_id: str) -> str:
    return f"debit:{payment_id}"


def credit_back_key(payment_id: str) -> str:
    return f"credit-back:{payment_id}"


@dataclass(frozen=True)
class Movement:
    idempotency_key: str
    account_id: str
    currency: str
    delta_minor: int
    run_id: str | None = None  # the workflow run that moved it; None: unknown (older rows)


def _same_run(recorded: str | None, asking: str | None) -> bool:
    """Whether a movement recorded by run ``recorded`` belongs to the run ``asking``; a row
    or a caller without a run (older rows, tools) matches any, as before runs were kept."""
    return recorded is None or asking is None or recorded == asking


class Ledger:
    """A small, thread-safe SQLite ledger; one instance per worker process."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = self._open()
        self._db.executescript(_SCHEMA)
        self._add_run_column()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the activity reports it (see the module docstring).
        db.execute("PRAGMA synchronous=FULL")
        return db

    def _add_run_column(self) -> None:
        def columns() -> set[str]:
            return {str(row[1]) for row in self._db.execute("PRAGMA table_info(movements)")}

        if "run_id" in columns():
            return
        with self._lock, self._transaction():
            if "run_id" not in columns():  # another process may have added it meanwhile
                self._db.execute(_ADD_RUN_ID)

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

    def debit(
        self,
        payment_id: str,
        account_id: str,
        currency: str,
        amount_minor: int,
        *,
        run_id: str | None = None,
    ) -> DebitVerdict:
        """Take ``amount_minor`` from the account once per payment; never below zero.

        ``run_id`` is the workflow run asking: the same run asking again is told
        ``already_debited``; another run of the same payment id ``duplicate_payment``, and
        nothing moves.
        """
        if amount_minor <= 0:
            raise ValueError("a debit moves a positive amount")
        key = debit_key(payment_id)
        with self._lock, self._transaction():
            done = self._movement(key)
            if done is not None:
                return "already_debited" if _same_run(done.run_id, run_id) else "duplicate_payment"
            row = self._db.execute(
                "SELECT balance_minor FROM accounts WHERE account_id = ? AND currency = ?",
                (account_id, currency),
            ).fetchone()
            if row is None:
                return "no_such_balance"
            if int(row[0]) < amount_minor:
                return "insufficient_funds"
            self._db.execute(
                "UPDATE accounts SET balance_minor = balance_minor - ? "
                "WHERE account_id = ? AND currency = ?",
                (amount_minor, account_id, currency),
            )
            self._record(key, account_id, currency, -amount_minor, run_id)
            return "debited"

    def credit_back(self, payment_id: str, *, run_id: str | None = None) -> CreditVerdict:
        """Give back what ``payment_id``'s debit took, at most once (the debit's compensation).

        Only the run that debited gives back (``not_this_run`` for another run: a payment
        started again never undoes the first run's debit).
        """
        key = credit_back_key(payment_id)
        with self._lock, self._transaction():
            debit = self._movement(debit_key(payment_id))
            if debit is None:
                return "nothing_to_credit"
            if not _same_run(debit.run_id, run_id):
                return "not_this_run"
            if self._movement(key) is not None:
                return "already_credited"
            self._db.execute(
                "UPDATE accounts SET balance_minor = balance_minor + ? "
                "WHERE account_id = ? AND currency = ?",
                (-debit.delta_minor, debit.account_id, debit.currency),
            )
            self._record(key, debit.account_id, debit.currency, -debit.delta_minor, run_id)
            return "credited"

    def movements(self, payment_id: str) -> list[Movement]:
        """Every movement recorded for ``payment_id`` (debit first)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM movements WHERE idempotency_key IN (?, ?) ORDER BY rowid",
                (debit_key(payment_id), credit_back_key(payment_id)),
            ).fetchall()
        return [_movement_of(row) for row in rows]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the write lock up front, so two processes sharing the file
        # cannot both see "not debited yet" and both debit.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            # Inside the try: a COMMIT that fails (I/O error, full disk, busy) must not leave
            # the transaction open with the write lock held.
            self._db.execute("COMMIT")
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """End the failed transaction: ROLLBACK, or, if SQLite cannot even do that, close the
        connection (which releases its locks) and open a fresh one. SQLite may already have
        rolled back by itself after an I/O error or a full disk; then there is nothing to do."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("ledger %s: ROLLBACK failed (%s); reopening the connection", self.path, exc)
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = self._open()

    def _movement(self, key: str) -> Movement | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM movements WHERE idempotency_key = ?", (key,)
        ).fetchone()
        return None if row is None else _movement_of(row)

    def _record(
        self, key: str, account_id: str, currency: str, delta_minor: int, run_id: str | None
    ) -> None:
        self._db.execute(
            "INSERT INTO movements (idempotency_key, account_id, currency, delta_minor, run_id) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, account_id, currency, delta_minor, run_id),
        )


_COLUMNS = "idempotency_key, account_id, currency, delta_minor, run_id"


def _movement_of(row: tuple[object, ...]) -> Movement:
    key, account, currency, delta, run = row
    return Movement(
        str(key), str(account), str(currency), int(str(delta)), None if run is None else str(run)
    )
