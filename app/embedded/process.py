"""Child processes for `rearview up` and the test suite: start, wait until healthy, stop by pid."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from core.exceptions import RearviewError


class ServiceStartError(RearviewError):
    """A child service exited or did not become healthy in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on *host* right now, below the kernel's ephemeral range when there
    is room: the ports the OS hands to outgoing connections (every Kafka and HTTP client opens
    some) could otherwise take it between this check and the service's bind."""
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randint(_FIRST_PORT, low - 1) if low > _FIRST_PORT else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ServiceStartError(f"no free port found on {host}")


_FIRST_PORT = 10_000


def _ephemeral_low() -> int:
    """Where the kernel's range for outgoing connections begins (Linux; 0 elsewhere: any port)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def port_taken(host: str, port: int) -> bool:
    """Whether something listens on (*host*, *port*), even a socket that shares its port.
    Connections of an earlier listener, closing (TIME_WAIT), do not count: a server binds over
    them with SO_REUSEADDR, as this check does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def tcp_ready(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def http_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return 200 <= resp.status < 300
        except (urllib.error.URLError, OSError, ValueError):
            return False

    return check


def python_module(module: str, *args: str) -> list[str]:
    """argv running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of *pid* and its descendants in MB, from /proc (0 where it is not
    readable): the embedded broker is a wrapper process around Tansu."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total_kb, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total_kb += _rss_kb(p)
        todo.extend(children.get(p, []))
    return total_kb / 1024


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class ChildProcess:
    """One child service. Started in its own process group so a stop reaches its children too."""

    name: str
    argv: Sequence[str]
    ready: Callable[[], bool]
    env: dict[str, str] | None = None
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        env = {**os.environ, **(self.env or {})}
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(self.argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log if self._log else None,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise ServiceStartError(
                    f"{self.name} exited with code {code} while starting{self._log_hint()}"
                )
            if self.ready():
                return
            time.sleep(0.1)
        raise ServiceStartError(
            f"{self.name} did not become healthy within {timeout_s:.0f}s{self._log_hint()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM the process group, then SIGKILL it after *timeout_s*. Returns the exit code."""
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is None:
                self._signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.proc.wait(5)
            # Reap anything the child left in its group.
            self._signal(signal.SIGKILL)
            return self.proc.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def kill(self) -> None:
        """SIGKILL, no chance to clean up: for crash tests."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait(5)

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _log_hint(self) -> str:
        if self.log_path is None:
            return ""
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-15:]
        except OSError:
            return f" (log: {self.log_path})"
        return f" (log: {self.log_path})\n" + "\n".join(tail)
