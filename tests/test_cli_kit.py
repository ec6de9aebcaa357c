"""The operator's command line: --version, one-line errors when Kafka or Temporal is out of
reach, and topic creation with replication settings (against the real broker)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import ConsumerRecord

from plumbing.dead_letters import dlq_headers
from plumbing.kafka import client_kwargs
from plumbing.settings import Settings
from tests.servers import Server
from tests.support import produce_raw
from tools.processes import free_port

PAYBRIDGE = str(Path(sys.executable).parent / "paybridge")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PAYBRIDGE, *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **(env or {})},
    )


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"paybridge {version('paybridge')}"


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["topics", "create"], "KAFKA_BOOTSTRAP_SERVERS"),
        (["produce", "payment"], "KAFKA_BOOTSTRAP_SERVERS"),
        (["outcomes"], "KAFKA_BOOTSTRAP_SERVERS"),
        (["dlq", "list"], "KAFKA_BOOTSTRAP_SERVERS"),
        (["dlq", "redrive", "--all"], "KAFKA_BOOTSTRAP_SERVERS"),
        (["replay", "--from", "payments.created", "--to", "payments.created"], "KAFKA"),
        (["cancel", "p1"], "KAFKA_BOOTSTRAP_SERVERS"),
        (["status", "p1"], "TEMPORAL_ADDRESS"),
        (["review", "list"], "TEMPORAL_ADDRESS"),
        (["namespace", "register"], "TEMPORAL_ADDRESS"),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, list) else None,
)
def test_a_command_that_cannot_reach_its_server_says_so_in_one_line(
    args: list[str], names: str
) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = run(*args, env={"KAFKA_BOOTSTRAP_SERVERS": closed, "TEMPORAL_ADDRESS": closed})
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ") and names in lines[0] and closed in lines[0]
    assert "not reachable" in lines[0]


def test_topics_create_takes_replication_settings(kafka_server: Server) -> None:
    tag = uuid.uuid4().hex[:8]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_server.address,
        "PAYBRIDGE_TOPIC_PAYMENTS": f"rf-payments-{tag}",
        "PAYBRIDGE_TOPIC_CALLBACKS": f"rf-callbacks-{tag}",
        "PAYBRIDGE_TOPIC_CANCELS": f"rf-cancels-{tag}",
        "PAYBRIDGE_TOPIC_OUTCOMES": f"rf-outcomes-{tag}",
        "PAYBRIDGE_TOPIC_DLQ": f"rf-dlq-{tag}",
    }
    # One broker cannot hold three replicas: Kafka's refusal, in one line, nothing "created".
    refused = run("topics", "create", "--replication-factor", "3", "--min-insync-replicas", "2",
                  env=env)  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "Kafka refused to create rf-" in refused.stderr and "3" in refused.stderr
    assert "created" not in refused.stdout

    bad = run("topics", "create", "--replication-factor", "1", "--min-insync-replicas", "2",
              env=env)  # fmt: skip
    assert bad.returncode == 1 and "min.insync.replicas 2" in bad.stderr

    created = run("topics", "create", "--replication-factor", "1", "--min-insync-replicas", "1",
                  env=env)  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert created.stdout.count("created") == 5
    assert topic_config(kafka_server.address, f"rf-outcomes-{tag}")["min.insync.replicas"] == "1"


def topic_config(address: str, topic: str) -> dict[str, str]:
    async def describe() -> dict[str, str]:
        admin = AIOKafkaAdminClient(**client_kwargs(Settings(KAFKA_BOOTSTRAP_SERVERS=address)))
        await admin.start()
        try:
            (response,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
            (resource,) = response.resources
            return {entry[0]: entry[1] for entry in resource[4]}
        finally:
            await admin.close()

    return asyncio.run(describe())


async def test_replay_and_redrive_report_progress_without_a_terminal(settings: Settings) -> None:
    records = [(f"p-{n}".encode(), b"junk", []) for n in range(30)]
    await produce_raw(settings, settings.topic_cancels, records)
    source = ConsumerRecord(
        topic=settings.topic_payments, partition=0, offset=7, timestamp=0, timestamp_type=0,
        key=b"p-1", value=b"junk", checksum=None, serialized_key_size=3, serialized_value_size=4,
        headers=[],
    )  # fmt: skip
    headers = dlq_headers(source, reason="undecodable", error=ValueError("junk"))
    await produce_raw(settings, settings.topic_dlq, [(b"p-1", b"junk", headers)] * 3)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "PAYBRIDGE_TOPIC_DLQ": settings.topic_dlq,
    }
    # stderr is a pipe here: plain lines instead of a bar, the last one with the total
    replayed = await asyncio.to_thread(
        run, "replay", "--from", settings.topic_cancels, "--to", settings.topic_outcomes, env=env
    )
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stderr.strip().splitlines()[-1] == "replay: 30/30 records"
    redriven = await asyncio.to_thread(run, "dlq", "redrive", "--all", env=env)
    assert redriven.returncode == 0, redriven.stderr
    assert redriven.stderr.strip().splitlines()[-1] == "redrive: 3/3 records"
    assert "3 records redriven" in redriven.stdout
