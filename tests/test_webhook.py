"""The gateway webhook against the real broker (and Temporal), called with a real HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from plumbing.health import MetricsServer
from plumbing.kafka import create_topics
from plumbing.settings import Settings
from schemas.codec import Codec
from schemas.errors import WebhookRejected
from schemas.events import CallbackStatus, GatewayCallback, OutcomeStatus, to_millis
from tests.support import (
    GATEWAY_SECRET,
    Stack,
    isolated_settings,
    metric,
    payment,
    produce_raw,
    read_outcomes,
    read_topic,
    running_bridge,
)
from tools.devstack import kafka_broker
from tools.processes import free_port
from tools.producing import encode_record
from webhook.app import MAX_BODY_BYTES, body_signature
from webhook.service import open_webhook
from workflows.activities.kafka import kafka_io
from workflows.metrics import WorkerMetrics
from workflows.simulations.gateway import GatewayBehaviour, SimulatedGateway, signed_callback
from workflows.simulations.webhook import WebhookCallbackEmitter, gateway_callbacks
from workflows.worker import open_worker

PAYBRIDGE = str(Path(sys.executable).parent / "paybridge")


def callback_body(payment_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "payment_id": payment_id,
        "gateway_ref": f"gw-{payment_id}",
        "status": "AUTHORIZED",
        "occurred_at": to_millis(datetime.now(UTC)),
    }
    body.update(overrides)
    return body


def signed(body: bytes, secret: str = GATEWAY_SECRET) -> dict[str, str]:
    return {"X-Signature": body_signature(secret, body), "Content-Type": "application/json"}


@contextlib.asynccontextmanager
async def webhook_on(
    settings: Settings, registry: CollectorRegistry, *, send_timeout: float = 10.0
) -> AsyncIterator[tuple[str, MetricsServer]]:
    async with (
        MetricsServer(registry, host="127.0.0.1", port=0) as server,
        open_webhook(
            settings.model_copy(update={"webhook_port": 0}),
            registry=registry,
            server=server,
            secret=GATEWAY_SECRET,
            host="127.0.0.1",
            send_timeout=send_timeout,
        ) as listening,
    ):
        yield listening.url, server


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, await response.json()


async def test_webhook_answers_by_the_contract_and_produces_a_verifiable_record(
    settings: Settings,
) -> None:
    registry = CollectorRegistry()
    payment_id = f"wh-{uuid.uuid4().hex[:8]}"
    good = json.dumps(callback_body(payment_id)).encode()
    async with webhook_on(settings, registry) as (url, server), aiohttp.ClientSession() as http:
        assert await server.failing_checks() == []
        # 401: no signature, a wrong one, one signed with another secret, non-ASCII garbage
        assert (await post(http, url, good, {}))[0] == 401
        assert (await post(http, url, good, {"X-Signature": "0" * 64}))[0] == 401
        assert (await post(http, url, good, signed(good, "other-secret")))[0] == 401
        assert (await post(http, url, good, {"X-Signature": "é" * 64}))[0] == 401
        upper = {"X-Signature": body_signature(GATEWAY_SECRET, good).upper()}
        assert (await post(http, url, good, upper))[0] == 401  # lower-case hex only
        # 400 with the validation message
        status, answer = await post(http, url, b"{not json", signed(b"{not json"))
        assert status == 400 and "not UTF-8 JSON" in answer["error"]
        bad = json.dumps(callback_body(payment_id, status="MAYBE")).encode()
        status, answer = await post(http, url, bad, signed(bad))
        assert status == 400 and "status" in answer["error"], answer
        iso = json.dumps(callback_body(payment_id, occurred_at="2024-01-01T00:00:00Z")).encode()
        status, answer = await post(http, url, iso, signed(iso))
        assert status == 400 and "epoch milliseconds" in answer["error"], answer
        # 413 over the size limit (signed correctly: the size is checked first)
        big = json.dumps(callback_body(payment_id, reason="x" * MAX_BODY_BYTES)).encode()
        assert (await post(http, url, big, signed(big)))[0] == 413
        # nothing of the above reached Kafka; the good one does, once, and a repeat is 2xx
        status, answer = await post(http, url, good, signed(good))
        assert (status, answer["result"]) == (202, "accepted")
        status, answer = await post(http, url, good, signed(good))
        assert (status, answer["result"]) == (200, "duplicate")
        # a body `signature` field is optional and never trusted: the record gets its own
        forged = json.dumps(callback_body(payment_id, signature="f" * 64)).encode()
        assert (await post(http, url, forged, signed(forged)))[0] == 202

    records = await read_topic(settings, settings.topic_callbacks, expect=2, timeout=30)
    assert len(records) == 2
    codec = Codec()
    sent = [json.loads(good), json.loads(forged)]
    for record, body in zip(sorted(records, key=lambda r: r.timestamp), sent, strict=True):
        assert record.key == payment_id.encode()
        callback = codec.decode(GatewayCallback, record.value, headers=record.headers)
        assert callback.event_id == body["event_id"]
        assert callback.signature_valid(GATEWAY_SECRET)
    counts = {
        result: metric(registry, "paybridge_webhook_requests_total", result=result)
        for result in ("accepted", "duplicate", "bad_signature", "invalid", "too_large")
    }
    assert counts == {
        "accepted": 2,
        "duplicate": 1,
        "bad_signature": 5,
        "invalid": 3,
        "too_large": 1,
    }
    assert metric(registry, "paybridge_webhook_request_seconds_count") == 12


async def test_webhook_answers_503_and_is_not_ready_while_kafka_is_gone(
    tmp_path: Path,
) -> None:
    # A broker of its own, stopped under the running webhook.
    port = free_port()
    broker = kafka_broker(port=port, data_dir=tmp_path, log_dir=tmp_path / "logs")
    await broker.start()
    try:
        await broker.wait_for_port("127.0.0.1", port)
        settings = isolated_settings(f"127.0.0.1:{port}", "127.0.0.1:1")
        await create_topics(settings)
        registry = CollectorRegistry()
        body = json.dumps(callback_body("p-503")).encode()
        async with (
            webhook_on(settings, registry, send_timeout=1.0) as (url, server),
            aiohttp.ClientSession() as http,
        ):
            assert (await post(http, url, body, signed(body)))[0] == 202
            await broker.stop()
            again = json.dumps(callback_body("p-503")).encode()
            async with http.post(url, data=again, headers=signed(again)) as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "5"
            assert await server.failing_checks() == ["webhook kafka"]
    finally:
        await broker.stop()
    assert metric(registry, "paybridge_webhook_requests_total", result="unavailable") == 1


async def test_the_simulated_gateway_pays_through_the_webhook(stack: Stack) -> None:
    settings = stack.settings.model_copy(update={"sim_callbacks": "webhook"})
    payments = [payment(n) for n in range(5)]
    codec = Codec()
    async with (
        webhook_on(settings, stack.registry) as (url, _),
        kafka_io(settings, metrics=WorkerMetrics(stack.registry)) as kafka,
        gateway_callbacks(settings, kafka.callbacks, secret=GATEWAY_SECRET, url=url) as emitter,
    ):
        assert isinstance(emitter, WebhookCallbackEmitter)
        gateway = SimulatedGateway(GatewayBehaviour(latency=0.05), emitter=emitter, secret="")
        try:
            async with (
                open_worker(
                    stack.client,
                    task_queue=settings.temporal_task_queue,
                    ledger=stack.ledger,
                    outcomes=kafka.outcomes,
                    gateway=gateway,
                ),
                running_bridge(stack),
            ):
                await produce_raw(
                    settings, settings.topic_payments, [encode_record(codec, p) for p in payments]
                )
                outcomes = await read_outcomes(settings, expect=5, timeout=120)
        finally:
            await gateway.close()
    assert sorted(o.payment_id for o in outcomes) == sorted(p.payment_id for p in payments)
    assert {o.status for o in outcomes} == {OutcomeStatus.SUCCEEDED}
    assert len(gateway.sent) == 5
    assert metric(stack.registry, "paybridge_webhook_requests_total", result="accepted") == 5
    callbacks = await read_topic(settings, settings.topic_callbacks, expect=5, timeout=30)
    assert sorted(r.key for r in callbacks) == sorted(p.payment_id.encode() for p in payments)


async def test_a_callback_the_webhook_refuses_is_not_sent_again(settings: Settings) -> None:
    registry = CollectorRegistry()
    callback = signed_callback(
        payment_id="p-401", gateway_ref="gw", status=CallbackStatus.AUTHORIZED, secret="x"
    )
    async with webhook_on(settings, registry) as (url, _), aiohttp.ClientSession() as http:
        wrong = WebhookCallbackEmitter(http, url, secret="not-the-gateway-secret")
        with pytest.raises(WebhookRejected, match="401"):
            await wrong.emit(callback)
        right = WebhookCallbackEmitter(http, url, secret=GATEWAY_SECRET)
        await right.emit(callback)
    assert metric(registry, "paybridge_webhook_requests_total", result="bad_signature") == 1
    assert metric(registry, "paybridge_webhook_requests_total", result="accepted") == 1


# ------------------------------------------------------------------ the outside check


def _dev_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "PAYBRIDGE_METRICS_PORT": str(free_port()),
        "PAYBRIDGE_SDK_METRICS_PORT": "0",
        "PAYBRIDGE_WEBHOOK_PORT": str(free_port()),
        "PAYBRIDGE_CALLBACK_TIMEOUT": "5m",
        "PAYBRIDGE_GATEWAY_SECRET": "outside-check-secret",
    }


def _paybridge(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PAYBRIDGE, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_outside_check_on_the_dev_stack(tmp_path: Path) -> None:
    """`paybridge dev --no-simulator`: a payment awaiting its callback; a wrongly signed POST
    gets 401, the signed one 2xx, the same again 2xx; the payment ends SUCCEEDED, once."""
    env = _dev_env(tmp_path)
    dev = subprocess.Popen(
        [PAYBRIDGE, "dev", "--no-simulator"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        assert dev.stdout is not None
        started = time.monotonic()
        for line in dev.stdout:
            lines.append(line.rstrip("\n"))
            if line == "ready\n" or time.monotonic() - started > 120:
                break
        assert lines[-1] == "ready", "\n".join(lines)
        (webhook_line,) = [line for line in lines if line.strip().startswith("Webhook")]
        url = webhook_line.split()[-1]
        assert url == f"http://127.0.0.1:{env['PAYBRIDGE_WEBHOOK_PORT']}/v1/gateway/callbacks"

        payment_id = f"outside-{uuid.uuid4().hex[:6]}"
        produced = _paybridge(env, "produce", "payment", "--payment-id", payment_id)
        assert produced.returncode == 0, produced.stderr
        state: dict[str, Any] = {}
        for _ in range(120):
            shown = _paybridge(env, "status", payment_id, "--json")
            if shown.returncode == 0:
                state = json.loads(shown.stdout)
                if state["status"] == "AWAITING_CALLBACK":
                    break
            time.sleep(0.5)
        assert state.get("status") == "AWAITING_CALLBACK", state
        body = json.dumps(
            callback_body(payment_id, gateway_ref=state["gateway_ref"]), separators=(",", ":")
        ).encode()
        secret = env["PAYBRIDGE_GATEWAY_SECRET"]

        async def deliver() -> list[int]:
            statuses = []
            async with aiohttp.ClientSession() as http:
                for headers in (signed(body, "wrong-secret"), signed(body, secret)):
                    statuses.append((await post(http, url, body, headers))[0])
                statuses.append((await post(http, url, body, signed(body, secret)))[0])
            return statuses

        wrong, first, again = asyncio.run(deliver())
        assert wrong == 401
        assert 200 <= first < 300 and 200 <= again < 300, (first, again)

        outcomes: list[dict[str, Any]] = []
        for _ in range(120):
            shown = _paybridge(env, "outcomes", "--payment-id", payment_id, "--json")
            outcomes = [json.loads(line) for line in shown.stdout.splitlines() if line]
            if outcomes:
                break
            time.sleep(0.5)
        time.sleep(2)  # a second outcome, if there were one, would be there by now
        shown = _paybridge(env, "outcomes", "--payment-id", payment_id, "--json")
        outcomes = [json.loads(line) for line in shown.stdout.splitlines() if line]
        assert [o["status"] for o in outcomes] == ["SUCCEEDED"], outcomes
    finally:
        dev.send_signal(2)
        rest, _ = dev.communicate(timeout=90)
    assert dev.returncode == 0, rest
