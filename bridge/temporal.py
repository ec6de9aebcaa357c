"""The Temporal client, built from settings with the one data converter used everywhere."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from bridge.settings import Settings


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
