"""Process handling shared by every host starter and the demo app: free ports, start with the
output in a log file, wait for readiness, stop by PID (the whole process group), log tails."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free 127.0.0.1 ports."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Server:
    """A process started by the tests: its log file, and how to stop it (by PID, whole group)."""

    proc: subprocess.Popen
    dir: Path
    log_path: Path
    _log_file: Any = field(repr=False, default=None)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_log(self, pattern: str, timeout: float = 5.0) -> re.Match | None:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.log_text())
            if m or time.monotonic() >= deadline:
                return m
            time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM to the process group, SIGKILL if it lingers; children (workerd) go with it."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        try:  # a child may outlive its parent for a moment: make sure the group is gone
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()
        return self.proc.returncode


def launch(cmd: list[str], run_dir: Path, log_name: str, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> tuple[subprocess.Popen, Path, Any]:
    """Starts ``cmd`` in its own session with stdout+stderr in ``run_dir/log_name``; the command
    line is kept in ``run_dir/cmdline``. Returns (process, log path, open log file)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "cmdline").write_text(" ".join(cmd) + "\n")
    log_path = run_dir / log_name
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=cwd or run_dir, stdin=subprocess.DEVNULL, stdout=log_file,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, log_path, log_file


def wait_ready(server: Server, ready: Callable[[], bool], timeout: float, what: str) -> bool:
    """Polls ``ready()`` (exceptions count as not yet) until it holds: True. False if the process
    exited first; an AssertionError with the log tail when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        try:
            if ready():
                return True
        except OSError:  # requests' exceptions are OSErrors too
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what} not ready after {timeout}s; log tail:\n{server.log_tail()}")


@dataclass
class Gateway(Server):
    """A host of the plugin in front of the demo app. ``kind`` names the host ("envoy", "worker");
    ``url`` is where clients go; ``port`` is that URL's port (for raw-socket tests)."""

    kind: str = ""
    port: int = 0
    plugin_config: Any = None
    # Host details the behaviour tests read instead of naming the host:
    debug: bool = False  # the stats response carries x-headcount-debug (stored rows, DO requests)
    flushes_on_read: bool = False  # the stats route writes buffered activity before it answers
    host: str = "127.0.0.1"  # the URL's host name (a gateway telling apps apart by name uses others)

    @property
    def node_count(self) -> int:
        """Nodes that each keep their own per-node allowances (whoami's lookups_per_second)."""
        return 1

    def revocation_reached_every_node(self) -> None:
        """Returns once a revocation answered 200 is enforced wherever a request may go. One node
        (Envoy, the Worker's isolate) enforces it at once; a fleet waits for its other nodes."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class StartContext:
    """What a host starter gets from the ``start_gateway`` fixture: a fresh run folder in the test's
    artifacts, the demo app, a tmp dir, and ``track`` (stopped at teardown, log tail on failure)."""

    artifacts: Path
    demo_app: Any
    tmp_path: Path
    track: Callable[[Server], None]
    count: int = 0

    def run_dir(self, name: str) -> Path:
        self.count += 1
        path = self.artifacts / f"{name}{self.count - 1}"
        path.mkdir(parents=True, exist_ok=True)
        return path
