"""Record histories of the current PaymentWorkflow for the replay test.

    .venv/bin/python -m tests.histories.record

Writes ``payment_saga_*.json`` here. Run it when a new version of the workflow ships (before
changing the code again), and keep the files of every version still running in production.
The ``payment_slice_*.json`` files were recorded the same way from the foundation slice
(commit 5993aec), before the saga replaced it behind the patch ``payment-saga-v2``.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.support import payment, time_skipping_worker
from tools.namespace import register_search_attributes
from workflows.simulations.ledger import Ledger

HERE = Path(__file__).parent
CASES = {
    "saga_succeeded": {},
    "saga_failed_declined": {"metadata": {"gateway": "decline"}},
    "saga_timed_out": {"metadata": {"gateway": "never"}},
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
                    p = payment(n, payment_id=f"hist-{name}", **overrides)
                    handle = await harness.start(p)
                    await handle.result()
                    history = await handle.fetch_history()
                    (HERE / f"payment_{name}.json").write_text(history.to_json())
                    print(f"payment_{name}.json")
            ledger.close()
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record())
