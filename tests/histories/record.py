"""Record histories of the current PaymentWorkflow for the replay test.

    .venv/bin/python -m tests.histories.record

Writes ``payment_v3_*.json`` here. Run it when a new version of the workflow ships (before
changing the code again), and keep the files of every version still running in production:
``payment_slice_*.json`` were recorded from the foundation slice (commit 5993aec), before the
saga replaced it behind the patch ``payment-saga-v2``; ``payment_saga_*.json`` from that saga
(v2), before ``payment-saga-v3-void-after-authorize`` and ``payment-saga-v3-temporal-cancel``.
The v3 histories include the paths those patches changed: cancels (signal and Temporal) with
the authorisation in flight, and a cancellation through Temporal while awaiting the callback,
driven as the race table drives them (tests/saga_races.py).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.saga_races import Race, run_cell
from tests.support import payment, time_skipping_worker
from tools.namespace import register_search_attributes
from workflows.simulations.ledger import Ledger

HERE = Path(__file__).parent
VERSION = "v3"
CASES = {
    "succeeded": {},
    "failed_declined": {"metadata": {"gateway": "decline"}},
    "timed_out": {"metadata": {"gateway": "never"}},
}
# name -> (step boundary, event) of the race table
RACES = {
    "cancelled_authorization_in_flight": ("authorisation in flight", "cancel signal"),
    "temporal_cancel_authorization_in_flight": ("authorisation in flight", "Temporal cancel"),
    "temporal_cancel_awaiting_callback": ("awaiting the callback", "Temporal cancel"),
    "temporal_cancel_while_compensating": ("compensating", "Temporal cancel"),
}


async def record() -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=shutil.which("temporal-test-server")
        or str(Path(sys.executable).parent / "temporal-test-server"),
    )
    try:
        await register_search_attributes(env.client, env.client.namespace)
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Ledger(Path(tmp) / "ledger.sqlite")
            ledger.seed()
            async with time_skipping_worker(env.client, ledger) as harness:
                for n, (name, overrides) in enumerate(CASES.items()):
                    p = payment(n, payment_id=f"hist-{VERSION}-{name}", **overrides)
                    handle = await harness.start(p)
                    await handle.result()
                    write(name, (await handle.fetch_history()).to_json())
            for name, (row, event) in RACES.items():

                async def keep(race: Race, name: str = name) -> None:
                    write(name, (await race.handle.fetch_history()).to_json())

                result = await run_cell(
                    env, ledger, row, event, then=keep, payment_id=f"hist-{VERSION}-{name}"
                )
                assert not result.problems, (name, result.text())
            ledger.close()
    finally:
        await env.shutdown()


def write(name: str, history: str) -> None:
    path = HERE / f"payment_{VERSION}_{name}.json"
    path.write_text(history)
    print(path.name)


if __name__ == "__main__":
    asyncio.run(record())
