"""docker-compose.yml's operator edges, checked without Docker: the webhook service and the
simulated gateway delivering through it, Temporal's dynamic configuration file, stop grace
periods long enough to drain, and the `cli` service the README uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from plumbing.settings import WEBHOOK_PATH, parse_duration
from tests.test_compose import ROOT, load_yaml


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return dict(load_yaml(ROOT / "docker-compose.yml")["services"])


def test_temporal_reads_the_mounted_dynamic_config(services: dict[str, dict[str, Any]]) -> None:
    temporal = services["temporal"]
    mounts = dict(v.removesuffix(":ro").split(":", 1) for v in temporal["volumes"])
    path = Path(temporal["environment"]["DYNAMIC_CONFIG_FILE_PATH"])
    (source,) = [src for src, target in mounts.items() if path.parent == Path(target)]
    config = load_yaml(ROOT / source / path.name)
    assert config["system.forceSearchAttributesCacheRefreshOnRead"] == [{"value": True}]
    for key, values in config.items():  # Temporal's format: key -> list of {value, constraints}
        assert isinstance(values, list) and values, key
        assert all(set(v) <= {"value", "constraints"} and "value" in v for v in values), key


def test_bridge_and_worker_get_time_to_drain(services: dict[str, dict[str, Any]]) -> None:
    for name in ("bridge", "worker"):
        grace = parse_duration(services[name]["stop_grace_period"]).total_seconds()
        assert grace >= 45, name  # Docker's default of 10 s would kill them mid-drain
    assert parse_duration(services["webhook"]["stop_grace_period"]).total_seconds() > 10


def test_the_simulated_gateway_calls_the_webhook_service(
    services: dict[str, dict[str, Any]],
) -> None:
    webhook, worker = services["webhook"], services["worker"]
    assert webhook["command"] == ["webhook"]
    port = webhook["environment"]["PAYBRIDGE_WEBHOOK_PORT"]
    assert f"{port}:{port}" in webhook["ports"]
    assert worker["environment"]["PAYBRIDGE_SIM_CALLBACKS"] == "webhook"
    url = worker["environment"]["PAYBRIDGE_SIM_WEBHOOK_URL"]
    assert url == f"http://webhook:{port}{WEBHOOK_PATH}"
    assert worker["depends_on"]["webhook"]["condition"] == "service_healthy"


def test_the_readme_produces_and_reads_with_compose_run(
    services: dict[str, dict[str, Any]],
) -> None:
    cli = services["cli"]
    assert cli["profiles"] == ["cli"]  # `docker compose up` leaves it out
    assert cli["restart"] == "no"
    readme = (ROOT / "README.md").read_text()
    assert "docker compose run --rm cli produce payment" in readme
    assert "docker compose run --rm cli outcomes" in readme
