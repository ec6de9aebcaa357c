"""The simulated gateway's callbacks over HTTP, as a real gateway delivers them.

With ``PAYBRIDGE_SIM_CALLBACKS=webhook`` the simulated gateway POSTs each callback to the
gateway webhook (``PAYBRIDGE_SIM_WEBHOOK_URL``, default this host's ``PAYBRIDGE_WEBHOOK_PORT``),
signed over the raw body, and leaves the ``signature`` field out as a gateway would: the
webhook produces the record, so load tests exercise the path real callbacks take. Like a real
gateway it sends again, with back-off, while the webhook answers 5xx or cannot be reached; a
4xx is final.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator

import aiohttp

from plumbing.settings import Settings
from plumbing.temporal import Backoff
from schemas.codec import Codec
from schemas.errors import WebhookRejected
from schemas.events import GatewayCallback
from workflows.simulations.gateway import CallbackEmitter

log = logging.getLogger(__name__)


class WebhookCallbackEmitter:
    """Delivers callbacks with ``POST url``, header ``X-Signature``; retries 5xx and
    connection failures up to ``attempts`` times."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        secret: str,
        codec: Codec | None = None,
        attempts: int = 8,
        timeout: float = 15.0,
    ) -> None:
        self.session = session
        self.url = url
        self.secret = secret.encode()
        self.codec = codec or Codec()
        self.attempts = attempts
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    def body(self, callback: GatewayCallback) -> bytes:
        data = json.loads(self.codec.encode_json(callback))
        data.pop("signature", None)
        return json.dumps(data, separators=(",", ":")).encode()

    async def emit(self, callback: GatewayCallback) -> None:
        body = self.body(callback)
        headers = {
            "Content-Type": "application/json",
            "X-Signature": hmac.new(self.secret, body, hashlib.sha256).hexdigest(),
        }
        backoff = Backoff(initial=0.2, cap=5.0)
        for attempt in range(1, self.attempts + 1):
            try:
                async with self.session.post(
                    self.url, data=body, headers=headers, timeout=self.timeout
                ) as response:
                    if response.status < 300:
                        return
                    text = (await response.text())[:300]
                    if 400 <= response.status < 500:
                        raise WebhookRejected(response.status, text)
                    problem = f"{response.status} {text}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = repr(exc)
            if attempt == self.attempts:
                break
            log.info("webhook %s: %s; sending again (attempt %d)", self.url, problem, attempt + 1)
            await asyncio.sleep(backoff.next_delay())
        raise ConnectionError(
            f"callback {callback.event_id} not delivered to {self.url}: {problem}"
        )


@contextlib.asynccontextmanager
async def gateway_callbacks(
    settings: Settings, kafka: CallbackEmitter, *, secret: str, url: str | None = None
) -> AsyncIterator[CallbackEmitter]:
    """The simulated gateway's emitter that ``PAYBRIDGE_SIM_CALLBACKS`` asks for: ``kafka``
    (given) or one that POSTs to the webhook (``url``, default ``settings.webhook_url``)."""
    if settings.sim_callbacks != "webhook":
        yield kafka
        return
    async with aiohttp.ClientSession() as session:
        yield WebhookCallbackEmitter(session, url or settings.webhook_url, secret=secret)
