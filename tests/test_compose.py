"""docker-compose.yml, the Dockerfile and the Grafana provisioning, checked without Docker.

No Docker engine runs here: the compose file is validated against the Compose Specification's
JSON schema (the copy that check-jsonschema vendors), and its wiring is checked against the
rest of the repository: the settings the paybridge services set, the CLI commands they run,
the Prometheus scrape targets, and the files it mounts.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML

from plumbing.settings import Settings
from tools.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ONE_SHOT = {"topics", "temporal-schema", "temporal-init"}
PAYBRIDGE_SERVICES = {"topics", "worker", "bridge", "webhook", "cli"}


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(load_yaml(COMPOSE))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def compose_schema() -> dict[str, Any]:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendored.joinpath("compose-spec.json").read_text())
    return schema


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = compose_schema()
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)
    # The schema does catch mistakes: a misspelt depends_on condition is one.
    broken = copy.deepcopy(compose)
    broken["services"]["bridge"]["depends_on"]["worker"]["condition"] = "service_ready"
    assert not validator.is_valid(broken)


def test_every_image_and_version_is_named(services: dict[str, dict[str, Any]]) -> None:
    images = {name: service["image"] for name, service in services.items()}
    for name, image in images.items():
        repository, _, tag = image.rpartition(":")
        assert repository and re.fullmatch(r"v?\d+(\.\d+)+", tag), f"{name}: {image} not pinned"
    assert images["kafka"].startswith("apache/kafka:")
    assert images["temporal"].startswith("temporalio/server:")
    assert images["temporal-ui"].startswith("temporalio/ui:")
    assert images["prometheus"].startswith("prom/prometheus:")
    assert images["grafana"].startswith("grafana/grafana:")
    for name in PAYBRIDGE_SERVICES:  # built from the one Dockerfile
        assert services[name]["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert (ROOT / "Dockerfile").is_file()
    assert (ROOT / ".dockerignore").is_file()


def test_start_up_order_rests_on_health_checks(services: dict[str, dict[str, Any]]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            wanted = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert rule["condition"] == wanted, f"{name} -> {dependency}"
            if wanted == "service_healthy" and dependency not in PAYBRIDGE_SERVICES:
                assert "test" in services[dependency]["healthcheck"], dependency
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
    assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile  # bridge and worker
    assert services["bridge"]["depends_on"]["worker"]["condition"] == "service_healthy"


def test_paybridge_services_set_real_settings_and_run_real_commands(
    services: dict[str, dict[str, Any]],
) -> None:
    aliases = {field.alias for field in Settings.model_fields.values()}
    for name in PAYBRIDGE_SERVICES:
        service = services[name]
        for variable in service["environment"]:
            assert variable in aliases, f"{name}: {variable} is no paybridge setting"
        command = service["command"]
        group = cli
        for word in command:
            if word.startswith("-"):
                break
            assert hasattr(group, "commands") and word in group.commands, f"{name}: {command}"
            group = group.commands[word]
        flags = {opt for param in group.params for opt in getattr(param, "opts", [])}
        assert {word for word in command if word.startswith("--")} <= flags, f"{name}: {command}"
    assert services["worker"]["environment"]["PAYBRIDGE_SDK_METRICS_PORT"] == "9465"


def test_prometheus_scrapes_the_compose_services(services: dict[str, dict[str, Any]]) -> None:
    config = load_yaml(ROOT / "prometheus" / "prometheus.yml")
    ports = {
        "bridge": {services["bridge"]["environment"]["PAYBRIDGE_METRICS_PORT"]},
        "worker": {
            services["worker"]["environment"]["PAYBRIDGE_METRICS_PORT"],
            services["worker"]["environment"]["PAYBRIDGE_SDK_METRICS_PORT"],
        },
        "webhook": {services["webhook"]["environment"]["PAYBRIDGE_METRICS_PORT"]},
        "temporal": {services["temporal"]["environment"]["PROMETHEUS_ENDPOINT"].split(":")[1]},
        "localhost": {"9090"},
    }
    for job in config["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            assert port in ports[host], f"{job['job_name']}: {target}"
    mounts = services["prometheus"]["volumes"]
    assert "./prometheus:/etc/prometheus:ro" in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_grafana_provisioning_matches_the_mounts(services: dict[str, dict[str, Any]]) -> None:
    mounts = dict(
        volume.removesuffix(":ro").split(":", 1)
        for volume in services["grafana"]["volumes"]
        if volume.startswith("./")
    )
    for source in mounts:
        assert (ROOT / source).is_dir(), source
    provider = load_yaml(ROOT / "grafana/provisioning/dashboards/paybridge.yml")["providers"][0]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "grafana/dashboards" / Path(home).name).is_file()
    datasource = load_yaml(ROOT / "grafana/provisioning/datasources/prometheus.yml")
    (prometheus,) = datasource["datasources"]
    assert prometheus["url"] == "http://prometheus:9090"
    assert prometheus["uid"] == "paybridge-prometheus"


def test_compose_gives_bridge_and_worker_the_time_they_drain_in(
    services: dict[str, dict[str, Any]],
) -> None:
    """Docker sends SIGKILL after stop_grace_period (10 s by default): a rolling restart must
    not cut the worker's outcome publishing or the bridge's drain short."""
    import inspect

    from bridge.consumer import Bridge
    from plumbing.settings import parse_duration

    worker = services["worker"]
    drain = parse_duration(worker["environment"]["PAYBRIDGE_WORKER_SHUTDOWN_GRACE"])
    assert parse_duration(worker["stop_grace_period"]) >= drain + timedelta(seconds=10)
    bridge_drain = inspect.signature(Bridge).parameters["grace"].default
    bridge_grace = parse_duration(services["bridge"]["stop_grace_period"])
    assert bridge_grace >= timedelta(seconds=bridge_drain + 10)
