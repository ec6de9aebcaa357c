"""``POST /v1/gateway/callbacks``: check, decode, produce, and only then answer 2xx.

- ``X-Signature`` must be the lower-case hex HMAC-SHA256 of the raw body, keyed with the
  gateway secret; it is compared in constant time, as bytes (a non-ASCII header is just a
  wrong signature). Missing or wrong: 401.
- The body is the JSON form of ``GatewayCallback`` (timestamps in epoch milliseconds). Its own
  ``signature`` field is optional and ignored: the body is already authenticated, and the
  webhook signs the record it produces with the contract's signature, so that the bridge's
  check passes. Not JSON, or not a valid callback: 400 with the validation message. Larger than
  ``MAX_BODY_BYTES``: 413.
- The record goes to the callbacks topic, keyed by payment id, through an idempotent producer
  with ``acks=all``; 202 only once Kafka acknowledged it, 503 (with ``Retry-After``) if it did
  not within ``SEND_TIMEOUT`` seconds: a gateway that got 2xx never has to send again.
- A callback whose ``event_id`` this process acknowledged recently is answered 200 without
  producing it again; a repeat that is not remembered (another replica, a restart) is produced
  again and the payment's workflow ignores it (it handles each ``event_id`` once).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram

from plumbing import tracing
from plumbing.kafka import RecordSender
from plumbing.settings import WEBHOOK_PATH
from schemas.codec import JSON_CONTENT_TYPE, Codec
from schemas.errors import DecodeError
from schemas.events import GatewayCallback

log = logging.getLogger(__name__)

# A callback is a few hundred bytes; anything near this is not one.
MAX_BODY_BYTES = 64 * 1024
# Gateways give up on a webhook call after 10-30 s; answer 503 before they do.
SEND_TIMEOUT = 10.0
# Acknowledged event ids remembered, to answer a repeat without producing it again.
RECENT_EVENTS = 10_000
RESULTS = ("accepted", "duplicate", "bad_signature", "invalid", "too_large", "unavailable")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WebhookMetrics:
    """What the webhook reports: requests by result, and how long answering took."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "paybridge_webhook_requests_total",
            "Gateway webhook requests, by result: accepted (produced and acknowledged), "
            "duplicate (acknowledged before), bad_signature, invalid, too_large, unavailable "
            "(Kafka did not acknowledge in time: 503).",
            ["result"],
            registry=registry,
        )
        self.latency = Histogram(
            "paybridge_webhook_request_seconds",
            "From receiving a webhook request to answering it (accepted ones include Kafka's "
            "acknowledgement).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        for result in RESULTS:
            self.requests.labels(result=result)


def body_signature(secret: str, body: bytes) -> str:
    """The ``X-Signature`` of ``body``: lower-case hex HMAC-SHA256 keyed with ``secret``."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """Constant-time check of ``header`` against the body's signature, as bytes, so that a
    header with non-ASCII characters is a mismatch, not an error."""
    expected = body_signature(secret, body).encode("ascii")
    given = (header or "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, expected)


class Webhook:
    """The request handler: one instance per process, sharing one producer."""

    def __init__(
        self,
        producer: RecordSender,
        *,
        topic: str,
        secret: str,
        metrics: WebhookMetrics,
        codec: Codec | None = None,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.secret = secret
        self.metrics = metrics
        self.codec = codec or Codec()
        self.send_timeout = send_timeout
        self._recent: OrderedDict[str, None] = OrderedDict()

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(WEBHOOK_PATH, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        with tracing.server_span("POST " + WEBHOOK_PATH, request.headers.items()):
            result, response = await self._handle(request)
        self.metrics.requests.labels(result=result).inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        return response

    def parse(self, body: bytes) -> GatewayCallback:
        """The callback in ``body``, signed with the contract's signature; raises
        :class:`DecodeError` with the validation message."""
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise DecodeError("undecodable", f"body is not UTF-8 JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise DecodeError("undecodable", "body is not a JSON object")
        data["signature"] = ""  # optional here: the record gets the contract's signature below
        callback = self.codec.decode(
            GatewayCallback,
            json.dumps(data).encode(),
            headers=[("content-type", JSON_CONTENT_TYPE)],
        )
        return callback.model_copy(update={"signature": callback.expected_signature(self.secret)})

    async def _handle(self, request: web.Request) -> tuple[str, web.Response]:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            log.warning("webhook: body over %d bytes refused", MAX_BODY_BYTES)
            return "too_large", _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        if not signature_matches(self.secret, body, request.headers.get("X-Signature")):
            log.warning("webhook: missing or wrong X-Signature from %s", request.remote)
            return "bad_signature", _error(
                401, "missing or wrong X-Signature (lower-case hex HMAC-SHA256 of the raw body)"
            )
        try:
            callback = self.parse(body)
        except DecodeError as exc:
            log.warning("webhook: invalid callback: %s", exc.message)
            return "invalid", _error(400, exc.message)
        fields = {"payment_id": callback.payment_id, "event_id": callback.event_id}
        if callback.event_id in self._recent:
            self._recent.move_to_end(callback.event_id)
            log.info("webhook: callback %s again (already acknowledged)", callback.event_id)
            return "duplicate", _answer(200, "duplicate", callback)
        headers: list[tuple[str, bytes]] = []
        tracing.inject(headers)
        try:
            sent: Any = await asyncio.wait_for(
                self.producer.send_and_wait(
                    self.topic,
                    self.codec.encode(callback),
                    key=callback.payment_id.encode(),
                    headers=headers,
                ),
                self.send_timeout,
            )
        except (KafkaError, TimeoutError) as exc:
            log.warning(
                "webhook: Kafka did not acknowledge callback %s: %r",
                callback.event_id,
                exc,
                extra=fields,
            )
            response = _error(503, "the callback could not be stored; send it again")
            response.headers["Retry-After"] = "5"
            return "unavailable", response
        self._remember(callback.event_id)
        log.info(
            "webhook: callback %s (%s) -> %s-%s@%s",
            callback.event_id,
            callback.status.value,
            sent.topic,
            sent.partition,
            sent.offset,
            extra={
                **fields,
                "topic": sent.topic,
                "partition": sent.partition,
                "offset": sent.offset,
            },
        )
        return "accepted", _answer(202, "accepted", callback)

    def _remember(self, event_id: str) -> None:
        self._recent[event_id] = None
        self._recent.move_to_end(event_id)
        while len(self._recent) > RECENT_EVENTS:
            self._recent.popitem(last=False)


def _answer(status: int, result: str, callback: GatewayCallback) -> web.Response:
    return web.json_response(
        {"result": result, "event_id": callback.event_id, "payment_id": callback.payment_id},
        status=status,
    )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class WebhookServer:
    """The webhook's HTTP server, on ``host:port`` (port 0: any free port, see ``port``).

    On exit it stops listening, then lets requests in flight finish (their Kafka
    acknowledgement included) for up to ``shutdown_timeout`` seconds.
    """

    def __init__(
        self, webhook: Webhook, *, host: str, port: int, shutdown_timeout: float = 15.0
    ) -> None:
        self.webhook = webhook
        self.host = host
        self.port = port
        self._runner = web.AppRunner(
            webhook.application(), access_log=None, shutdown_timeout=shutdown_timeout
        )

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}{WEBHOOK_PATH}"

    async def __aenter__(self) -> WebhookServer:
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()
