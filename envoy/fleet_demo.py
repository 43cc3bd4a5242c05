"""The fleet demo (`./dev demo --fleet`, i.e. ``run_demo.py --fleet``): one exact count over many
Envoy nodes.

Everything runs on 127.0.0.1, on free ports:

    client -> front Envoy (round-robin) -> node 0 / node 1 (Envoy, the filter in fleet mode)
                                                  -> demo app
                                                  -> collectors (headcount-collector) -> Redis

Redis runs with ``appendonly yes`` in a temporary folder, which also holds every process's log
and the generated configs. This process stays in the foreground as the parent of all of them
and waits; Ctrl-C (or SIGTERM) stops them by PID, front first, Redis and the app last. If one
exits, the rest are stopped too.

``--check`` starts the fleet, logs one user in through the front, reads the stats from the node
that did not serve the login, prints the result and exits (0 when that node counts the user).

Needs the filter (``cargo build --release --target wasm32-wasip1 -p headcount``), the collector
(``cargo build --release -p headcount-collector``) and ``redis-server``; ``./dev demo --fleet``
builds and installs them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import run_demo
from run_demo import REPO, Stop, envoy_binary, http_ok, stop, wait_until

COLLECTOR = REPO / "target" / "release" / "headcount-collector"
FLEET_CLUSTER = "collectors"
CHECK_USER = "student1"


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen
    log: Path
    log_file: IO[bytes]

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(f"  | {line}" for line in text.splitlines()[-lines:])


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (bound at once, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def plugin_config() -> dict:
    """The demo's plugin configuration (envoy/envoy.yaml) in fleet mode: the collectors' cluster,
    a fleet token and a cookie hash secret fresh for this run."""
    text = run_demo.CONFIG.read_text()
    m = re.search(r"value: \|\n\s+(\{.*\})\n", text)
    if not m:
        raise SystemExit(f"{run_demo.CONFIG}: the demo's plugin configuration was not found")
    cfg = json.loads(m.group(1))
    cfg["cookie_hash_secret"] = secrets.token_urlsafe(24)
    cfg["fleet"] = {"cluster": FLEET_CLUSTER, "token": secrets.token_urlsafe(24), "timeout_ms": 1000,
                    "shards": 16}
    return cfg


def node_config(cfg: dict, *, listener: int, admin: int, app: int, collectors: list[int]) -> str:
    """envoy/envoy.yaml for one node: its ports, the .wasm by absolute path, the fleet plugin
    configuration, and a STATIC cluster `collectors` listing every collector."""
    text = run_demo.CONFIG.read_text()
    # A fleet node needs no main-thread singleton: the collectors sweep and count.
    start, end = text.index("bootstrap_extensions:\n"), text.index("static_resources:\n")
    text = text[:start] + text[end:]
    replacements = [
        (r"port_value: 10000\b", f"port_value: {listener}"),
        (r"port_value: 9901\b", f"port_value: {admin}"),
        (r"port_value: 5000\b", f"port_value: {app}"),
        (r"filename: target/wasm32-wasip1/release/headcount\.wasm", f"filename: {json.dumps(str(run_demo.WASM))}"),
        # A JSON string literal is a valid YAML double-quoted scalar.
        (r"value: \|\n\s+\{.*\}\n", f"value: {json.dumps(json.dumps(cfg))}\n"),
    ]
    for pattern, repl in replacements:
        text, n = re.subn(pattern, lambda _m, r=repl: r, text)
        if n != 1:
            raise SystemExit(f"{run_demo.CONFIG} changed shape: {pattern!r} matched {n} times")
    endpoints = "".join(f"""        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}
""" for port in collectors)
    cluster = f"""  clusters:
  - name: {FLEET_CLUSTER}
    type: STATIC
    connect_timeout: 1s
    lb_policy: RANDOM
    health_checks:
    - timeout: 1s
      interval: 2s
      no_traffic_interval: 2s
      unhealthy_threshold: 2
      healthy_threshold: 1
      http_health_check: {{ path: /healthz }}
    load_assignment:
      cluster_name: {FLEET_CLUSTER}
      endpoints:
      - lb_endpoints:
{endpoints}"""
    if text.count("  clusters:\n") != 1:
        raise SystemExit(f"{run_demo.CONFIG} changed shape: no single `clusters:`")
    return text.replace("  clusters:\n", cluster, 1)


def front_config(*, listener: int, admin: int, nodes: list[int]) -> str:
    """A plain Envoy (no filter) balancing round-robin over the nodes."""
    endpoints = "".join(f"""        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}
""" for port in nodes)
    return f"""static_resources:
  listeners:
  - name: front
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listener} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          use_remote_address: true
          max_request_headers_kb: 256
          route_config:
            virtual_hosts:
            - name: nodes
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: nodes }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: nodes
    type: STATIC
    connect_timeout: 2s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: nodes
      endpoints:
      - lb_endpoints:
{endpoints}admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
"""


def port_open(port: int) -> bool:
    return run_demo.port_in_use(port)


def request_json(url: str, *, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"error": text}


def downstream_requests(admin: int) -> int:
    """The requests a node's listener has taken so far (its Envoy admin stats)."""
    url = f"http://127.0.0.1:{admin}/stats?filter=^http%5C.ingress_http%5C.downstream_rq_total$"
    with urllib.request.urlopen(url, timeout=5) as r:
        m = re.search(r"downstream_rq_total: (\d+)", r.read().decode())
    return int(m.group(1)) if m else 0


class Fleet:
    def __init__(self, run_dir: Path, log_level: str):
        self.run_dir = run_dir
        self.log_level = log_level
        self.procs: list[Proc] = []

    def launch(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
        folder = self.run_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / f"{name}.log"
        log_file = open(log, "wb")
        proc = subprocess.Popen(cmd, cwd=folder, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, env=env)
        p = Proc(name, proc, log, log_file)
        self.procs.append(p)
        return p

    def wait(self, check, what: str, timeout: float = 60) -> None:
        try:
            wait_until(check, {p.name: p.proc for p in self.procs}, what, timeout)
        except SystemExit as e:
            raise SystemExit(f"{e}\n{self.tails()}") from None

    def tails(self) -> str:
        return "\n".join(f"{p.name} ({p.log}):\n{p.tail()}" for p in self.procs
                         if p.proc.poll() is not None or p.log.stat().st_size)

    def envoy(self, name: str, config: str, concurrency: int, listener: int, admin: int) -> Proc:
        path = self.run_dir / name / "envoy.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config)
        p = self.launch(name, [envoy_binary(), "-c", str(path), "--concurrency", str(concurrency),
                               "--log-level", self.log_level, "--component-log-level", "wasm:info",
                               "--disable-hot-restart"])
        self.wait(lambda: http_ok(f"http://127.0.0.1:{admin}/ready", "LIVE") and port_open(listener),
                  f"Envoy {name}")
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):  # front, nodes, collectors, Redis, app
            stop(p.proc, p.name)
            p.log_file.close()


def check(front: int, nodes: list[tuple[int, int]], token: str, prefix: str) -> bool:
    """Logs one user in through the front and reads the stats from the node that did not serve
    the login; prints what it saw. True when that node counts the user."""
    before = [downstream_requests(admin) for _, admin in nodes]
    status, body = request_json(f"http://127.0.0.1:{front}/api/v1/auth/login",
                                body={"username": CHECK_USER, "password": "password"})
    if status != 200:
        print(f"check: login of {CHECK_USER} through the front answered {status}: {body}", flush=True)
        return False
    after = [downstream_requests(admin) for _, admin in nodes]
    served = [i for i, (a, b) in enumerate(zip(before, after)) if b > a]
    if len(served) != 1:
        print(f"check: cannot tell which node served the login (request counters moved on nodes {served})",
              flush=True)
        return False
    login_node = served[0]
    read_node = (login_node + 1) % len(nodes)
    print(f"check: logged {CHECK_USER} in through the front (http://127.0.0.1:{front}); "
          f"node {login_node} served the login", flush=True)
    url = f"http://127.0.0.1:{nodes[read_node][0]}{prefix}/stats"
    started = time.monotonic()
    deadline = started + 10
    while True:
        status, stats = request_json(url, token=token)
        users = sorted(s.get("username", "") for s in stats.get("sessions", []))
        if (status == 200 and stats.get("active_users") == 1) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    waited_ms = round((time.monotonic() - started) * 1000)
    ok = status == 200 and stats.get("active_users") == 1 and users == [CHECK_USER]
    print(f"check: node {read_node} ({url}) answered {status} after {waited_ms} ms: "
          f"active_users={stats.get('active_users')} active_sessions={stats.get('active_sessions')} "
          f"users={users}", flush=True)
    result = {"passed": ok, "user": CHECK_USER, "login_node": login_node, "read_node": read_node,
              "status": status, "active_users": stats.get("active_users"),
              "active_sessions": stats.get("active_sessions"), "users": users}
    print(f"check result: {json.dumps(result)}", flush=True)
    return ok


def main(*, check_only: bool, collectors: int, log_level: str) -> int:
    missing = [f"{path.relative_to(REPO)} (build it with: {how})" for path, how in (
        (run_demo.WASM, "cargo build --release --target wasm32-wasip1 -p headcount"),
        (COLLECTOR, "cargo build --release -p headcount-collector")) if not path.is_file()]
    if not shutil.which("redis-server"):
        missing.append("redis-server (Debian: apt-get install redis-server; ./dev demo --fleet installs it)")
    if missing:
        print("missing: " + "; ".join(missing), file=sys.stderr)
        return 1

    def on_signal(signum, _frame):
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    run_dir = Path(tempfile.mkdtemp(prefix="headcount-fleet-"))
    fleet = Fleet(run_dir, log_level)
    code = 0
    keep_logs = False
    try:
        cfg = plugin_config()
        token = cfg["admin_token"]
        prefix = cfg.get("route_prefix", "/__headcount")
        config_file = run_dir / "headcount.json"
        config_file.write_text(json.dumps(cfg, indent=1) + "\n")

        app_port, redis_port, *rest = free_ports(2 + collectors + 6)
        collector_ports, rest = rest[:collectors], rest[collectors:]
        node_ports = [(rest[0], rest[1]), (rest[2], rest[3])]
        front_port, front_admin = rest[4], rest[5]

        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("DEMO_SECRET_KEY", secrets.token_hex(32))
        fleet.launch("app", [sys.executable, str(run_demo.APP), "--port", str(app_port)], env=env)
        redis_dir = run_dir / "redis"
        fleet.launch("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                               "--dir", str(redis_dir), "--appendonly", "yes", "--save", ""])
        fleet.wait(lambda: http_ok(f"http://127.0.0.1:{app_port}/healthz"), "the demo app")
        fleet.wait(lambda: port_open(redis_port), "redis-server")
        for i, port in enumerate(collector_ports):
            fleet.launch(f"collector{i}", [str(COLLECTOR), "--listen", f"127.0.0.1:{port}",
                                           "--store", f"redis://127.0.0.1:{redis_port}",
                                           "--config", str(config_file)])
        for port in collector_ports:
            fleet.wait(lambda p=port: http_ok(f"http://127.0.0.1:{p}/healthz"), "headcount-collector")
        for i, (listener, admin) in enumerate(node_ports):
            fleet.envoy(f"node{i}", node_config(cfg, listener=listener, admin=admin, app=app_port,
                                                collectors=collector_ports), 2, listener, admin)
        fleet.envoy("front", front_config(listener=front_port, admin=front_admin,
                                          nodes=[listener for listener, _ in node_ports]), 1,
                    front_port, front_admin)

        if check_only:
            if not check(front_port, node_ports, token, prefix):
                keep_logs = True
                code = 1
                print(f"check failed; logs kept in {run_dir}\n{fleet.tails()}", file=sys.stderr)
            else:
                print("check passed", flush=True)
            return code

        base = f"http://127.0.0.1:{front_port}"
        nodes_text = "\n".join(
            f"  Node {i}:       http://127.0.0.1:{listener}/  (Envoy admin http://127.0.0.1:{admin}/)"
            for i, (listener, admin) in enumerate(node_ports))
        healthz = ", ".join(f"http://127.0.0.1:{p}/healthz" for p in collector_ports)
        print(f"""
Headcount fleet demo is running: a front Envoy balancing round-robin over two Envoy nodes in
fleet mode, which share one count through {collectors} collector(s) and Redis, in front of the demo app.

  App (front):  {base}/
{nodes_text}
  Dashboard:    {base}{prefix}/  (every node shows the same count)
  Stats:        curl -s -H 'Authorization: Bearer {token}' {base}{prefix}/stats
  Admin token:  {token}
  Collectors:   {healthz}
  Redis:        redis://127.0.0.1:{redis_port}  (appendonly yes, in {redis_dir})
  Config, logs: {run_dir}/  (removed on exit)

  Users: admin_user (admin), teacher1 (teacher), student1, student2, student3 (students)
  Password for all: password

Press Ctrl-C to stop.
""", flush=True)
        while True:
            for p in fleet.procs:
                if p.proc.poll() is not None:
                    print(f"{p.name} exited with {p.proc.returncode}; stopping the fleet demo\n{p.tail()}",
                          file=sys.stderr)
                    code = p.proc.returncode or 1
                    keep_logs = True
                    raise Stop(p.name)
            time.sleep(0.5)
    except Stop:
        pass
    except SystemExit as e:
        print(e, file=sys.stderr)
        keep_logs = True
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        fleet.stop_all()
        if keep_logs:
            print(f"logs kept in {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        print("fleet demo stopped", flush=True)
    return code
