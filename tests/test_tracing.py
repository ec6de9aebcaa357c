"""Tracing: one trace from a produced record to the published outcome, on the real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_trace_id
from prometheus_client import CollectorRegistry

from plumbing import tracing
from plumbing.temporal import connect
from schemas.codec import Codec
from schemas.events import PaymentOutcome
from tests.support import (
    Stack,
    payment,
    produce_raw,
    read_topic,
    running_bridge,
    running_worker,
)
from tests.test_webhook import callback_body, signed, webhook_on
from tools.producing import encode_record


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    try:
        yield exporter
    finally:
        tracing.configure(None)  # off again for the tests that follow
        provider.shutdown()


def trace_id_of(headers: Any) -> str:
    traceparent = dict(headers)["traceparent"]
    traceparent = traceparent.decode() if isinstance(traceparent, bytes) else traceparent
    return str(traceparent.split("-")[1])


def ancestry(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    names = [span.name]
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


async def test_one_trace_from_the_produced_record_to_the_published_outcome(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    traced = Stack(
        settings=stack.settings,
        client=await connect(stack.settings, environment=False),  # with the interceptor
        ledger=stack.ledger,
    )
    tracer = tracing.tracer()
    assert tracer is not None
    p = payment(1)
    key, value, headers = encode_record(Codec(), p)
    with tracer.start_as_current_span("checkout publish", kind=SpanKind.PRODUCER) as produced:
        tracing.inject(headers)
    trace_id = format_trace_id(produced.get_span_context().trace_id)

    async with running_worker(traced), running_bridge(traced):
        await produce_raw(traced.settings, traced.settings.topic_payments, [(key, value, headers)])
        (record,) = await read_topic(traced.settings, traced.settings.topic_outcomes, expect=1)
    assert Codec().decode(PaymentOutcome, record.value).status.value == "SUCCEEDED"
    assert trace_id_of(record.headers) == trace_id  # the outcome carries the payment's trace

    finished = [
        s for s in spans.get_finished_spans() if format_trace_id(s.context.trace_id) == trace_id
    ]
    by_id = {s.context.span_id: s for s in finished}
    names = {s.name for s in finished}
    assert {
        f"{traced.settings.topic_payments} process",
        "SignalWithStartWorkflow:PaymentWorkflow",  # the bridge's one call per record
        "RunWorkflow:PaymentWorkflow",
        "StartActivity:debit_account",
        "RunActivity:debit_account",
        "StartActivity:publish_outcome",
        "RunActivity:publish_outcome",
    } <= names, "\n".join(sorted(names))
    (publish,) = [s for s in finished if s.name == "RunActivity:publish_outcome"]
    chain = ancestry(publish, by_id)
    assert chain[-1] == "checkout publish", chain
    assert f"{traced.settings.topic_payments} process" in chain
    assert trace_id_of(record.headers) == format_trace_id(publish.context.trace_id)
    assert dict(record.headers)["traceparent"].decode().split("-")[2] == format(
        publish.context.span_id, "016x"
    )


async def test_a_webhook_call_passes_its_trace_to_the_callback_record(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    body = json.dumps(callback_body("p-traced")).encode()
    headers = {**signed(body), "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    async with (
        webhook_on(stack.settings, CollectorRegistry()) as (url, _),
        aiohttp.ClientSession() as http,
        http.post(url, data=body, headers=headers) as response,
    ):
        assert response.status == 202
    (record,) = await read_topic(stack.settings, stack.settings.topic_callbacks, expect=1)
    assert trace_id_of(record.headers) == trace_id
    (server,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert format_trace_id(server.context.trace_id) == trace_id


def test_tracing_is_off_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    tracing.configure(None)
    assert tracing.tracer() is None
    assert tracing.client_interceptors() == []
    headers = [("event_id", b"e")]
    tracing.inject(headers)
    assert headers == [("event_id", b"e")]
    assert not tracing.enabled_by({})
    assert not tracing.enabled_by({"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_SDK_DISABLED": "true"})
    assert not tracing.enabled_by(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_TRACES_EXPORTER": "none"}
    )
    assert tracing.enabled_by({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318"})
    # an endpoint without the `tracing` extra: a warning, and tracing stays off
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setattr(tracing, "available", lambda: False)
    assert tracing._from_environment() is None


async def test_otel_variables_configure_the_otlp_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME reach a real OTLP/HTTP receiver."""
    received: list[tuple[str, bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((request.path, await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "paybridge-test")
    provider = tracing._from_environment()
    try:
        assert provider is not None
        assert provider.resource.attributes["service.name"] == "paybridge-test"
        with provider.get_tracer("t").start_as_current_span("exported"):
            pass
        assert await asyncio.to_thread(provider.force_flush)
    finally:
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)
        await runner.cleanup()
    assert [path for path, _ in received] == ["/v1/traces"]
    assert b"exported" in received[0][1] and b"paybridge-test" in received[0][1]
