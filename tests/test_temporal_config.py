"""Temporal connection settings from Temporal's own environment configuration (envconfig)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plumbing.settings import Settings
from plumbing.temporal import connect, connect_config
from schemas.errors import ConfigError
from tests.servers import Server

PAYBRIDGE = str(Path(sys.executable).parent / "paybridge")
CLOSED = "127.0.0.1:1"


@pytest.fixture
def profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: no Temporal variables but those a test sets."""
    for name in list(os.environ):
        if name.startswith("TEMPORAL_"):
            monkeypatch.delenv(name)
    path = tmp_path / "temporal.toml"
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(path))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/temporalio of the developer's
    return path


def write(path: Path, text: str) -> None:
    path.write_text(text)


async def test_a_profile_supplies_the_connection(
    profile: Path, monkeypatch: pytest.MonkeyPatch, temporal_server: Server
) -> None:
    write(
        profile,
        f'[profile.staging]\naddress = "{temporal_server.address}"\nnamespace = "default"\n'
        '[profile.staging.grpc_meta]\nx-tenant = "acme"\n'
        f'[profile.default]\naddress = "{CLOSED}"\n',
    )
    monkeypatch.setenv("TEMPORAL_PROFILE", "staging")
    settings = Settings()  # nothing of paybridge's own names set
    config = connect_config(settings)
    assert config["target_host"] == temporal_server.address
    assert config["rpc_metadata"] == {"x-tenant": "acme"}
    client = await connect(settings)
    assert (await client.count_workflows()).count >= 0
    # A standard variable beats the profile
    monkeypatch.setenv("TEMPORAL_GRPC_META_X_TENANT", "other")
    assert connect_config(Settings())["rpc_metadata"] == {"x-tenant": "other"}


async def test_explicit_settings_win_over_the_profile(
    profile: Path, monkeypatch: pytest.MonkeyPatch, temporal_server: Server
) -> None:
    write(profile, f'[profile.default]\naddress = "{CLOSED}"\nnamespace = "elsewhere"\n')
    assert connect_config(Settings())["target_host"] == CLOSED
    flag = Settings(temporal_address=temporal_server.address)
    assert connect_config(flag)["target_host"] == temporal_server.address
    assert connect_config(flag)["namespace"] == "elsewhere"
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)  # paybridge's own name
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    client = await connect(Settings())
    assert client.namespace == "default"
    assert (await client.count_workflows()).count >= 0
    # The dev stack connects to its own server, whatever the environment says.
    monkeypatch.delenv("TEMPORAL_ADDRESS")
    assert connect_config(Settings(), environment=False)["target_host"] == "127.0.0.1:7233"


def test_a_bad_profile_or_file_names_the_setting(
    profile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile.write_text('[profile.default]\naddress = "127.0.0.1:7233"\n')
    monkeypatch.setenv("TEMPORAL_PROFILE", "nope")
    with pytest.raises(ConfigError, match="Profile 'nope' not found") as raised:
        connect_config(Settings())
    assert raised.value.setting == "TEMPORAL_PROFILE"
    done = subprocess.run(
        [PAYBRIDGE, "status", "p1"], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert done.returncode == 2, done.stderr
    assert "TEMPORAL_PROFILE" in done.stderr and "Traceback" not in done.stderr
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(profile.parent / "missing.toml"))
    with pytest.raises(ConfigError, match="TEMPORAL_CONFIG_FILE"):
        connect_config(Settings())
