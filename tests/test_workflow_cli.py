"""`paybridge resolve`, `status`, `recurring create|status|cancel` and `namespace register`
as an operator runs them (subprocesses), against the time-skipping server and the dev server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
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
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from plumbing.settings import Settings
from plumbing.temporal import connect
from schemas.events import CallbackStatus, OutcomeStatus, PaymentOutcome
from schemas.ids import recurring_workflow_id
from schemas.workflow_api import PaymentPhase, PaymentState, RecurringState
from tests.support import Harness, payment, time_skipping_worker
from tools.devstack import DEV_GATEWAY_SECRET
from tools.namespace import register_search_attributes
from tools.processes import free_port
from tools.producing import read_outcomes, send_events
from workflows.simulations.gateway import signed_callback
from workflows.simulations.ledger import DEMO_BALANCE_MINOR, Ledger

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


async def test_dev_stack_without_simulator_waits_for_real_callbacks(tmp_path: Path) -> None:
    """`paybridge dev --no-simulator`: the payment waits until a producer of
    gateway.callbacks answers (signed with the dev secret); no answer times out."""
    kafka, temporal, metrics = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}",
        "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal}",
        "PAYBRIDGE_METRICS_PORT": str(metrics),
        "PAYBRIDGE_SDK_METRICS_PORT": "0",
        "PAYBRIDGE_WEBHOOK_PORT": str(free_port()),
        "PAYBRIDGE_CALLBACK_TIMEOUT": "4s",
    }
    settings = Settings(
        KAFKA_BOOTSTRAP_SERVERS=env["KAFKA_BOOTSTRAP_SERVERS"],
        TEMPORAL_ADDRESS=env["TEMPORAL_ADDRESS"],
    )
    dev = await asyncio.create_subprocess_exec(
        PAYBRIDGE,
        "dev",
        "--no-simulator",
        "--data-dir",
        str(tmp_path / "dev"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert dev.stdout is not None
        while (line := await asyncio.wait_for(dev.stdout.readline(), 60)) != b"ready\n":
            assert line, "paybridge dev exited before it was ready"
        answered, silent = payment(41), payment(42)
        await send_events(settings, settings.topic_payments, [answered, silent])
        client = await connect(settings)
        handle = client.get_workflow_handle(f"payment-{answered.payment_id}")
        for _ in range(100):
            with contextlib.suppress(RPCError):
                state = await handle.query("status", result_type=PaymentState)
                if state.status == PaymentPhase.AWAITING_CALLBACK:
                    break
            await asyncio.sleep(0.1)
        callback = signed_callback(
            payment_id=answered.payment_id,
            gateway_ref=f"gw-{answered.payment_id}",
            status=CallbackStatus.AUTHORIZED,
            secret=DEV_GATEWAY_SECRET,
        )
        await send_events(settings, settings.topic_callbacks, [callback])
        outcomes: dict[str, PaymentOutcome] = {}
        for _ in range(100):
            await read_outcomes(settings, lambda o: outcomes.setdefault(o.payment_id, o))
            if len(outcomes) == 2:
                break
            await asyncio.sleep(0.2)
    finally:
        dev.send_signal(signal.SIGINT)
        await asyncio.wait_for(dev.wait(), 60)
    assert outcomes[answered.payment_id].status == OutcomeStatus.SUCCEEDED
    assert outcomes[silent.payment_id].status == OutcomeStatus.TIMED_OUT
    notified = (tmp_path / "dev" / "notifications.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["status"] for line in notified) == ["SUCCEEDED", "TIMED_OUT"]
