"""`paybridge review list` on the dev server: the payments waiting in MANUAL_REVIEW, oldest
first, found through the PaymentStatus search attribute."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry
from temporalio import activity
from temporalio.client import Client

from schemas.workflow_api import PaymentPhase
from tests.support import payment, time_skipping_worker
from workflows.models import GatewayStatus, GatewayStatusInput
from workflows.review_queue import ManualReviewGauge
from workflows.simulations.gateway import GatewayBehaviour
from workflows.simulations.ledger import Ledger

PAYBRIDGE = str(Path(sys.executable).parent / "paybridge")


@activity.defn(name="query_gateway_status")
async def gateway_does_not_know(input: GatewayStatusInput) -> GatewayStatus:
    return GatewayStatus(status=None)  # at once, instead of after the real retry schedule


async def review_list(client: Client, task_queue: str) -> list[dict[str, str]]:
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "TEMPORAL_TASK_QUEUE": task_queue,
    }
    process = await asyncio.create_subprocess_exec(
        PAYBRIDGE,
        "review",
        "list",
        "--json",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


async def test_review_list_shows_payments_in_manual_review_oldest_first(
    client: Client, ledger: Ledger
) -> None:
    async with time_skipping_worker(
        client, ledger, gateway=GatewayBehaviour(latency=0), fakes=[gateway_does_not_know]
    ) as harness:
        stale = {"stale_retry_delay": timedelta(milliseconds=200)}
        older = payment(1, metadata={"gateway": "error"}, merchant_id="m-old")
        newer = payment(2, metadata={"gateway": "error"}, merchant_id="m-new")
        paid = payment(3)
        await harness.start(older, **stale)
        await asyncio.sleep(0.05)
        await harness.start(newer, **stale)
        assert (await harness.run(paid)).status.value == "SUCCEEDED"
        await harness.wait_for(older, PaymentPhase.MANUAL_REVIEW)
        await harness.wait_for(newer, PaymentPhase.MANUAL_REVIEW)

        listed: list[dict[str, str]] = []
        for _ in range(60):  # visibility is eventually consistent
            listed = await review_list(client, harness.task_queue)
            if len(listed) >= 2:
                break
            await asyncio.sleep(0.5)
        assert [item["payment_id"] for item in listed] == [older.payment_id, newer.payment_id]
        assert [item["merchant_id"] for item in listed] == ["m-old", "m-new"]
        # the worker's gauge counts the same payments
        registry = CollectorRegistry()
        gauge = ManualReviewGauge(client, registry, task_queue=harness.task_queue)
        assert await gauge.refresh() == 2
        value = registry.get_sample_value(
            "paybridge_manual_review_payments", {"task_queue": harness.task_queue}
        )
        assert value == 2

        await harness.client.get_workflow_handle(f"payment-{older.payment_id}").terminate()
        for _ in range(60):
            listed = await review_list(client, harness.task_queue)
            if len(listed) == 1:
                break
            await asyncio.sleep(0.5)
        assert [item["payment_id"] for item in listed] == [newer.payment_id]
        assert await gauge.refresh() == 1
        await harness.client.get_workflow_handle(f"payment-{newer.payment_id}").terminate()
