"""PAYBRIDGE_LOG_FORMAT=json: one JSON object per line, with the record's coordinates."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from plumbing.logs import JsonFormatter
from plumbing.settings import Settings
from tests.support import Stack, metric, produce_raw, running_bridge
from tests.test_webhook import callback_body, signed
from tools.processes import free_port

PAYBRIDGE = str(Path(sys.executable).parent / "paybridge")


def test_a_record_is_one_line_of_json_with_its_fields() -> None:
    logger = logging.getLogger("test.logs")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logger.makeRecord(
            "test.logs",
            logging.ERROR,
            __file__,
            1,
            "failed %s",
            ("pay-1",),
            sys.exc_info(),
            extra={"payment_id": "pay-1", "topic": "t", "partition": 3, "offset": 42},
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "failed pay-1"
    assert (data["level"], data["logger"]) == ("ERROR", "test.logs")
    assert (data["payment_id"], data["topic"], data["partition"], data["offset"]) == (
        "pay-1",
        "t",
        3,
        42,
    )
    assert "ValueError: boom" in data["exception"]
    assert data["ts"].endswith("+00:00")
    # Temporal's activity logger names the workflow: a payment's gives its payment id.
    temporal = logger.makeRecord(
        "temporalio.activity",
        logging.INFO,
        __file__,
        1,
        "x",
        (),
        None,
        extra={"temporal_activity": {"workflow_id": "payment-pay-7", "activity_type": "a"}},
    )
    data = json.loads(JsonFormatter().format(temporal))
    assert data["payment_id"] == "pay-7"
    assert data["temporal_activity"]["activity_type"] == "a"


async def test_a_dead_letter_is_logged_with_topic_partition_offset_and_payment_id(
    stack: Stack,
) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("bridge.consumer")
    logger.addHandler(handler)
    try:
        async with running_bridge(stack):
            await produce_raw(
                stack.settings, stack.settings.topic_payments, [(b"pay-garbage", b"\x00junk", [])]
            )
            for _ in range(200):
                if metric(stack.registry, "paybridge_dlq_records_total", **_dlq_labels(stack)):
                    break
                await asyncio.sleep(0.1)
    finally:
        logger.removeHandler(handler)
    (line,) = [json.loads(line) for line in lines if "DLQ" in json.loads(line)["message"]]
    assert line["topic"] == stack.settings.topic_payments
    assert line["payment_id"] == "pay-garbage"
    assert line["reason"] == "undecodable"
    assert isinstance(line["partition"], int) and line["offset"] == 0


def _dlq_labels(stack: Stack) -> dict[str, str]:
    return {"topic": stack.settings.topic_payments, "reason": "undecodable"}


async def test_the_webhook_process_logs_json_lines(settings: Settings) -> None:
    port, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "PAYBRIDGE_LOG_FORMAT": "json",
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "PAYBRIDGE_TOPIC_CALLBACKS": settings.topic_callbacks,
        "PAYBRIDGE_WEBHOOK_PORT": str(port),
        "PAYBRIDGE_METRICS_PORT": str(metrics),
        "PAYBRIDGE_GATEWAY_SECRET": "test-secret",
    }
    process = await asyncio.create_subprocess_exec(
        PAYBRIDGE,
        "-v",
        "webhook",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    payment_id = f"log-{uuid.uuid4().hex[:6]}"
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert b"listening" in line, line
        body = json.dumps(callback_body(payment_id)).encode()
        url = f"http://127.0.0.1:{port}/v1/gateway/callbacks"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=body, headers=signed(body)) as response:
                assert response.status == 202
            async with http.post(url, data=body, headers={"X-Signature": "bad"}) as response:
                assert response.status == 401
    finally:
        process.terminate()
        _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    logged: list[dict[str, Any]] = [json.loads(line) for line in err.decode().splitlines()]
    (accepted,) = [entry for entry in logged if entry.get("payment_id") == payment_id]
    assert accepted["topic"] == settings.topic_callbacks
    assert isinstance(accepted["partition"], int) and isinstance(accepted["offset"], int)
    assert any("X-Signature" in entry["message"] for entry in logged)


def test_a_bad_log_format_names_the_setting() -> None:
    done = subprocess.run(
        [PAYBRIDGE, "topics", "create"],
        env={**os.environ, "PAYBRIDGE_LOG_FORMAT": "xml"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "PAYBRIDGE_LOG_FORMAT" in done.stderr and "Traceback" not in done.stderr
