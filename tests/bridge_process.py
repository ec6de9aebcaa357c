"""``paybridge bridge`` as a separate process, for crash, outage and scale-out tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import SecretStr

from plumbing.settings import Settings, format_duration
from tests.support import GATEWAY_SECRET
from tools.processes import free_port

PAYBRIDGE = str(Path(sys.executable).parent / "paybridge")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce ``settings`` in another process."""
    env: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is None or info.alias is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif hasattr(value, "total_seconds"):
            value = format_duration(value)
        env[info.alias] = str(value)
    return env


class BridgeProcess:
    """One ``paybridge bridge`` process with its own metrics port and log file."""

    def __init__(self, settings: Settings, *, log_path: Path) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            **settings_env(settings),
            "PAYBRIDGE_METRICS_PORT": str(self.port),
            "PAYBRIDGE_GATEWAY_SECRET": GATEWAY_SECRET,
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [PAYBRIDGE, "-v", "bridge"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    async def get(self, path: str) -> tuple[int, str]:
        def fetch() -> tuple[int, str]:
            url = f"http://127.0.0.1:{self.port}{path}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
            except OSError as exc:
                return 0, str(exc)

        return await asyncio.to_thread(fetch)

    async def wait_ready(self, timeout: float = 60) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            status, _ = await self.get("/readyz")
            if status == 200:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"bridge not ready: {self.log_path.read_text()[-3000:]}")

    async def sample(self, name: str, **labels: str) -> float:
        """Sum of the samples of metric ``name`` with ``labels`` from /metrics."""
        _, text = await self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{", 1)[0] != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total
