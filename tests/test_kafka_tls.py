"""Kafka mTLS: paybridge's clients present their certificate, and Kafka answers through TLS.

The embedded broker speaks plaintext only, so a TLS terminator that demands a client
certificate (as a broker with ``ssl.client.auth=required`` does) sits in front of it. The Kafka
client bootstraps through it: the TLS handshake and a real metadata exchange with the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError

from plumbing.kafka import client_kwargs
from plumbing.settings import Settings
from schemas.errors import ConfigError
from tests.servers import Server


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    root = tmp_path_factory.mktemp("certs")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=paybridge test CA", cwd=root)  # fmt: skip
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=paybridge-client")):
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
                 cwd=root)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                 "-extfile", "san.ext", cwd=root)  # fmt: skip
    return root


@contextlib.asynccontextmanager
async def tls_terminator(certs: Path, upstream: str, peers: list[str]) -> AsyncIterator[str]:
    """Accepts TLS with a required client certificate and pipes to the plaintext broker."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs / "ca.crt"))
    context.load_cert_chain(certs / "server.crt", certs / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED
    host, _, port = upstream.rpartition(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert") or {}
        peers.extend(
            value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"
        )
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def bootstrap(settings: Settings) -> list[int]:
    client = AIOKafkaClient(**client_kwargs(settings))
    try:
        await client.bootstrap()
        return sorted(broker.nodeId for broker in client.cluster.brokers())
    finally:
        await client.close()


async def test_clients_present_their_certificate_and_reach_kafka(
    certs: Path, kafka_server: Server
) -> None:
    peers: list[str] = []
    async with tls_terminator(certs, kafka_server.address, peers) as address:
        tls = {
            "KAFKA_BOOTSTRAP_SERVERS": address,
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": str(certs / "ca.crt"),
        }
        mutual = Settings(
            **tls,
            KAFKA_SSL_CERTFILE=str(certs / "client.crt"),
            KAFKA_SSL_KEYFILE=str(certs / "client.key"),
        )
        assert await bootstrap(mutual)  # the broker's metadata, through mTLS
        assert peers == ["paybridge-client"]
        with pytest.raises(KafkaConnectionError):  # no client certificate: refused
            await bootstrap(Settings(**tls))
        assert peers == ["paybridge-client"]


def test_tls_settings_that_cannot_work_name_the_setting(certs: Path) -> None:
    with pytest.raises(ConfigError, match="KAFKA_SECURITY_PROTOCOL"):
        client_kwargs(Settings(KAFKA_SSL_CERTFILE=str(certs / "client.crt")))
    with pytest.raises(ConfigError, match="KAFKA_SSL_CERTFILE"):
        client_kwargs(
            Settings(
                KAFKA_SECURITY_PROTOCOL="SSL",
                KAFKA_SSL_CERTFILE=str(certs / "missing.crt"),
                KAFKA_SSL_KEYFILE=str(certs / "client.key"),
            )
        )
    with pytest.raises(ConfigError, match="KAFKA_SSL_CERTFILE"):
        client_kwargs(
            Settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_KEYFILE=str(certs / "client.key"))
        )
