"""Record histories of PaymentWorkflow runs started by an early signal, for the replay test.

    .venv/bin/python -m tests.histories.record_early

Writes ``payment_early_*.json`` here: a callback that came before its payment (the run waits,
then runs the saga), and one whose payment never came (the run dead-letters it and fails).
Run it when the waiting step changes shape (before changing the code again), and keep the files
of every version still running in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from schemas.events import CallbackStatus
from schemas.ids import payment_workflow_id
from schemas.workflow_api import (
    GatewayCallbackSignal,
    PaymentCreatedSignal,
    PaymentWorkflowInput,
    SourceRecord,
)
from tests.support import GATEWAY_SECRET, payment, time_skipping_worker
from tools.namespace import register_search_attributes
from workflows.models import OrphanDeadLetterInput
from workflows.simulations.gateway import GatewayBehaviour, signed_callback
from workflows.simulations.ledger import Ledger

HERE = Path(__file__).parent


@activity.defn(name="dead_letter_orphan")
async def dead_letter_orphan(input: OrphanDeadLetterInput) -> None:
    pass


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
            silent = GatewayBehaviour(latency=0, callbacks=False)
            async with time_skipping_worker(
                env.client, ledger, gateway=silent, fakes=[dead_letter_orphan]
            ) as harness:
                for name, comes in (("early_callback_succeeded", True), ("early_orphaned", False)):
                    # The replay test names the workflow payment-{file stem}, and a run takes
                    # its payment id from its workflow id: the payment id is the stem.
                    p = payment(0, payment_id=f"payment_{name}")
                    callback = signed_callback(
                        payment_id=p.payment_id,
                        gateway_ref="gw-hist",
                        status=CallbackStatus.AUTHORIZED,
                        secret=GATEWAY_SECRET,
                    )
                    source = SourceRecord(
                        topic="gateway.callbacks",
                        partition=0,
                        offset=0,
                        timestamp_ms=0,
                        key=p.payment_id.encode(),
                        value=b"\x00",
                    )
                    common = {
                        "id": payment_workflow_id(p.payment_id),
                        "task_queue": harness.task_queue,
                        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                    }
                    handle = await env.client.start_workflow(
                        "PaymentWorkflow",
                        PaymentWorkflowInput(payment=None, orphan_timeout=timedelta(minutes=10)),
                        start_signal="gateway_callback",
                        start_signal_args=[GatewayCallbackSignal(callback=callback, source=source)],
                        **common,  # type: ignore[arg-type]
                    )
                    if comes:
                        await env.client.start_workflow(
                            "PaymentWorkflow",
                            PaymentWorkflowInput(payment=p),
                            start_signal="payment_created",
                            start_signal_args=[PaymentCreatedSignal(payment=p)],
                            **common,  # type: ignore[arg-type]
                        )
                    with contextlib.suppress(WorkflowFailureError):
                        await handle.result()
                    history = await handle.fetch_history()
                    (HERE / f"payment_{name}.json").write_text(history.to_json())
                    print(f"payment_{name}.json")
            ledger.close()
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record())
