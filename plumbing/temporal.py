"""The Temporal client, built from settings with the one data converter used everywhere,
and the capped back-off with which paybridge retries Temporal calls."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import TLSConfig

from plumbing.settings import Settings
from schemas.errors import ConfigError

log = logging.getLogger(__name__)


def sdk_metrics_runtime(settings: Settings, *, host: str = "0.0.0.0") -> Runtime | None:
    """A Temporal runtime that serves the SDK's own metrics on ``PAYBRIDGE_SDK_METRICS_PORT``.

    Clients connected with it (and the workers built on those clients) report task latencies,
    slots, polls and failures as ``temporal_*`` metrics in seconds. ``None`` when the port is 0:
    callers then use the default runtime. Every runtime has its own thread pool, so a process
    makes one.
    """
    if not settings.sdk_metrics_port:
        return None
    address = f"{host}:{settings.sdk_metrics_port}"
    prometheus = PrometheusConfig(bind_address=address, durations_as_seconds=True)
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=prometheus))
    except ValueError as exc:  # the SDK reports a port it cannot bind as ValueError
        problem = f"cannot serve metrics on {address}: {exc}"
        raise ConfigError("PAYBRIDGE_SDK_METRICS_PORT", problem) from exc


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


async def connect(settings: Settings, *, runtime: Runtime | None = None) -> Client:
    """Connect to ``TEMPORAL_ADDRESS`` / ``TEMPORAL_NAMESPACE`` with TLS or an API key if set."""
    tls: TLSConfig | bool = False
    if settings.temporal_tls_cert or settings.temporal_tls_ca or settings.temporal_api_key:
        tls = TLSConfig(
            server_root_ca_cert=_read(settings.temporal_tls_ca),
            client_cert=_read(settings.temporal_tls_cert),
            client_private_key=_read(settings.temporal_tls_key),
        )
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        tls=tls,
        api_key=api_key,
        runtime=runtime,
    )


class Backoff:
    """Capped exponential back-off with full jitter."""

    def __init__(self, *, initial: float = 0.1, cap: float = 10.0) -> None:
        self.initial = initial
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        # The exponent is capped: 2**1024 no longer fits a float, and an outage of a few hours
        # (a thousand retries) would otherwise raise OverflowError out of the retry loop.
        ceiling = min(self.cap, self.initial * 2 ** min(self.attempt, 60))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)


async def connect_with_retry(settings: Settings, *, runtime: Runtime | None = None) -> Client:
    """Connect to Temporal, waiting (and saying so) while it is not reachable."""
    backoff = Backoff(initial=0.5, cap=10.0)
    while True:
        try:
            return await connect(settings, runtime=runtime)
        except RuntimeError as exc:
            delay = backoff.next_delay()
            log.warning(
                "Temporal at %s (TEMPORAL_ADDRESS) not reachable: %s; retrying in %.1fs",
                settings.temporal_address,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
