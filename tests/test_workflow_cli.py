"""`paybridge resolve`, `status`, `recurring create|status|cancel` and `namespace register`
as an operator runs them (subprocesses), against the time-skipping server and the dev server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest_asyncio
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from bridge.events import OutcomeStatus
from tests.support import Harness, payment, time_skipping_worker
from workflows.admin import register_search_attributes
from workflows.ledger import DEMO_BALANCE_MINOR, Ledger
from workflows.recurring import recurring_workflow_id
from workflows.shared import PaymentPhase, RecurringState

PAYBRIDGE = str(Path(sys.executable).parent / "paybridge")


async def cli(address: str, *args: str, task_queue: str = "payments") -> tuple[int, str, str]:
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_TASK_QUEUE": task_queue,
        "PAYBRIDGE_CALLBACK_TIMEOUT": "5m",
    }
    process = await asyncio.create_subprocess_exec(
        PAYBRIDGE, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


@pytest_asyncio.fixture(loop_scope="session")
async def harness(time_skipping: WorkflowEnvironment, ledger: Ledger) -> AsyncIterator[Harness]:
    await register_search_attributes(time_skipping.client, time_skipping.client.namespace)
    async with time_skipping_worker(time_skipping.client, ledger) as running:
        yield running


async def charged(handle: WorkflowHandle[Any, RecurringState], terms: int) -> None:
    """Wait (real time: the clock is not skipping now) until ``terms`` terms are charged."""
    for _ in range(600):
        state = await handle.query("status", result_type=RecurringState)
        if len(state.charges) >= terms:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {len(state.charges)} terms charged, expected {terms}")


def address_of(client: Client) -> str:
    return client.service_client.config.target_host


async def test_resolve_from_the_command_line(
    harness: Harness, time_skipping: WorkflowEnvironment
) -> None:
    address = address_of(harness.client)
    p = payment(31, metadata={"gateway": "error"})
    handle = await harness.start(p)
    await harness.wait_for(p, PaymentPhase.AWAITING_CALLBACK, step="gateway callback")
    code, _, err = await cli(address, "resolve", p.payment_id, "--approve")
    assert code == 1 and "not MANUAL_REVIEW" in err  # too early: nothing to resolve yet

    await time_skipping.sleep(timedelta(hours=1))
    await harness.wait_for(p, PaymentPhase.MANUAL_REVIEW)
    code, out, err = await cli(address, "status", p.payment_id, "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "MANUAL_REVIEW"
    code, out, err = await cli(address, "resolve", p.payment_id, "--decline", "--operator", "ana")
    assert code == 0, err
    outcome = await handle.result()
    assert (outcome.status, outcome.reason) == (OutcomeStatus.FAILED, "declined in manual review")
    code, out, _ = await cli(address, "status", p.payment_id)
    assert "FAILED  (declined in manual review)" in out and "declined by ana" in out

    code, _, err = await cli(address, "status", "no-such-payment")
    assert code == 1 and "no workflow payment-no-such-payment" in err


async def test_recurring_from_the_command_line(
    harness: Harness, time_skipping: WorkflowEnvironment
) -> None:
    address, sub = address_of(harness.client), f"cli-{uuid.uuid4().hex[:8]}"
    args = ["--subscription-id", sub, "--account", "acct-0077", "--amount", "500"]
    code, out, err = await cli(
        address,
        "recurring",
        "create",
        *args,
        "--period",
        "30d",
        "--terms",
        "6",
        task_queue=harness.task_queue,
    )
    assert code == 0, err
    assert recurring_workflow_id(sub) in out
    code, _, err = await cli(address, "recurring", "create", *args, task_queue=harness.task_queue)
    assert code == 1 and "already exists" in err

    handle = harness.client.get_workflow_handle(
        recurring_workflow_id(sub), result_type=RecurringState
    )
    await charged(handle, 1)
    await time_skipping.sleep(timedelta(days=30))
    await charged(handle, 2)
    code, out, err = await cli(address, "recurring", "cancel", sub)
    assert code == 0, err
    final = await handle.result()
    assert [c.term for c in final.charges] == [1, 2]
    assert harness.ledger.balance("acct-0077", "EUR") == DEMO_BALANCE_MINOR - 2 * 500
    code, out, _ = await cli(address, "recurring", "status", sub)
    assert f"{sub}  ended  2 of 6 terms charged" in out


async def test_namespace_register(client: Client) -> None:
    address, name = address_of(client), f"ns-{uuid.uuid4().hex[:8]}"
    code, out, err = await cli(address, "namespace", "register", "--temporal-namespace", name)
    assert code == 0, err
    assert f"namespace {name}: registered" in out
    assert "MerchantId, PaymentStatus" in out
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=name)
    )
    assert listed.custom_attributes["PaymentStatus"] == listed.custom_attributes["MerchantId"]
    code, out, err = await cli(address, "namespace", "register", "--temporal-namespace", name)
    assert code == 0, err
    assert "exists" in out and "none (all present)" in out
