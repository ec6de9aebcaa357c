"""`paybridge dlq`: a dead letter redriven after its cause is fixed completes its payment, once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from aiokafka.structs import ConsumerRecord
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from bridge.service import open_bridge
from plumbing.dead_letters import dlq_headers
from plumbing.settings import Settings
from schemas.codec import Codec, SchemaRegistry
from schemas.ids import payment_workflow_id
from tests.support import (
    GATEWAY_SECRET,
    Stack,
    count_workflows,
    payment,
    produce_raw,
    read_outcomes,
    read_topic,
    running_bridge,
    running_worker,
)
from tools.cli import main
from tools.dlq import REDRIVEN_FROM, Selection, parse_refs, read_dlq, redrive

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def _schemas_with_v2(directory: Path) -> SchemaRegistry:
    """schemas/ plus a PaymentCreated v2 (one new field): a producer deployed it first."""
    for schema in SCHEMAS.glob("*.avsc"):
        shutil.copy(schema, directory)
    v1 = json.loads((SCHEMAS / "payment_created.v1.avsc").read_text())
    v1["fields"].append({"name": "channel", "type": "string", "default": "web"})
    (directory / "payment_created.v2.avsc").write_text(json.dumps(v1))
    return SchemaRegistry.load(directory)


@contextlib.asynccontextmanager
async def bridge_with_codec(stack: Stack, codec: Codec) -> AsyncIterator[None]:
    async with open_bridge(
        stack.settings,
        stack.client,
        registry=CollectorRegistry(),
        codec=codec,
        gateway_secret=GATEWAY_SECRET,
    ) as bridge:
        runner = asyncio.create_task(bridge.run())
        try:
            await asyncio.wait_for(bridge.assigned.wait(), timeout=30)
            yield
        finally:
            bridge.stop()
            await runner


async def _workflows(stack: Stack, payment_id: str) -> int:
    return await count_workflows(stack.client, f'WorkflowId = "{payment_workflow_id(payment_id)}"')


async def test_redrive_after_fix_completes_the_payment_and_a_second_redrive_does_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    settings = stack.settings
    new_codec = Codec(_schemas_with_v2(tmp_path))
    v2 = next(v for v in new_codec.registry.versions if v.path.endswith("payment_created.v2.avsc"))
    ahead = payment(1)
    value = new_codec.encode(ahead, schema=v2)
    headers = [("traceparent", b"00-abc-def-01")]

    async with running_worker(stack):
        # The bridge does not know v2 yet: the record is dead-lettered.
        async with running_bridge(stack):
            await produce_raw(
                settings, settings.topic_payments, [(ahead.payment_id.encode(), value, headers)]
            )
            await read_topic(settings, settings.topic_dlq, expect=1, timeout=30)
        contents = await read_dlq(settings)
        assert [d.reason for d in contents.dead_letters] == ["unknown_schema"]
        letter = contents.dead_letters[0]
        assert letter.source == f"{settings.topic_payments}-{letter.source_partition}@0"
        assert not contents.markers

        # The fix: a bridge that knows v2. Its group resumes behind the dead-lettered record.
        async with bridge_with_codec(stack, new_codec):
            first = await redrive(settings, Selection(reasons=frozenset({"unknown_schema"})))
            assert [(d.ref, to.split("@")[0]) for d, to in first.redriven] == [
                (letter.ref, f"{settings.topic_payments}-{letter.source_partition}")
            ]
            outcomes = await read_outcomes(settings, expect=1, timeout=60)
            assert [o.payment_id for o in outcomes] == [ahead.payment_id]

            again = await redrive(settings, Selection(refs=parse_refs([letter.ref])))
            everything = await redrive(settings, Selection(everything=True))
            assert again.redriven == [] and everything.redriven == []
            assert [d.ref for d, _ in again.plan.already] == [letter.ref]
            await asyncio.sleep(1.0)

    copies = await read_topic(settings, settings.topic_payments, expect=2, timeout=5)
    assert len(copies) == 2  # the original and exactly one redriven copy
    copy = max(copies, key=lambda record: record.offset)  # same key: same partition
    assert (copy.key, copy.value) == (ahead.payment_id.encode(), value)
    assert [k for k, _ in copy.headers] == ["traceparent", REDRIVEN_FROM]
    assert await _workflows(stack, ahead.payment_id) == 1
    assert len(await read_outcomes(settings, expect=2, timeout=2)) == 1

    listed = await read_dlq(settings)
    assert len(listed.dead_letters) == 1 and listed.redriven(listed.dead_letters[0]) is not None


async def test_dry_run_sends_nothing_and_redrive_sends_once(settings: Settings) -> None:
    source = ConsumerRecord(
        topic=settings.topic_cancels,
        partition=3,
        offset=41,
        timestamp=0,
        timestamp_type=0,
        key=b"p-9",
        value=b"not an event",
        checksum=None,
        serialized_key_size=3,
        serialized_value_size=12,
        headers=[("h", b"1")],
    )
    headers = dlq_headers(source, reason="undecodable", error=ValueError("bad bytes"))
    await produce_raw(settings, settings.topic_dlq, [(b"p-9", b"not an event", headers)])

    dry = await redrive(settings, Selection(everything=True), dry_run=True)
    assert [d.source for d in dry.plan.chosen] == [f"{settings.topic_cancels}-3@41"]
    assert dry.redriven == []
    assert (await read_dlq(settings)).markers == {}

    by_reason = Selection(reasons=frozenset({"undecodable"}))
    first = await redrive(settings, by_reason)
    second = await redrive(settings, by_reason)
    assert len(first.redriven) == 1 and second.redriven == []
    forced = await redrive(settings, Selection(everything=True), force=True)
    assert len(forced.redriven) == 1  # only on purpose
    copies = await read_topic(settings, settings.topic_cancels, expect=2, timeout=5)
    assert len(copies) == 2
    assert all((c.key, c.value) == (b"p-9", b"not an event") for c in copies)
    assert all(dict(c.headers)["h"] == b"1" for c in copies)
    assert all(not k.startswith("dlq.") for c in copies for k, _ in c.headers)


async def test_cli_lists_by_reason_and_redrives_once(settings: Settings) -> None:
    source = ConsumerRecord(
        topic=settings.topic_payments,
        partition=0,
        offset=7,
        timestamp=0,
        timestamp_type=0,
        key=b"p-1",
        value=b"junk",
        checksum=None,
        serialized_key_size=3,
        serialized_value_size=4,
        headers=[],
    )
    headers = dlq_headers(source, reason="undecodable", error=ValueError("junk"))
    await produce_raw(settings, settings.topic_dlq, [(b"p-1", b"junk", headers)])
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "PAYBRIDGE_TOPIC_DLQ": settings.topic_dlq,
    }

    async def cli(*args: str) -> str:
        result = await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    listed = await cli("dlq", "list")
    assert "undecodable: 1 (0 redriven)" in listed
    assert f"0:0      from {settings.topic_payments}-0@7" in listed
    assert "1 records redriven" in await cli("dlq", "redrive", "--offset", "0")
    assert "already redriven" in await cli("dlq", "redrive", "--all")
    assert "undecodable: 1 (1 redriven)" in await cli("dlq", "list")
