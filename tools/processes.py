"""Child server processes of the dev stack: started on loopback, stopped cleanly, never leaked.

Each child gets ``PR_SET_PDEATHSIG`` so that even a ``kill -9`` of paybridge takes its servers
with it, and a session of its own so that a terminal's Ctrl-C reaches paybridge only, which
then stops the children in order (a clean stop is what makes the broker save its data).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from schemas.errors import StackError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def find_binary(name: str) -> str:
    """A server binary installed with paybridge: next to this Python first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StackError(
            f"{name} is not installed; it comes with paybridge (pip install paybridge)"
        )
    return found


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One child server, its output captured in ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        log.debug("started %s (pid %s): %s", self.name, self.process.pid, " ".join(self.argv))

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(line for line in text.splitlines()[-lines:] if "GLIBC_2.39" not in line)

    async def wait_for_port(self, host: str, port: int, *, timeout: float = 60.0) -> None:
        """Wait until the server accepts connections; fail with its log if it exits first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.process is not None and self.process.returncode is not None:
                raise StackError(
                    f"{self.name} exited with code {self.process.returncode}:\n{self.tail()}"
                )
            if port_in_use(host, port):
                return
            await asyncio.sleep(0.1)
        raise StackError(f"{self.name} did not listen on {host}:{port} within {timeout:.0f}s")

    async def stop(self, *, timeout: float = 15.0) -> None:
        """SIGINT (a clean stop), then SIGKILL if it does not exit within ``timeout``."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            log.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
