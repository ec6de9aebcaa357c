from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import settings as hypothesis_settings
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from plumbing.kafka import create_topics
from plumbing.settings import Settings
from tests import scale, servers
from tests.support import Stack, isolated_settings
from tools.devstack import wait_for_temporal
from workflows.simulations.ledger import Ledger

hypothesis_settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True)
hypothesis_settings.load_profile("ci")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="run the acceptance runs at the issues' full counts (tests/scale.py); "
        "same as PAYBRIDGE_TEST_SCALE=long",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--long"):
        scale.LONG = True


def pytest_report_header() -> str:
    return f"paybridge test scale: {'long' if scale.LONG else 'ci'} (tests/scale.py)"


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_server(session_dir: Path) -> AsyncIterator[servers.Server]:
    async with servers.temporal(session_dir / "temporal") as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def kafka_server(session_dir: Path) -> AsyncIterator[servers.Server]:
    async with servers.kafka(session_dir / "kafka") as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client(temporal_server: servers.Server) -> Client:
    base = Settings(TEMPORAL_ADDRESS=temporal_server.address)
    return await wait_for_temporal(base)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server, for workflows with long timers."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=shutil.which("temporal-test-server")
        or str(Path(__import__("sys").executable).parent / "temporal-test-server"),
    )
    yield env
    await env.shutdown()


@pytest_asyncio.fixture(loop_scope="session")
async def settings(kafka_server: servers.Server, temporal_server: servers.Server) -> Settings:
    """Settings of one test: its own topics, consumer group and task queue."""
    test_settings = isolated_settings(
        kafka_server.address, temporal_server.address, PAYBRIDGE_ORPHAN_TIMEOUT="5s"
    )
    await create_topics(test_settings)
    return test_settings


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    book = Ledger(tmp_path / "ledger.sqlite")
    book.seed()
    yield book
    book.close()


@pytest.fixture
def stack(settings: Settings, client: Client, ledger: Ledger) -> Stack:
    return Stack(settings=settings, client=client, ledger=ledger)
