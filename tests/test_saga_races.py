"""The saga race table (tests/saga_races.py): every step boundary x every interrupting event,
on the time-skipping server, asserting the money invariants in each cell.

Each cell asserts: exactly one outcome, with the status the cell expects, and the workflow
closed Completed (never Canceled, so that a redelivered PaymentCreated cannot start it again);
the ledger's net movement is minus the amount if SUCCEEDED and zero otherwise; every
authorisation the gateway granted is voided unless SUCCEEDED (and a success keeps it); the
compensations ran in reverse order (the void before the credit-back). The last test checks
that the table in docs/workflows.md is the one these cells produce;
``PAYBRIDGE_WRITE_RACE_TABLE=1`` rewrites it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from tests.saga_races import CELLS, TABLE_END, TABLE_START, CellResult, render, run_cell
from tools.namespace import register_search_attributes
from workflows.simulations.ledger import Ledger

DOCS = Path(__file__).parent.parent / "docs" / "workflows.md"
RESULTS: dict[tuple[str, str], CellResult] = {}


@pytest_asyncio.fixture(loop_scope="session")
async def race_env(time_skipping: WorkflowEnvironment) -> WorkflowEnvironment:
    await register_search_attributes(time_skipping.client, time_skipping.client.namespace)
    return time_skipping


@pytest.mark.parametrize(("row", "event"), CELLS, ids=[f"{r} x {e}" for r, e in CELLS])
async def test_race_cell(
    race_env: WorkflowEnvironment, ledger: Ledger, row: str, event: str
) -> None:
    result = await run_cell(race_env, ledger, row, event)
    RESULTS[(row, event)] = result
    assert not result.problems, f"{row} x {event}: {result.text()}"


def test_race_table_in_the_docs_is_what_the_tests_produce() -> None:
    if set(RESULTS) != set(CELLS):
        pytest.skip("only part of the table ran")
    table = render(RESULTS)
    if out := os.environ.get("PAYBRIDGE_RACE_TABLE_OUT"):
        Path(out).write_text(table)
    text = DOCS.read_text()
    assert TABLE_START in text and TABLE_END in text, "docs/workflows.md lost the table markers"
    head, rest = text.split(TABLE_START, 1)
    current, tail = rest.split(TABLE_END, 1)
    if os.environ.get("PAYBRIDGE_WRITE_RACE_TABLE"):
        DOCS.write_text(f"{head}{TABLE_START}\n{table}{TABLE_END}{tail}")
        current = f"\n{table}"
    assert current == f"\n{table}", (
        "docs/workflows.md shows another race table than the tests produce; "
        "PAYBRIDGE_WRITE_RACE_TABLE=1 rewrites it"
    )
