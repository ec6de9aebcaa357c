"""The Temporal client, built from settings with the one data converter used everywhere,
and the capped back-off with which paybridge retries Temporal calls.

Connection settings also come from Temporal's own environment configuration (the SDK's
``temporalio.envconfig``: a profile, ``TEMPORAL_PROFILE``, in the TOML file at
``TEMPORAL_CONFIG_FILE`` or ``~/.config/temporalio/temporal.toml``, and Temporal's standard
variables such as ``TEMPORAL_TLS_CLIENT_CERT_PATH`` or ``TEMPORAL_GRPC_META_<NAME>``).
Precedence, highest first: a command's flags; paybridge's own variables (``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS_CERT|KEY|CA``); Temporal's
standard variables; the profile; paybridge's defaults (``127.0.0.1:7233``, ``default``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import TLSConfig

from plumbing import tracing
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


def _environment_config() -> dict[str, Any]:
    """Temporal's environment configuration: profile and standard variables, through the SDK."""
    config_file = os.environ.get("TEMPORAL_CONFIG_FILE")
    if config_file and not Path(config_file).is_file():
        # The SDK would silently use no file at all.
        raise ConfigError("TEMPORAL_CONFIG_FILE", f"{config_file} is not a file")
    try:
        return dict(ClientConfig.load_client_connect_config())
    except (RuntimeError, ValueError) as exc:  # unknown profile, unreadable TOML or certificate
        name = "TEMPORAL_PROFILE" if "profile" in str(exc).lower() else "TEMPORAL_CONFIG_FILE"
        raise ConfigError(name, str(exc)) from exc


def connect_config(settings: Settings, *, environment: bool = True) -> dict[str, Any]:
    """``Client.connect`` arguments: paybridge's settings over Temporal's environment
    configuration (``environment=False``: settings only, as the dev stack wants), see the
    module's doc for the precedence."""
    config = _environment_config() if environment else {}
    explicit = settings.model_fields_set
    if "temporal_address" in explicit or not config.get("target_host"):
        config["target_host"] = settings.temporal_address
    if "temporal_namespace" in explicit or not config.get("namespace"):
        config["namespace"] = settings.temporal_namespace
    if settings.temporal_tls_cert or settings.temporal_tls_ca:
        config["tls"] = TLSConfig(
            server_root_ca_cert=_read(settings.temporal_tls_ca),
            client_cert=_read(settings.temporal_tls_cert),
            client_private_key=_read(settings.temporal_tls_key),
        )
    if settings.temporal_api_key is not None:
        config["api_key"] = settings.temporal_api_key.get_secret_value()
        config.setdefault("tls", True)  # an API key goes over TLS unless TEMPORAL_TLS=false
    return config


def temporal_target(settings: Settings) -> str:
    """The address paybridge connects to, for messages."""
    try:
        return str(connect_config(settings)["target_host"])
    except ConfigError:
        return settings.temporal_address


async def connect(
    settings: Settings, *, runtime: Runtime | None = None, environment: bool = True
) -> Client:
    """Connect as :func:`connect_config` says, with the OpenTelemetry interceptor while
    tracing is on (workers built on the client inherit it)."""
    return await Client.connect(
        **connect_config(settings, environment=environment),
        data_converter=pydantic_data_converter,
        runtime=runtime,
        interceptors=tracing.client_interceptors(),
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
                temporal_target(settings),
                exc,
                delay,
            )
            await asyncio.sleep(delay)
