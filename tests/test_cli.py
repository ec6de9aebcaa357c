"""The command line as a user runs it: settings errors, `paybridge dev` up and down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.processes import free_port

PAYBRIDGE = str(Path(sys.executable).parent / "paybridge")


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PAYBRIDGE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in (
        "dev",
        "bridge",
        "worker",
        "topics",
        "produce",
        "outcomes",
        "status",
        "cancel",
        "resolve",
        "loadgen",
        "replay",
        "dlq",
        "recurring",
        "namespace",
        "webhook",
        "review",
    ):
        assert command in result.stdout
    produce = run("produce", "--help").stdout
    assert all(kind in produce for kind in ("payment", "callback", "cancel"))
    assert "KAFKA_BOOTSTRAP_SERVERS" in run("dev", "--help").stdout


@pytest.mark.parametrize(
    ("env", "args", "named"),
    [
        ({"PAYBRIDGE_CALLBACK_TIMEOUT": "soon"}, ["bridge"], "PAYBRIDGE_CALLBACK_TIMEOUT"),
        ({"TEMPORAL_ADDRESS": "no-port"}, ["worker"], "TEMPORAL_ADDRESS"),
        ({"PAYBRIDGE_METRICS_PORT": "70000"}, ["dev"], "PAYBRIDGE_METRICS_PORT"),
        ({"PAYBRIDGE_GATEWAY_SECRET": ""}, ["bridge"], "PAYBRIDGE_GATEWAY_SECRET"),
        ({}, ["bridge", "--temporal-address", "x"], "TEMPORAL_ADDRESS"),
        (
            {"PAYBRIDGE_GATEWAY_SECRET": ""},
            ["produce", "callback", "--payment-id", "p1"],
            "PAYBRIDGE_GATEWAY_SECRET",
        ),
    ],
)
def test_bad_setting_fails_naming_it(env: dict[str, str], args: list[str], named: str) -> None:
    result = run(*args, env=env, timeout=30)
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_dev_stack_runs_a_payment_and_stops_cleanly(tmp_path: Path, stop_signal: int) -> None:
    kafka, temporal, metrics = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}",
        "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal}",
        "PAYBRIDGE_METRICS_PORT": str(metrics),
        "PAYBRIDGE_SDK_METRICS_PORT": str(free_port()),
        "PAYBRIDGE_WEBHOOK_PORT": str(free_port()),
    }
    started = time.monotonic()
    dev = subprocess.Popen(
        [PAYBRIDGE, "dev", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        assert dev.stdout is not None
        for line in dev.stdout:
            lines.append(line.rstrip("\n"))
            if line == "ready\n" or time.monotonic() - started > 60:
                break
        assert lines[-1] == "ready", "\n".join(lines)
        assert time.monotonic() - started < 60
        banner = "\n".join(lines)
        assert f"http://127.0.0.1:{temporal + 1000}" in banner
        assert f"127.0.0.1:{kafka}" in banner
        assert f"http://127.0.0.1:{metrics}/metrics" in banner
        servers = _children(dev.pid)
        assert len(servers) == 2, servers

        produced = subprocess.run(
            [PAYBRIDGE, "produce", "payment", "--payment-id", "cli-1", "--amount", "777"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert produced.returncode == 0, produced.stderr
        assert "payment-cli-1" in produced.stdout
        for _ in range(60):
            shown = subprocess.run(
                [PAYBRIDGE, "outcomes", "--payment-id", "cli-1", "--json"],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            if '"SUCCEEDED"' in shown.stdout:
                break
            time.sleep(0.5)
        assert '"status": "SUCCEEDED"' in shown.stdout
        assert '"amount_minor": 777' in shown.stdout
    finally:
        dev.send_signal(stop_signal)
        rest, _ = dev.communicate(timeout=60)
    assert dev.returncode == 0, rest
    assert "stopped" in rest
    for pid in servers:
        assert not _alive(pid), f"server process {pid} left running"
