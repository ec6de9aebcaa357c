"""The fault-injection suite in its CI mode, and proof that it catches a real ordering bug.

CI runs every kind of fault once over 300 payments produced at 10/s (the faults are spread over
those 30 s, so each lands while payments are in flight); ``pytest --long`` runs today's 1,000
at 25/s. The suite's own long mode runs from the command line:
``python -m tests.faults --long --seed N`` (5,000 payments, every kind three times).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests import scale
from tests.faults.harness import FAULTS, Verdict, run

SEED = int(os.environ.get("PAYBRIDGE_FAULT_SEED", "1"))


async def test_faults_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    # Every kind of fault once, in a seeded order at seeded moments.
    payments = scale.pick(ci=300, long=1000)
    rate = scale.pick(ci=10.0, long=25.0)
    verdict = await run(
        tmp_path / "cluster", seed=SEED, payments=payments, faults=len(FAULTS), rate=rate
    )
    print(verdict.table_row())
    assert {fault.kind for fault in verdict.faults} == set(FAULTS)
    # Each fault landed while payments were in flight: outcomes kept coming after it.
    assert all(fault.recovered is not None for fault in verdict.faults), verdict.table_row()
    assert verdict.ok, verdict.problems()
    assert verdict.outcomes >= payments


async def test_suite_catches_commits_moved_before_the_temporal_call(tmp_path: Path) -> None:
    unsafe = [sys.executable, "-m", "tests.faults.unsafe_bridge", "-v", "bridge"]
    verdict = await run(
        tmp_path / "cluster",
        seed=SEED,
        payments=150,
        faults=1,
        rate=100,
        # Lost payments never publish: stop waiting once no outcome came for this long.
        timeout=scale.pick(ci=30, long=60),
        bridge_argv=unsafe,
        plan=[(1.0, "restart_bridge_in_outage")],
    )
    assert not verdict.ok
    assert verdict.lost, "the suite did not notice payments lost by committing early"
    never_started = [pid for pid, why in verdict.lost.items() if "no workflow exists" in why]
    assert never_started, verdict.problems()
    assert f"lost {sorted(never_started)[0]}: no workflow exists" in verdict.problems()


def test_a_copy_with_the_same_event_id_fails_the_verdict() -> None:
    clean = Verdict(seed=1, payments=0)
    assert clean.ok
    copied = Verdict(seed=1, payments=0, copies={"f1-00007": 1})
    assert not copied.ok
    assert copied.republished == 1
    assert "copied f1-00007: 1 more record(s) with the same event id" in copied.problems()
    assert "| 0 | 0 | 1 |" in copied.table_row()
