"""Fixtures for the Worker end-to-end tests: the demo app and real `wrangler dev` processes.

* ``worker_build``: runs workers/build.sh once per session (installs missing tools into
  <repo>/.tools, then worker-build; quick when nothing changed). ``HEADCOUNT_WORKER_SKIP_BUILD=1``
  uses workers/build/ as it is; a missing build is a failure, never a skip.
* ``demo_app``: envoy/demo/app.py on a free port (one per test session).
* ``start_worker(plugin_config, state_dir=None, shards=1, ...)``: ``wrangler dev`` serving the built
  Worker (the real workerd runtime) in front of the demo app, on free 127.0.0.1 ports, with its
  Durable Object state persisted in ``state_dir`` (a fresh tmp dir by default). The wrangler
  config is workers/wrangler.toml without its [build] step (generated per run, like envoy/e2e
  renders envoy.yaml); the vars are passed as ``--var NAME:VALUE``. Stopped at teardown.
* ``worker``: ``start_worker(helpers.PLUGIN_CONFIG)``.

Wrangler is kept off the network (WRANGLER_SEND_METRICS=false, CLOUDFLARE_CF_FETCH_ENABLED=false,
WRANGLER_HIDE_BANNER=true, XDG_CONFIG_HOME=workers/.xdg). Each run's config, command line and log are kept in
workers/e2e/artifacts/<test>/ (git-ignored) and a failing test's report ends with the log tail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

HERE = Path(__file__).resolve().parent
WORKERS = HERE.parent
REPO = WORKERS.parent
ARTIFACTS = HERE / "artifacts"
WRANGLER = WORKERS / "node_modules" / ".bin" / "wrangler"
BUILD_DIR = WORKERS / "build"
STARTUP_TIMEOUT = 60.0

sys.path.insert(0, str(HERE))
# The demo app process, the HTTP helpers and the shared test bodies are the Envoy suite's.
sys.path.insert(0, str(REPO / "envoy" / "e2e"))
import helpers  # noqa: E402
from demo_process import DemoApp, free_port, running_demo_app  # noqa: E402

_WORKERS_STARTED = pytest.StashKey[list]()
_ARTIFACT_DIR = pytest.StashKey[Path]()


def wrangler_env() -> dict[str, str]:
    xdg = WORKERS / ".xdg"
    xdg.mkdir(exist_ok=True)
    # WRANGLER_HIDE_BANNER also skips the banner's npm update check.
    return dict(os.environ, WRANGLER_SEND_METRICS="false", CLOUDFLARE_CF_FETCH_ENABLED="false",
                WRANGLER_HIDE_BANNER="true", XDG_CONFIG_HOME=str(xdg), NO_COLOR="1", FORCE_COLOR="0")


def render_wrangler_config(path: Path) -> None:
    """workers/wrangler.toml without the [build] table, `main` pointing at the built Worker."""
    text = (WORKERS / "wrangler.toml").read_text()
    text, n = re.subn(r"^\[build\]\n(?:[^\[\n][^\n]*\n|\n)*", "", text, flags=re.M)
    assert n == 1, "workers/wrangler.toml changed shape: no [build] table"
    text, n = re.subn(r'^main = "build/index.js"$', f"main = {json.dumps(str(BUILD_DIR / 'index.js'))}",
                      text, flags=re.M)
    assert n == 1, "workers/wrangler.toml changed shape: main"
    path.write_text(text)


@dataclass
class WorkerProcess:
    proc: subprocess.Popen
    dir: Path
    log_path: Path
    port: int
    state_dir: Path
    plugin_config: Any
    started_in: float = 0.0
    _log_file: Any = field(repr=False, default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

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
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        # workerd may outlive wrangler for a moment: make sure the group is gone.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()
        return self.proc.returncode


@pytest.fixture(autouse=True)
def _artifact_dir(request: pytest.FixtureRequest) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.replace("::", "__")).strip("_")
    path = ARTIFACTS / name[:150]
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    request.node.stash[_ARTIFACT_DIR] = path
    return path


@pytest.fixture(scope="session")
def worker_build() -> Path:
    if not WRANGLER.exists():
        pytest.fail(f"{WRANGLER} missing: run `npm ci` in workers/", pytrace=False)
    if os.environ.get("HEADCOUNT_WORKER_SKIP_BUILD") != "1":
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        log = ARTIFACTS / "build.log"
        t0 = time.monotonic()
        with open(log, "wb") as f:
            rc = subprocess.call([str(WORKERS / "build.sh")], cwd=WORKERS, stdout=f,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if rc != 0:
            pytest.fail(f"workers/build.sh failed ({rc}):\n{log.read_text()[-4000:]}", pytrace=False)
        print(f"\n[worker build] {time.monotonic() - t0:.1f}s")
    for name in ("index.js", "index_bg.wasm"):
        if not (BUILD_DIR / name).is_file():
            pytest.fail(f"{BUILD_DIR / name} missing: run workers/build.sh", pytrace=False)
    return BUILD_DIR


@pytest.fixture(scope="session")
def demo_app() -> Iterator[DemoApp]:
    """The demo Flask app on a free port (.url, .port, .log_text())."""
    with running_demo_app(ARTIFACTS) as app:
        yield app


def _wait_ready(wp: WorkerProcess, timeout: float = STARTUP_TIMEOUT) -> None:
    """Until the Worker itself answers (a 404 from its own route space: no origin, no state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wp.proc.poll() is not None:
            raise AssertionError(f"wrangler dev exited with {wp.proc.returncode}; log tail:\n{wp.log_tail()}")
        try:
            r = requests.get(wp.url + "/__headcount/ready", timeout=2)
            if r.status_code in (404, 500):
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"wrangler dev not ready after {timeout}s; log tail:\n{wp.log_tail()}")


@pytest.fixture
def start_worker(request: pytest.FixtureRequest, worker_build: Path, demo_app: DemoApp, tmp_path: Path):
    """Factory: start_worker(plugin_config, state_dir=None, shards=1, debug=True, origin=None)
    -> WorkerProcess (ready). ``plugin_config`` is a dict (JSON-encoded) or a raw string."""
    started: list[WorkerProcess] = []
    test_dir = request.node.stash[_ARTIFACT_DIR]

    def _start(plugin_config: dict[str, Any] | str, state_dir: Path | None = None, shards: int = 1,
               debug: bool = True, origin: str | None = None) -> WorkerProcess:
        run_dir = test_dir / f"worker{len(started)}"
        run_dir.mkdir(parents=True, exist_ok=True)
        state = state_dir or tmp_path / f"state{len(started)}"
        state.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / "wrangler.toml"
        render_wrangler_config(config_path)
        value = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
        port, inspector = free_port(), free_port()
        cmd = [str(WRANGLER), "dev", "--config", str(config_path), "--ip", "127.0.0.1",
               "--port", str(port), "--inspector-port", str(inspector), "--persist-to", str(state),
               "--show-interactive-dev-session=false", "--log-level", "info",
               "--var", f"ORIGIN:{origin or demo_app.url}",
               "--var", f"HEADCOUNT_CONFIG:{value}",
               "--var", f"HEADCOUNT_SHARDS:{shards}",
               "--var", f"HEADCOUNT_DEBUG:{1 if debug else 0}"]
        (run_dir / "cmdline").write_text(" ".join(cmd) + "\n")
        log_path = run_dir / "wrangler.log"
        log_file = open(log_path, "wb")
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=run_dir, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, env=wrangler_env(), start_new_session=True)
        wp = WorkerProcess(proc=proc, dir=run_dir, log_path=log_path, port=port, state_dir=state,
                           plugin_config=plugin_config, _log_file=log_file)
        started.append(wp)
        request.node.stash.setdefault(_WORKERS_STARTED, []).append(wp)
        _wait_ready(wp)
        wp.started_in = time.monotonic() - t0
        return wp

    try:
        yield _start
    finally:
        for wp in started:
            wp.stop()


@pytest.fixture
def worker(start_worker) -> WorkerProcess:
    """A Worker with the standard test configuration (helpers.PLUGIN_CONFIG)."""
    return start_worker(helpers.PLUGIN_CONFIG)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    if report.failed:
        for wp in item.stash.get(_WORKERS_STARTED, []):
            report.sections.append((f"wrangler log tail ({wp.log_path})", wp.log_tail(80)))
    return report
