"""The fleet host: Redis, two collectors (``headcount-collector``), two Envoy nodes
(the filter in fleet mode, 2 workers each) and a front Envoy balancing round-robin over the nodes,
in front of the demo app. Clients go to the front.

The collector is ``target/release/headcount-collector`` (``cargo build --release -p
headcount-collector``); Redis is Debian's ``redis-server``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from hosts import envoy as envoy_host
from helpers import wait_for
from hosts.process import Gateway, Server, StartContext, free_ports, launch, port_accepts, wait_ready

KIND = "fleet"
REPO = Path(__file__).resolve().parents[2]
COLLECTOR = REPO / "target" / "release" / "headcount-collector"
FLEET_TOKEN = "e2e-fleet-token-0123456789"
SECRET = "e2e-fleet-cookie-secret-0123"
STARTUP_TIMEOUT = 30.0


@dataclass
class Part:
    """A process of the fleet the tests may stop and start again (same command, port and folder)."""

    ctx: StartContext
    cmd: list[str]
    run_dir: Path
    log_name: str
    what: str
    ready_check: Any
    port: int = 0
    server: Server | None = None

    def start(self) -> Part:
        n = sum(1 for p in self.run_dir.glob(self.log_name + "*"))
        log = self.log_name if n == 0 else f"{self.log_name}.{n}"
        proc, log_path, log_file = launch(self.cmd, self.run_dir, log)
        self.server = Server(proc=proc, dir=self.run_dir, log_path=log_path, _log_file=log_file)
        self.ctx.track(self.server)
        if not wait_ready(self.server, self.ready_check, STARTUP_TIMEOUT, self.what):
            raise AssertionError(f"{self.what} exited; log tail:\n{self.server.log_tail()}")
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed."""
        if self.server and self.server.proc.poll() is None:
            os.killpg(self.server.proc.pid, signal.SIGKILL)
            self.server.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), waiting for the exit."""
        if self.server:
            self.server.stop()


@dataclass
class FleetGateway(Gateway):
    """The front Envoy; ``nodes`` (EnvoyGateway, each reachable on its own), ``collectors``,
    ``redis`` (one, or a Cluster's primaries) are the fleet behind it."""

    nodes: list[Any] = field(default_factory=list)
    node_parts: list[Part] = field(default_factory=list)
    collectors: list[Part] = field(default_factory=list)
    redis: list[Part] = field(default_factory=list)

    def ready(self) -> bool:
        return port_accepts(self.port)

    @property
    def node_count(self) -> int:
        return max(1, len(self.nodes))

    def revoked_values(self) -> list[int]:
        """Each node's count of revoked values it enforces (its Envoy gauge)."""
        out = []
        for node in self.nodes:
            text = requests.get(node.admin_url + "/stats?filter=headcount_fleet_revoked_values", timeout=5).text
            m = re.search(r"headcount_fleet_revoked_values[^:]*: (\d+)", text)
            out.append(int(m.group(1)) if m else 0)
        return out

    def revocation_reached_every_node(self) -> None:
        """The node that revoked holds the revoked values at once; the others learn them with their
        next batch's answer (or their interval's heartbeat). Every shard holds every revoked value,
        so once every node holds as many as the most informed one, each enforces them all."""
        counts = wait_for(self.revoked_values, lambda c: min(c) > 0 and len(set(c)) == 1, timeout=10)
        assert min(counts) > 0 and len(set(counts)) == 1, f"revoked values per node: {counts}"

    def node_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.nodes[i].port}"

    def restart_node(self, i: int) -> None:
        """Stops Envoy node ``i`` (SIGTERM) and starts it again with the same config and ports."""
        part = self.node_parts[i]
        part.stop()
        part.start()
        assert part.server is not None
        self.nodes[i].proc, self.nodes[i].log_path = part.server.proc, part.server.log_path


def _cluster_port() -> int:
    """A free port for a Cluster node: at most 55535, its bus port (10,000 higher) free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        if not port_accepts(port) and not port_accepts(port + 10000) and _bindable(port) and _bindable(port + 10000):
            return port
    raise AssertionError("no free port pair for a Redis Cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _redis(ctx: StartContext, appendonly: bool, cluster: bool = False) -> Part:
    if not shutil.which("redis-server"):
        pytest.fail("redis-server missing: ./dev test installs it", pytrace=False)
    port = _cluster_port() if cluster else free_ports(1)[0]
    run_dir = ctx.run_dir("redis")
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
           "yes" if appendonly else "no", "--dir", str(run_dir)]
    if cluster:
        cmd += ["--cluster-enabled", "yes", "--cluster-config-file", str(run_dir / "nodes.conf")]
    return Part(ctx, cmd, run_dir, "redis.log", "redis-server", lambda: port_accepts(port), port).start()


def redis_cli(port: int, *args: str) -> str:
    """One redis-cli command against 127.0.0.1:port; its output."""
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=30,
                         check=True)
    return out.stdout.strip()


def _cluster(ctx: StartContext) -> list[Part]:
    """Three primaries, no replicas, every slot served."""
    primaries = [_redis(ctx, appendonly=False, cluster=True) for _ in range(3)]
    addrs = [f"127.0.0.1:{p.port}" for p in primaries]
    subprocess.run(["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                   check=True, capture_output=True, timeout=60)
    for p in primaries:
        wait_for(lambda p=p: redis_cli(p.port, "cluster", "info"), lambda out: "cluster_state:ok" in out, timeout=30)
    return primaries


def _collector(ctx: StartContext, store: str, config_path: Path) -> Part:
    if not COLLECTOR.is_file():
        pytest.fail(f"{COLLECTOR} missing: cargo build --release -p headcount-collector", pytrace=False)
    (port,) = free_ports(1)
    run_dir = ctx.run_dir("collector")
    cmd = [str(COLLECTOR), "--listen", f"127.0.0.1:{port}", "--store", store, "--config", str(config_path)]
    healthy = lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok  # noqa: E731
    return Part(ctx, cmd, run_dir, "collector.log", "headcount-collector", healthy, port).start()


def _collectors_cluster(name: str, collectors: list[int]) -> str:
    endpoints = "".join(
        f"""        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {p} }}
""" for p in collectors)
    # As the README's snippet: RANDOM picks (round-robin could pin a batch sent again to a dead
    # replica), and a replica that stops answering /healthz leaves the rotation within a second.
    return f"""  - name: {name}
    type: STATIC
    connect_timeout: 1s
    lb_policy: RANDOM
    health_checks:
    - timeout: 1s
      interval: 1s
      no_traffic_interval: 1s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: {{ path: /healthz }}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
{endpoints}"""


def _node_config(plugin_config: dict[str, Any], wasm: Path, listener: int, admin: int, app_port: int,
                 collectors: list[int]) -> str:
    """envoy/envoy.yaml (the demo's) with the filter in fleet mode and the ``collectors`` cluster."""
    text = envoy_host.render_envoy_config(plugin_config, wasm=wasm, listener_port=listener, admin_port=admin,
                                          app_port=app_port)
    return text.replace("  clusters:\n", "  clusters:\n" + _collectors_cluster("collectors", collectors), 1)


def _front_config(admin: int, fronts: list[tuple[int, list[int]]]) -> str:
    """The balancer: per (listener, node ports), a listener sending round-robin to those ports."""
    listeners, clusters = [], []
    for i, (listener, nodes) in enumerate(fronts):
        endpoints = [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                     for p in nodes]
        hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                        ".HttpConnectionManager",
               "stat_prefix": f"front_{i}", "use_remote_address": True, "max_request_headers_kb": 256,
               "route_config": {"virtual_hosts": [{"name": "nodes", "domains": ["*"], "routes": [
                   {"match": {"prefix": "/"}, "route": {"cluster": f"nodes_{i}"}}]}]},
               "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
        listeners.append({"name": f"front_{i}",
                          "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener}},
                          "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                          "typed_config": hcm}]}]})
        clusters.append({"name": f"nodes_{i}", "type": "STATIC", "connect_timeout": "2s", "lb_policy": "ROUND_ROBIN",
                         "load_assignment": {"cluster_name": f"nodes_{i}", "endpoints": [{"lb_endpoints": endpoints}]}})
    cfg = {"static_resources": {"listeners": listeners, "clusters": clusters},
           "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}}
    return json.dumps(cfg, indent=1)


def _live(admin: int) -> bool:
    return requests.get(f"http://127.0.0.1:{admin}/ready", timeout=1).text.strip() == "LIVE"


def _front(ctx: StartContext, fronts: list[tuple[int, list[int]]]) -> Server:
    (admin,) = free_ports(1)
    part, _ = _node(ctx, "front", _front_config(admin, fronts), (fronts[0][0], admin), 1, None)
    part.ready_check = lambda: all(port_accepts(listener) for listener, _ in fronts)
    part.start()
    assert part.server is not None
    return part.server


def _node(ctx: StartContext, name: str, text: str, ports: tuple[int, int], concurrency: int,
          cfg: Any) -> tuple[Part, Any]:
    run_dir = ctx.run_dir(name)
    path = run_dir / "envoy.yaml"
    path.write_text(text)
    cmd = [envoy_host.envoy_binary(), "-c", str(path), "--concurrency", str(concurrency), "--log-level", "info",
           "--component-log-level", "wasm:debug", "--disable-hot-restart"]
    listener, admin = ports
    gw = envoy_host.EnvoyGateway(proc=None, dir=run_dir, log_path=run_dir / "envoy.log", kind="envoy",
                                 port=listener, plugin_config=cfg, admin_port=admin, config_path=path)
    part = Part(ctx, cmd, run_dir, "envoy.log", f"Envoy {name}", gw.ready, listener)
    return part, gw


def start(ctx: StartContext, plugin_config: dict[str, Any] | str, concurrency: int = 2, app: Any = None,
          redis_cluster: bool = False, appendonly: bool = False, shards: int = 4) -> FleetGateway:
    """Redis (or a Cluster of 3 primaries), two collectors, two Envoy nodes in fleet mode and the
    round-robin front Envoy, in front of the demo app (or ``app``)."""
    cfg = json.loads(plugin_config) if isinstance(plugin_config, str) else dict(plugin_config)
    cfg.setdefault("cookie_hash_secret", SECRET)
    cfg["fleet"] = {"cluster": "collectors", "token": FLEET_TOKEN, "shards": shards}
    redis = _cluster(ctx) if redis_cluster else [_redis(ctx, appendonly)]
    store = ("redis+cluster://" + ",".join(f"127.0.0.1:{r.port}" for r in redis) if redis_cluster
             else f"redis://127.0.0.1:{redis[0].port}")
    config_path = ctx.tmp_path / "fleet-config.json"
    config_path.write_text(json.dumps(cfg))
    collectors = [_collector(ctx, store, config_path) for _ in range(2)]
    app_port = app.port if app else ctx.demo_app.port
    node_parts, nodes = [], []
    for i in range(2):
        listener, admin = free_ports(2)
        text = _node_config(cfg, envoy_host.wasm_path(), listener, admin, app_port, [c.port for c in collectors])
        part, gw = _node(ctx, f"node{i}-", text, (listener, admin), concurrency, cfg)
        part.start()
        gw.proc = part.server.proc  # type: ignore[union-attr]
        node_parts.append(part)
        nodes.append(gw)
    (listener,) = free_ports(1)
    server = _front(ctx, [(listener, [n.port for n in nodes])])
    return FleetGateway(proc=server.proc, dir=server.dir, log_path=server.log_path, _log_file=server._log_file,
                        kind=KIND, port=listener, plugin_config=plugin_config, nodes=nodes, node_parts=node_parts,
                        collectors=collectors, redis=redis)


def start_apps(ctx: StartContext, configs: dict[str, dict[str, Any]], concurrency: int = 2,
               app: Any = None) -> dict[str, FleetGateway]:
    """Several apps (``configs``: app name -> plugin config) behind one fleet: one Redis; per app
    a collector whose config names the app (it serves that app alone) and a fleet token of its own;
    two Envoy nodes, each a listener per app (the app's filter named after it, its own collectors
    cluster); the front, a listener per app balancing over the nodes' listeners of that app."""
    redis = _redis(ctx, appendonly=False)
    cfgs, collectors = {}, {}
    for name, config in configs.items():
        cfg = dict(config, app=name, cookie_hash_secret=config.get("cookie_hash_secret", SECRET))
        cfg["fleet"] = {"cluster": f"collectors-{name}", "token": f"{FLEET_TOKEN}-{name}", "shards": 4}
        path = ctx.tmp_path / f"fleet-config-{name}.json"
        path.write_text(json.dumps(cfg))
        cfgs[name], collectors[name] = cfg, _collector(ctx, f"redis://127.0.0.1:{redis.port}", path)
    app_port = app.port if app else ctx.demo_app.port
    node_ports: list[list[int]] = []
    for i in range(2):
        *ports, admin = free_ports(len(cfgs) + 1)
        text = envoy_host.render_apps_config(cfgs, wasm=envoy_host.wasm_path(), ports=ports, admin_port=admin,
                                             app_port=app_port)
        extra = "".join(_collectors_cluster(f"collectors-{n}", [c.port]) for n, c in collectors.items())
        text = text.replace("  clusters:\n", "  clusters:\n" + extra, 1)
        part, _ = _node(ctx, f"node{i}-", text, (ports[0], admin), concurrency, None)
        part.ready_check = lambda ports=ports, admin=admin: _live(admin) and all(port_accepts(p) for p in ports)
        part.start()
        node_ports.append(ports)
    fronts = [(listener, [ports[j] for ports in node_ports])
              for j, listener in enumerate(free_ports(len(cfgs)))]
    server = _front(ctx, fronts)
    return {name: FleetGateway(proc=server.proc, dir=server.dir, log_path=server.log_path,
                               _log_file=server._log_file, kind=KIND, port=listener, plugin_config=cfgs[name],
                               redis=[redis])
            for name, (listener, _) in zip(cfgs, fronts)}
