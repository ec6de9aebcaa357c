"""Dashboards and alert rules against a real Prometheus scraping a real run.

A Prometheus from Debian's ``prometheus`` package runs the shipped ``prometheus.yml`` (its jobs
pointed at local ports, every interval one second) and the shipped rules. It scrapes a bridge
and a worker, each with its own registry and metrics server as in separate processes, the
worker's Temporal SDK runtime and a Temporal dev server's own metrics, during a small end-to-end
run with DLQ traffic. Then every PromQL expression of every dashboard panel, variable and alert
rule goes through Prometheus's HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from ruamel.yaml import YAML

from plumbing.health import MetricsServer
from plumbing.kafka import create_topics
from plumbing.settings import Settings
from plumbing.temporal import connect, sdk_metrics_runtime
from schemas.codec import Codec
from schemas.errors import ConfigError
from schemas.events import PaymentCancelRequested
from tests import servers
from tests.support import (
    GATEWAY_SECRET,
    Stack,
    isolated_settings,
    payment,
    produce_raw,
    read_outcomes,
    running_bridge,
    running_worker,
)
from tools.devstack import temporal_server, wait_for_temporal
from tools.processes import ServerProcess, free_port
from tools.producing import encode_record
from webhook.service import open_webhook
from workflows.simulations.ledger import Ledger

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_YML = ROOT / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="Debian's prometheus package is not installed "
    "(scripts/test installs it with apt-get when run as root)",
)

# Grafana's built-in variables, as the test evaluates them (scrapes every second here).
GRAFANA_BUILTINS = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "10m"}
# Panels that show only failures: a healthy run leaves them empty, and that is right.
MAY_BE_EMPTY = {
    "Temporal retries /s by reason",
    "Workflow task failures /s",
    "Failed requests to Temporal /s",
    "Server errors /s",
}

PAYMENTS_PER_WAVE = 30
BAD_RECORDS_PER_WAVE = 2


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


# ---------------------------------------------------------------- Prometheus


class Prometheus:
    """The HTTP API of a running Prometheus."""

    def __init__(self, address: str) -> None:
        self.url = f"http://{address}"

    async def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"

        def fetch() -> Any:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    return json.load(response)
            except urllib.error.HTTPError as exc:  # a bad query answers 400 with a JSON error
                return json.load(exc)

        return await asyncio.to_thread(fetch)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's series; ValueError with Prometheus's message if it is invalid."""
        answer = await self.get("/api/v1/query", query=expr)
        if answer.get("status") != "success":
            raise ValueError(f"{answer.get('errorType')}: {answer.get('error')}")
        data = answer["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    async def wait_for(
        self, expr: str, *, until: Any = bool, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Poll ``expr`` until ``until(result)`` holds (by default: any series) or time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = await self.query(expr)
            if until(result) or loop.time() > deadline:
                return result
            await asyncio.sleep(0.25)


def prometheus_config(targets: Mapping[str, str]) -> dict[str, Any]:
    """The shipped prometheus.yml with each job pointed at a local address and one-second
    intervals, so that a short run gives rates and evaluates every rule many times."""
    config = load_yaml(PROMETHEUS_YML)
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(path) for path in RULE_FILES]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == set(targets), f"prometheus.yml scrapes {sorted(jobs)}; the test knows {targets}"
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


@contextlib.asynccontextmanager
async def running_prometheus(tmp: Path, targets: dict[str, str]) -> AsyncIterator[Prometheus]:
    assert PROMETHEUS is not None
    port = free_port()
    address = f"{HOST}:{port}"
    config = tmp / "prometheus.yml"
    config.write_text(json.dumps(prometheus_config({**targets, "prometheus": address})))
    process = ServerProcess(
        "prometheus",
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address={address}",
            "--log.level=warn",
        ],
        log_path=tmp / "prometheus.log",
    )
    await process.start()
    try:
        await process.wait_for_port(HOST, port)
        yield Prometheus(address)
    finally:
        await process.stop()


# ---------------------------------------------------------------- the observed run


@dataclass
class Run:
    prometheus: Prometheus
    bridge_server: MetricsServer
    payments: int
    settings: Settings
    tmp: Path


def _settings(kafka: str, temporal: str) -> Settings:
    return isolated_settings(kafka, temporal, PAYBRIDGE_SDK_METRICS_PORT=free_port())


async def _wave(settings: Settings, first: int, count: int) -> list[str]:
    """Payments (Avro and JSON) and records that cannot be decoded; returns the payment ids."""
    codec = Codec()
    payments = [payment(n) for n in range(first, first + count)]
    records = [encode_record(codec, p, as_json=n % 2 == 1) for n, p in enumerate(payments)]
    records += [(b"junk", b"\x00not avro", [])] * BAD_RECORDS_PER_WAVE
    await produce_raw(settings, settings.topic_payments, records)
    return [p.payment_id for p in payments]


async def _cancel(settings: Settings, payment_ids: list[str]) -> None:
    """Cancel requests for payments that have ended: signals with result ``closed``."""
    codec = Codec()
    cancels = [
        PaymentCancelRequested(
            event_id=str(uuid.uuid4()),
            payment_id=payment_id,
            reason="customer changed their mind",
            requested_at=datetime.now(UTC),
        )
        for payment_id in payment_ids
    ]
    await produce_raw(settings, settings.topic_cancels, [encode_record(codec, c) for c in cancels])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def run(
    kafka_server: servers.Server, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Run]:
    if PROMETHEUS is None:
        pytest.skip("Debian's prometheus package is not installed")
    tmp = tmp_path_factory.mktemp("observability")
    # A Temporal server of this module's own, for its metrics endpoint.
    temporal_port, temporal_metrics = free_port(), free_port()
    temporal = temporal_server(port=temporal_port, ui_port=None, data_dir=None, log_dir=tmp)
    temporal.argv += ["--metrics-port", str(temporal_metrics)]
    settings = _settings(kafka_server.address, f"{HOST}:{temporal_port}")
    bridge_registry, worker_registry = CollectorRegistry(), CollectorRegistry()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(temporal.stop)
        await temporal.start()
        await temporal.wait_for_port(HOST, temporal_port)
        bridge_client = await wait_for_temporal(settings)
        worker_client = await connect(settings, runtime=sdk_metrics_runtime(settings, host=HOST))
        await create_topics(settings)
        ledger = Ledger(tmp / "ledger.sqlite")
        stack.callback(ledger.close)
        ledger.seed()
        bridge_server = await stack.enter_async_context(
            MetricsServer(bridge_registry, host=HOST, port=0)
        )
        worker_server = await stack.enter_async_context(
            MetricsServer(worker_registry, host=HOST, port=0)
        )
        webhook_registry = CollectorRegistry()
        webhook_server = await stack.enter_async_context(
            MetricsServer(webhook_registry, host=HOST, port=0)
        )
        await stack.enter_async_context(
            open_webhook(
                settings.model_copy(update={"webhook_port": 0}),
                registry=webhook_registry,
                server=webhook_server,
                secret=GATEWAY_SECRET,
                host=HOST,
            )
        )
        prometheus = await stack.enter_async_context(
            running_prometheus(
                tmp,
                {
                    "paybridge-bridge": f"{HOST}:{bridge_server.port}",
                    "paybridge-worker": f"{HOST}:{worker_server.port}",
                    "paybridge-webhook": f"{HOST}:{webhook_server.port}",
                    "paybridge-worker-sdk": f"{HOST}:{settings.sdk_metrics_port}",
                    "temporal": f"{HOST}:{temporal_metrics}",
                },
            )
        )
        await stack.enter_async_context(
            running_worker(Stack(settings, worker_client, ledger, registry=worker_registry))
        )
        await stack.enter_async_context(
            running_bridge(Stack(settings, bridge_client, ledger, registry=bridge_registry))
        )
        # Two waves, so that every counter is seen by Prometheus before it grows again.
        first = await _wave(settings, 0, PAYMENTS_PER_WAVE)
        await prometheus.wait_for("paybridge_dlq_records_total")
        await prometheus.wait_for("paybridge_outcomes_published_total")
        await _wave(settings, PAYMENTS_PER_WAVE, PAYMENTS_PER_WAVE)
        await _cancel(settings, first[:5])
        total = 2 * PAYMENTS_PER_WAVE
        assert len(await read_outcomes(settings, expect=total)) == total
        scraped = await prometheus.wait_for(
            "sum(paybridge_outcomes_published_total)",
            until=lambda r: r and float(r[0]["value"][1]) >= total,
        )
        assert scraped, "Prometheus did not scrape the worker's outcome counters"
        await prometheus.wait_for('paybridge_signals_total{signal="cancel"}')
        yield Run(prometheus, bridge_server, total, settings, tmp)


# ---------------------------------------------------------------- dashboards


def dashboards() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in DASHBOARDS:
        yield path.name, json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def resolve(expr: str, dashboard: dict[str, Any]) -> str:
    """``expr`` with Grafana's built-ins and the dashboard's variables at "All"."""
    for name, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(name, value)
    for name, variable in variables(dashboard).items():
        expr = re.sub(rf"\$(\{{{name}\}}|{name}\b)", variable.get("allValue") or ".*", expr)
    assert "$" not in expr, f"unresolved variable in {expr}"
    return expr


def test_dashboards_reference_the_provisioned_datasource_and_defined_variables() -> None:
    provisioned = {d["uid"]: d["type"] for d in load_yaml(DATASOURCES)["datasources"]}
    assert len(DASHBOARDS) == 2
    for name, dashboard in dashboards():
        defined = variables(dashboard)
        source = defined["datasource"]
        assert source["type"] == "datasource"
        assert provisioned.get(source["current"]["value"]) == source["query"] == "prometheus"
        for variable in defined.values():
            if variable["type"] == "query":
                assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in panels(dashboard):
            where = f"{name}: {panel['title']}"
            refs = [panel["datasource"], *(target["datasource"] for target in panel["targets"])]
            assert all(ref == {"type": "prometheus", "uid": "${datasource}"} for ref in refs), where
            assert panel["targets"], where
            for target in panel["targets"]:
                used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
                builtins = {name.lstrip("$") for name in GRAFANA_BUILTINS}
                assert used <= set(defined) | builtins, f"{where}: {used - set(defined)}"
        assert {"instance"} <= set(defined), name
    overview = json.loads((ROOT / "grafana/dashboards/paybridge-overview.json").read_text())
    assert "topic" in variables(overview)


@needs_prometheus
async def test_every_dashboard_query_is_valid_and_shows_the_run(run: Run) -> None:
    problems: list[str] = []
    checked = 0
    for name, dashboard in dashboards():
        for panel in panels(dashboard):
            series = 0
            for target in panel["targets"]:
                expr = resolve(target["expr"], dashboard)
                try:
                    result = await run.prometheus.query(expr)
                except ValueError as exc:
                    problems.append(f"{name}: {panel['title']}: {expr}: {exc}")
                    continue
                checked += 1
                series += len(result)
            if series == 0 and panel["title"] not in MAY_BE_EMPTY:
                problems.append(f"{name}: {panel['title']}: no data after the run")
    assert not problems, "\n".join(problems)
    assert checked >= 50


@needs_prometheus
async def test_dashboard_variables_list_values(run: Run) -> None:
    for name, dashboard in dashboards():
        for variable in variables(dashboard).values():
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
            assert match, f"{name}: {variable['name']}: not label_values(selector, label)"
            selector = resolve(match.group(1), dashboard)
            answer = await run.prometheus.get("/api/v1/series", **{"match[]": selector})
            assert answer["status"] == "success", answer
            values = {series.get(match.group(2)) for series in answer["data"]} - {None}
            assert values, f"{name}: variable {variable['name']} lists nothing"


@needs_prometheus
async def test_numbers_on_the_dashboards_match_the_run(run: Run) -> None:
    query = run.prometheus.query
    outcomes = await query("sum(paybridge_outcomes_published_total)")
    assert float(outcomes[0]["value"][1]) == run.payments
    started = await query('sum(paybridge_workflow_starts_total{result="started"})')
    assert float(started[0]["value"][1]) == run.payments
    dlq = await query("sum(paybridge_dlq_records_total)")
    assert float(dlq[0]["value"][1]) == 2 * BAD_RECORDS_PER_WAVE
    closed = await query('sum(paybridge_signals_total{signal="cancel"})')
    assert float(closed[0]["value"][1]) == 5
    p99 = await query(
        "histogram_quantile(0.99, sum by (le) "
        "(rate(paybridge_payment_end_to_end_seconds_bucket[1m])))"
    )
    assert 0 < float(p99[0]["value"][1]) < 60
    # The SDK reports durations in seconds, as the worker dashboard's units say (not ms).
    assert await query('temporal_workflow_task_execution_latency_bucket{le="0.001"}')


# ---------------------------------------------------------------- alert rules


def shipped_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
    ]


@needs_prometheus
async def test_every_rule_is_loaded_and_evaluates_cleanly(run: Run) -> None:
    rules = shipped_rules()
    for rule in rules:
        await run.prometheus.query(rule["expr"])  # raises if invalid
    answer = await run.prometheus.get("/api/v1/rules")
    loaded = {rule["name"]: rule for group in answer["data"]["groups"] for rule in group["rules"]}
    assert set(loaded) == {rule.get("alert") or rule["record"] for rule in rules}
    for name, rule in loaded.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
    # The run dead-lettered records: that alert fires; the ones for a broken system do not.
    alerts = await run.prometheus.get("/api/v1/alerts")
    active = {alert["labels"]["alertname"] for alert in alerts["data"]["alerts"]}
    assert "PaybridgeDeadLetters" in active
    healthy = {"PaybridgeBridgeDown", "PaybridgeWorkerDown", "TemporalWorkflowTaskFailures"}
    assert not active & healthy, active


@needs_prometheus
async def test_paybridge_worker_process_serves_the_sdk_metrics(run: Run) -> None:
    """`paybridge worker` itself: its Temporal SDK metrics on PAYBRIDGE_SDK_METRICS_PORT."""
    metrics_port, sdk_port = free_port(), free_port()
    task_queue = f"payments-{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": run.settings.kafka_bootstrap_servers,
        "TEMPORAL_ADDRESS": run.settings.temporal_address,
        "TEMPORAL_TASK_QUEUE": task_queue,
        "PAYBRIDGE_METRICS_PORT": str(metrics_port),
        "PAYBRIDGE_SDK_METRICS_PORT": str(sdk_port),
        "PAYBRIDGE_GATEWAY_SECRET": "test-secret",
    }
    ledger = run.tmp / f"{task_queue}.sqlite"
    worker = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "paybridge"),
        "worker",
        "--ledger",
        str(ledger),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        text = ""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not _polling(text, task_queue) and loop.time() < deadline:
            await asyncio.sleep(0.3)
            with contextlib.suppress(OSError):
                text = await asyncio.to_thread(_fetch, f"http://{HOST}:{sdk_port}/metrics")
        assert _polling(text, task_queue), text[:2000]
        assert "ok" in await asyncio.to_thread(_fetch, f"http://{HOST}:{metrics_port}/healthz")
    finally:
        worker.terminate()
        _, stderr = await asyncio.wait_for(worker.communicate(), timeout=30)
    assert worker.returncode == 0, stderr.decode(errors="replace")[-2000:]


def _polling(metrics: str, task_queue: str) -> bool:
    """The SDK reports task slots of a worker of ``task_queue``."""
    return any(
        line.startswith("temporal_worker_task_slots_available{")
        and f'task_queue="{task_queue}"' in line
        for line in metrics.splitlines()
    )


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


@needs_prometheus
async def test_bridge_down_alert_when_its_metrics_stop(run: Run) -> None:
    """Runs last in this module: it stops the bridge's metrics endpoint."""
    (down,) = [rule for rule in shipped_rules() if rule.get("alert") == "PaybridgeBridgeDown"]
    assert await run.prometheus.query(down["expr"]) == []
    await run.bridge_server.stop()
    assert await run.prometheus.wait_for(down["expr"], timeout=15)
    pending = await run.prometheus.wait_for('ALERTS{alertname="PaybridgeBridgeDown"}', timeout=10)
    assert pending[0]["metric"]["alertstate"] == "pending"  # `for: 1m` not yet elapsed


# ---------------------------------------------------------------- the SDK runtime


def test_sdk_metrics_port_zero_turns_them_off_and_a_busy_port_names_the_setting() -> None:
    assert sdk_metrics_runtime(Settings(PAYBRIDGE_SDK_METRICS_PORT=0)) is None
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        settings = Settings(PAYBRIDGE_SDK_METRICS_PORT=busy.getsockname()[1])
        with pytest.raises(ConfigError, match="PAYBRIDGE_SDK_METRICS_PORT"):
            sdk_metrics_runtime(settings, host=HOST)


# ---------------------------------------------------------------- promtool


@needs_prometheus
@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", str(PROMETHEUS_YML)],
        ["check", "rules", *map(str, RULE_FILES)],
        ["test", "rules", *map(str, RULE_TESTS)],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(args: list[str]) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
