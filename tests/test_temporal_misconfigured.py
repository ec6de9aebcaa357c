"""A wrong Temporal namespace is retried loudly, never dead-lettered (issue 12, break 3).

Before, NOT_FOUND (namespace) was not retried: every PaymentCreated went to the DLQ as
``processing_error``. Now the bridge (a `paybridge bridge` process, on the real dev server)
keeps retrying, says why in its log, fails ``/readyz``; once the namespace exists the payment
goes through, and nothing was dead-lettered.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from temporalio.service import RPCError

from plumbing.settings import Settings
from plumbing.temporal import connect
from schemas.codec import Codec
from tests.bridge_process import BridgeProcess
from tests.support import Stack, payment, produce_raw, read_outcomes, read_topic, running_worker
from tools.namespace import register_namespace, register_search_attributes
from tools.producing import encode_record


async def test_a_missing_namespace_is_retried_until_it_exists(
    stack: Stack, settings: Settings, tmp_path: Path
) -> None:
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    wrong = settings.model_copy(update={"temporal_namespace": namespace})
    p = payment(1)
    bridge = BridgeProcess(wrong, log_path=tmp_path / "bridge.log")
    bridge.start()
    try:
        await bridge.wait_ready()
        await produce_raw(settings, settings.topic_payments, [encode_record(Codec(), p)])
        for _ in range(300):
            retried = await bridge.sample("paybridge_temporal_retries_total", reason="not_found")
            if retried >= 3:
                break
            await asyncio.sleep(0.1)
        assert retried >= 3
        status, body = await bridge.get("/readyz")
        assert status == 503 and "temporal" in body
        assert await read_topic(settings, settings.topic_dlq, expect=1, timeout=2) == []

        # The operator fixes it: the namespace exists now (with the search attributes).
        await register_namespace(stack.client, namespace)
        client = await connect(wrong)
        for _ in range(150):  # a new namespace takes a moment to be served everywhere
            try:
                await register_search_attributes(stack.client, namespace)
                await client.count_workflows()
                break
            except RPCError:
                await asyncio.sleep(0.2)
        fixed = Stack(settings=wrong, client=client, ledger=stack.ledger, registry=stack.registry)
        async with running_worker(fixed):
            [outcome] = await read_outcomes(settings, expect=1, timeout=120)
        for _ in range(100):
            if (await bridge.get("/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.2)
        assert (await bridge.get("/readyz"))[0] == 200
        dead = await bridge.sample("paybridge_dlq_records_total")
    finally:
        bridge.stop()
    assert outcome.payment_id == p.payment_id and outcome.status.value == "SUCCEEDED"
    assert dead == 0
    log = (tmp_path / "bridge.log").read_text()
    said = log.count("check TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE")
    assert 1 <= said <= retried, "logged as an error, but not once per retry"
