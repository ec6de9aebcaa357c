"""What signal-with-start costs next to a plain start: the bridge's call for a PaymentCreated.

Issue 12 moved every record to one signal-with-start (``ALLOW_DUPLICATE_FAILED_ONLY``, signal
``payment_created``) instead of a plain start (``REJECT_DUPLICATE``, conflict ``FAIL``). This
measures both against one Temporal dev server, alternating, each on fresh payment ids, with the
same concurrency, and a replay of each (every id again: the duplicate path). No worker runs:
the figures are the start path only (the signal adds one history event per run).

    .venv/bin/python benchmarks/signal_with_start.py            # 2000 per run, 3 rounds
    .venv/bin/python benchmarks/signal_with_start.py --quick    # 500 per run, 2 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from plumbing.settings import Settings
from schemas.events import PaymentCreated, PaymentMethod
from schemas.ids import payment_workflow_id
from schemas.workflow_api import (
    PAYMENT_WORKFLOW,
    SIGNAL_PAYMENT_CREATED,
    PaymentCreatedSignal,
    payment_input,
)
from tools.devstack import temporal_server, wait_for_temporal
from tools.processes import free_port


def payment(n: int, payment_id: str) -> PaymentCreated:
    from datetime import UTC, datetime

    return PaymentCreated(
        event_id=str(uuid.uuid4()),
        payment_id=payment_id,
        account_id=f"acct-{n % 1000 + 1:04d}",
        merchant_id="merchant-01",
        amount_minor=100 + n,
        currency="EUR",
        method=PaymentMethod.CARD,
        created_at=datetime.now(UTC),
    )


async def plain_start(client: Client, settings: Settings, p, queue: str) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            PAYMENT_WORKFLOW,
            payment_input(settings, p),
            id=payment_workflow_id(p.payment_id),
            task_queue=queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )


async def signal_with_start(client: Client, settings: Settings, p, queue: str) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            PAYMENT_WORKFLOW,
            payment_input(settings, p),
            id=payment_workflow_id(p.payment_id),
            task_queue=queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            start_signal=SIGNAL_PAYMENT_CREATED,
            start_signal_args=[PaymentCreatedSignal(payment=p)],
        )


async def rate(call, client, settings, payments, concurrency: int) -> float:  # type: ignore[no-untyped-def]
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    gate = asyncio.Semaphore(concurrency)

    async def one(p) -> None:  # type: ignore[no-untyped-def]
        async with gate:
            await call(client, settings, p, queue)

    began = time.perf_counter()
    await asyncio.gather(*(one(p) for p in payments))
    return len(payments) / (time.perf_counter() - began)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    count, rounds = (500, 2) if args.quick else (2000, 3)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = temporal_server(port=port, ui_port=None, data_dir=None, log_dir=Path(tmp))
        await server.start()
        try:
            await server.wait_for_port("127.0.0.1", port)
            settings = Settings(TEMPORAL_ADDRESS=f"127.0.0.1:{port}")
            client = await wait_for_temporal(settings)
            found: dict[str, list[float]] = {}
            for _ in range(rounds):
                for name, call in (
                    ("start", plain_start),
                    ("signal-with-start", signal_with_start),
                ):
                    fresh = [payment(n, payment_id=f"b-{uuid.uuid4().hex}") for n in range(count)]
                    first = await rate(call, client, settings, fresh, args.concurrency)
                    again = await rate(call, client, settings, fresh, args.concurrency)
                    found.setdefault(f"{name} new", []).append(first)
                    found.setdefault(f"{name} replayed", []).append(again)
        finally:
            await server.stop()
    print(f"{count} payments per run, concurrency {args.concurrency}, {rounds} rounds (per s):")
    for name, figures in found.items():
        runs = ", ".join(f"{f:.0f}" for f in figures)
        print(f"  {name:28} median {statistics.median(figures):6.0f}/s   ({runs})")


if __name__ == "__main__":
    asyncio.run(main())
