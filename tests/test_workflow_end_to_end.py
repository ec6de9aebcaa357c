"""The saga on the real servers, through Kafka and the bridge, driven by the CLI.

Callbacks and cancels travel the real path: a record on the callbacks (or cancel) topic, the
bridge verifies and signals, the workflow reacts and publishes one outcome.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client

from plumbing.settings import Settings, format_duration
from schemas.codec import Codec
from schemas.events import CallbackStatus, OutcomeStatus, PaymentCreated
from schemas.ids import payment_workflow_id
from schemas.workflow_api import PaymentPhase, PaymentState
from tests.support import (
    GATEWAY_SECRET,
    Stack,
    payment,
    produce_raw,
    read_outcomes,
    running_bridge,
    running_worker,
)
from tools.processes import free_port
from tools.producing import encode_record, send_events
from workflows.simulations.gateway import GatewayBehaviour, signed_callback

PAYBRIDGE = str(Path(sys.executable).parent / "paybridge")
SILENT = GatewayBehaviour(callbacks=False)


def cli_env(settings: Settings) -> dict[str, str]:
    """The environment that points the CLI at this test's servers, topics and queue."""
    env = {**os.environ}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if field.alias and value is not None and not name.startswith("kafka_sasl"):
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            elif hasattr(value, "total_seconds"):  # every duration setting, as 500ms, 30s...
                value = format_duration(value)
            env[field.alias] = str(value)
    return env


async def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        PAYBRIDGE,
        *args,
        env=cli_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return subprocess.CompletedProcess(args, process.returncode or 0, out.decode(), err.decode())


async def wait_for_phase(
    client: Client, p: PaymentCreated, phase: PaymentPhase, timeout: float = 30
) -> PaymentState:
    handle = client.get_workflow_handle(payment_workflow_id(p.payment_id))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = None
    while loop.time() < deadline:
        try:
            state = await handle.query("status", result_type=PaymentState)
            if state.status == phase:
                return state
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{p.payment_id} never reached {phase}: {state}")


async def produce_payment(settings: Settings, p: PaymentCreated) -> None:
    await produce_raw(settings, settings.topic_payments, [encode_record(Codec(), p)])


@pytest.fixture
def worker_process(stack: Stack) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def start_worker_process(
    stack: Stack, started: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """`paybridge worker` on the test's ledger file; its gateway accepts and never calls back."""
    env = cli_env(stack.settings)
    env["PAYBRIDGE_METRICS_PORT"] = str(free_port())
    env["PAYBRIDGE_SDK_METRICS_PORT"] = "0"
    env["PAYBRIDGE_GATEWAY_SECRET"] = GATEWAY_SECRET
    process = subprocess.Popen(
        [PAYBRIDGE, "worker", "--no-simulator", "--ledger", stack.ledger.path],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started.append(process)
    return process


async def test_worker_killed_between_debit_and_callback_debits_once(
    stack: Stack, worker_process: list[subprocess.Popen[bytes]]
) -> None:
    settings, ledger = stack.settings, stack.ledger
    p = payment(21, amount_minor=4_321)
    before = ledger.balance(p.account_id, p.currency)
    assert before is not None
    first = start_worker_process(stack, worker_process)
    async with running_bridge(stack):
        await produce_payment(settings, p)
        await wait_for_phase(stack.client, p, PaymentPhase.AWAITING_CALLBACK)
        assert ledger.balance(p.account_id, p.currency) == before - 4_321
        first.send_signal(signal.SIGKILL)
        first.wait()

        # A new worker process takes over; the gateway's callback comes through Kafka.
        start_worker_process(stack, worker_process)
        callback = signed_callback(
            payment_id=p.payment_id,
            gateway_ref=f"gw-{p.payment_id}",
            status=CallbackStatus.AUTHORIZED,
            secret=GATEWAY_SECRET,
        )
        await send_events(settings, settings.topic_callbacks, [callback, callback])
        [outcome] = await read_outcomes(settings, expect=1, timeout=60)

    assert outcome.status == OutcomeStatus.SUCCEEDED
    assert ledger.balance(p.account_id, p.currency) == before - 4_321
    assert [m.delta_minor for m in ledger.movements(p.payment_id)] == [-4_321]


async def test_cli_cancel_status_and_timeout_on_the_real_path(stack: Stack) -> None:
    settings = stack.settings.model_copy(update={"callback_timeout": timedelta(seconds=2)})
    stack = Stack(settings=settings, client=stack.client, ledger=stack.ledger)
    waiting, timing_out = payment(22), payment(23)
    before = {
        p.payment_id: stack.ledger.balance(p.account_id, p.currency) for p in (waiting, timing_out)
    }
    async with running_worker(stack, gateway=SILENT), running_bridge(stack):
        await produce_payment(settings, timing_out)
        # Cancel arrives before the payment: it starts a run that holds it until the payment.
        cancelled = await cli(settings, "cancel", waiting.payment_id, "--reason", "changed my mind")
        assert cancelled.returncode == 0, cancelled.stderr
        await produce_payment(settings, waiting)
        outcomes = {o.payment_id: o for o in await read_outcomes(settings, expect=2)}
        shown = await cli(settings, "status", waiting.payment_id)

    assert outcomes[waiting.payment_id].status == OutcomeStatus.CANCELLED
    assert outcomes[waiting.payment_id].reason == "changed my mind"
    assert outcomes[timing_out.payment_id].status == OutcomeStatus.TIMED_OUT
    for p in (waiting, timing_out):
        assert stack.ledger.balance(p.account_id, p.currency) == before[p.payment_id]
    assert shown.returncode == 0, shown.stderr
    assert f"{waiting.payment_id}  CANCELLED  (changed my mind)" in shown.stdout
    assert "cancel requested" in shown.stdout and "outcome published" in shown.stdout
