"""The SQLite ledger: idempotent debits and credit-backs, never a negative balance."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workflows.simulations.ledger import Ledger


def fresh(tmp_path: Path, balance: int = 1_000) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.seed(accounts=["acct-a"], currencies=["EUR"], balance_minor=balance)
    return ledger


def test_debit_is_idempotent_by_payment_id(tmp_path: Path) -> None:
    ledger = fresh(tmp_path)
    assert ledger.debit("p1", "acct-a", "EUR", 300) == "debited"
    assert ledger.debit("p1", "acct-a", "EUR", 300) == "already_debited"
    assert ledger.balance("acct-a", "EUR") == 700
    assert [m.delta_minor for m in ledger.movements("p1")] == [-300]


def test_insufficient_funds_and_unknown_balances_move_nothing(tmp_path: Path) -> None:
    ledger = fresh(tmp_path)
    assert ledger.debit("p1", "acct-a", "EUR", 1_001) == "insufficient_funds"
    assert ledger.debit("p2", "acct-a", "USD", 1) == "no_such_balance"
    assert ledger.debit("p3", "acct-zz", "EUR", 1) == "no_such_balance"
    assert ledger.balance("acct-a", "EUR") == 1_000
    assert ledger.movements("p1") == []
    # A rejected debit does not burn the payment id: a later retry with funds goes through.
    assert ledger.debit("p1", "acct-a", "EUR", 1_000) == "debited"
    assert ledger.balance("acct-a", "EUR") == 0


def test_credit_back_gives_back_once_and_only_what_was_taken(tmp_path: Path) -> None:
    ledger = fresh(tmp_path)
    assert ledger.credit_back("p1") == "nothing_to_credit"
    ledger.debit("p1", "acct-a", "EUR", 250)
    assert ledger.credit_back("p1") == "credited"
    assert ledger.credit_back("p1") == "already_credited"
    assert ledger.balance("acct-a", "EUR") == 1_000
    assert [m.delta_minor for m in ledger.movements("p1")] == [-250, 250]


def test_two_ledgers_on_one_file_never_overdraw(tmp_path: Path) -> None:
    """Two worker processes share the file: concurrent debits never take more than there is."""
    first, second = fresh(tmp_path), Ledger(tmp_path / "ledger.sqlite")
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        verdicts = list(
            pool.map(
                lambda n: (first if n % 2 else second).debit(f"p{n % 60}", "acct-a", "EUR", 40),
                range(120),
            )
        )
    # 60 distinct payments of 40 on a balance of 1000: exactly 25 fit, each once.
    assert verdicts.count("debited") == 25
    assert first.balance("acct-a", "EUR") == 0


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(1, 400), st.booleans()), max_size=40))
def test_balance_is_never_negative_and_always_adds_up(ops: list[tuple[int, int, bool]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ledger = fresh(Path(tmp))
        for payment, amount, compensate in ops:
            pid = f"p{payment}"
            if compensate:
                ledger.credit_back(pid)
            else:
                ledger.debit(pid, "acct-a", "EUR", amount)
            balance = ledger.balance("acct-a", "EUR")
            assert balance is not None and balance >= 0
        moved = sum(m.delta_minor for n in range(10) for m in ledger.movements(f"p{n}"))
        assert ledger.balance("acct-a", "EUR") == 1_000 + moved
        ledger.close()


# -- a failed COMMIT (break 3) ----------------------------------------------------------------


def fail_statements(ledger: Ledger, *statements: str) -> list[str]:
    """Make SQLite refuse the next ``statements`` (e.g. COMMIT) on ``ledger``'s connection, as
    it refuses a COMMIT that hits an I/O error or a full disk; returns what was refused."""
    pending, refused = list(statements), []

    def authorizer(action: int, arg1: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_TRANSACTION and pending and arg1 == pending[0]:
            refused.append(pending.pop(0))
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    ledger._db.set_authorizer(authorizer)
    return refused


def test_a_failed_commit_rolls_back_and_the_ledger_keeps_working(tmp_path: Path) -> None:
    ledger = fresh(tmp_path)
    other = Ledger(tmp_path / "ledger.sqlite")  # a second worker process on the same file
    refused = fail_statements(ledger, "COMMIT")
    with pytest.raises(sqlite3.DatabaseError):
        ledger.debit("p1", "acct-a", "EUR", 300)
    assert refused == ["COMMIT"]
    # Nothing moved: the activity failed, and its retry debits exactly once.
    assert ledger.movements("p1") == [] and ledger.balance("acct-a", "EUR") == 1_000
    assert ledger.debit("p1", "acct-a", "EUR", 300) == "debited"
    # The write lock was released: another connection can write at once.
    assert other.debit("p2", "acct-a", "EUR", 200) == "debited"
    assert ledger.balance("acct-a", "EUR") == 500
    other.close()
    ledger.close()


def test_when_rollback_fails_too_the_connection_is_reopened(tmp_path: Path) -> None:
    ledger = fresh(tmp_path)
    other = Ledger(tmp_path / "ledger.sqlite")
    refused = fail_statements(ledger, "COMMIT", "ROLLBACK")
    with pytest.raises(sqlite3.DatabaseError):
        ledger.debit("p1", "acct-a", "EUR", 300)
    assert refused == ["COMMIT", "ROLLBACK"]
    assert other.debit("p2", "acct-a", "EUR", 200) == "debited"
    assert ledger.debit("p1", "acct-a", "EUR", 300) == "debited"
    assert ledger.balance("acct-a", "EUR") == 500
    assert [m.delta_minor for m in other.movements("p1")] == [-300]
    other.close()
    ledger.close()


def test_every_commit_is_synced(tmp_path: Path) -> None:
    ledger = fresh(tmp_path)
    # 2 = FULL: with WAL, NORMAL (1) may lose the last commits on power loss, after Temporal
    # has recorded the debit as done.
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    ledger.close()


# -- movements belong to a workflow run (break 4) ----------------------------------------------


def test_a_retry_of_the_same_run_is_idempotent_and_another_run_is_a_duplicate(
    tmp_path: Path,
) -> None:
    ledger = fresh(tmp_path)
    assert ledger.debit("p1", "acct-a", "EUR", 300, run_id="run-1") == "debited"
    assert ledger.debit("p1", "acct-a", "EUR", 300, run_id="run-1") == "already_debited"
    assert ledger.debit("p1", "acct-a", "EUR", 300, run_id="run-2") == "duplicate_payment"
    # The second run's compensation never gives back the first run's debit.
    assert ledger.credit_back("p1", run_id="run-2") == "not_this_run"
    assert ledger.balance("acct-a", "EUR") == 700
    assert ledger.credit_back("p1", run_id="run-1") == "credited"
    assert ledger.credit_back("p1", run_id="run-1") == "already_credited"
    # A payment whose first run was compensated is still a duplicate for a later run.
    assert ledger.debit("p1", "acct-a", "EUR", 300, run_id="run-3") == "duplicate_payment"
    assert ledger.credit_back("p1", run_id="run-3") == "not_this_run"
    assert ledger.balance("acct-a", "EUR") == 1_000
    assert [(m.delta_minor, m.run_id) for m in ledger.movements("p1")] == [
        (-300, "run-1"),
        (300, "run-1"),
    ]
    ledger.close()


def test_a_ledger_written_before_runs_were_recorded_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE accounts (account_id TEXT NOT NULL, currency TEXT NOT NULL,
            balance_minor INTEGER NOT NULL CHECK (balance_minor >= 0),
            PRIMARY KEY (account_id, currency));
        CREATE TABLE movements (idempotency_key TEXT PRIMARY KEY, account_id TEXT NOT NULL,
            currency TEXT NOT NULL, delta_minor INTEGER NOT NULL,
            at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
        INSERT INTO accounts VALUES ('acct-a', 'EUR', 700);
        INSERT INTO movements (idempotency_key, account_id, currency, delta_minor)
            VALUES ('debit:p-old', 'acct-a', 'EUR', -300);
        """
    )
    old.close()
    ledger = Ledger(path)
    # A run in flight across the upgrade retries its debit: its own row, recorded without a run.
    assert ledger.debit("p-old", "acct-a", "EUR", 300, run_id="run-x") == "already_debited"
    assert ledger.credit_back("p-old", run_id="run-x") == "credited"
    assert ledger.balance("acct-a", "EUR") == 1_000
    assert ledger.debit("p-new", "acct-a", "EUR", 100, run_id="run-y") == "debited"
    assert [m.run_id for m in ledger.movements("p-new")] == ["run-y"]
    ledger.close()
