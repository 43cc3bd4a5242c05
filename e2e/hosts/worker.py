"""The Worker host: ``wrangler dev`` serving the built Worker (the real workerd runtime) in front of
the demo app, with its Durable Object state persisted in ``state_dir`` (a fresh tmp dir by default).

The wrangler config is workers/wrangler.toml without its [build] step (generated per run, like the
Envoy host renders envoy.yaml); the vars are passed as ``--var NAME:VALUE``. Wrangler is kept off
the network (WRANGLER_SEND_METRICS=false, CLOUDFLARE_CF_FETCH_ENABLED=false,
WRANGLER_HIDE_BANNER=true, XDG_CONFIG_HOME=workers/.xdg).

The build: ``built()`` runs workers/build.sh once per session (installs missing tools into
<repo>/.tools, then worker-build; quick when nothing changed); ``HEADCOUNT_WORKER_SKIP_BUILD=1``
uses workers/build/ as it is. A missing build is a failure, never a skip.

Knobs of ``start``: ``state_dir``, ``shards`` (1), ``debug`` (True: the stats response carries
x-headcount-debug), ``origin`` (default: the demo app's URL) or ``app`` (a started app, real_apps.py).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from hosts.process import Gateway, StartContext, free_ports, launch, wait_ready

KIND = "worker"
REPO = Path(__file__).resolve().parents[2]
WORKERS = REPO / "workers"
WRANGLER = WORKERS / "node_modules" / ".bin" / "wrangler"
BUILD_DIR = WORKERS / "build"
STARTUP_TIMEOUT = 60.0


@functools.cache
def built(artifacts: Path) -> Path:
    if not WRANGLER.exists():
        pytest.fail(f"{WRANGLER} missing: run `npm ci` in workers/", pytrace=False)
    if os.environ.get("HEADCOUNT_WORKER_SKIP_BUILD") != "1":
        artifacts.mkdir(parents=True, exist_ok=True)
        log = artifacts / "worker-build.log"
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
class WorkerGateway(Gateway):
    state_dir: Path | None = None
    shards: int = 1
    flushes_on_read: bool = True
    started_in: float = 0.0

    def ready(self) -> bool:
        """The Worker itself answers (a 404 from its own route space: no origin, no state)."""
        return requests.get(self.url + "/__headcount/ready", timeout=2).status_code in (404, 500)


def start(ctx: StartContext, plugin_config: dict[str, Any] | str, state_dir: Path | None = None,
          shards: int = 1, debug: bool = True, origin: str | None = None, app: Any = None) -> WorkerGateway:
    """``plugin_config`` is a dict (JSON-encoded) or a raw string; returns once the Worker answers.
    ``app``: a started app (see real_apps.py) to proxy to instead of the demo app."""
    origin = app.url if app else origin
    built(ctx.artifacts.parent)
    run_dir = ctx.run_dir("worker")
    state = state_dir or ctx.tmp_path / f"state-{run_dir.name}"
    state.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "wrangler.toml"
    render_wrangler_config(config_path)
    value = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
    port, inspector = free_ports(2)
    cmd = [str(WRANGLER), "dev", "--config", str(config_path), "--ip", "127.0.0.1",
           "--port", str(port), "--inspector-port", str(inspector), "--persist-to", str(state),
           "--show-interactive-dev-session=false", "--log-level", "info",
           "--var", f"ORIGIN:{origin or ctx.demo_app.url}",
           "--var", f"HEADCOUNT_CONFIG:{value}",
           "--var", f"HEADCOUNT_SHARDS:{shards}",
           "--var", f"HEADCOUNT_DEBUG:{1 if debug else 0}"]
    t0 = time.monotonic()
    proc, log_path, log_file = launch(cmd, run_dir, "wrangler.log", env=wrangler_env())
    gw = WorkerGateway(proc=proc, dir=run_dir, log_path=log_path, _log_file=log_file, kind=KIND, port=port,
                       plugin_config=plugin_config, state_dir=state, shards=shards, debug=debug)
    ctx.track(gw)
    if not wait_ready(gw, gw.ready, STARTUP_TIMEOUT, "wrangler dev"):
        raise AssertionError(f"wrangler dev exited with {proc.returncode}; log tail:\n{gw.log_tail()}")
    gw.started_in = time.monotonic() - t0
    return gw


def start_apps(ctx: StartContext, configs: dict[str, dict[str, Any]], shards: int = 1,
               app: Any = None) -> dict[str, WorkerGateway]:
    """Several apps' Workers sharing one Durable Object namespace (``configs``: app name -> plugin
    config, which gets ``"app": name``): one ``wrangler dev`` each over the same persisted state,
    as deployments binding one namespace would. Returns a gateway per app."""
    state = ctx.tmp_path / "state-shared"
    state.mkdir(parents=True, exist_ok=True)
    return {name: start(ctx, dict(cfg, app=name), state_dir=state, shards=shards, app=app)
            for name, cfg in configs.items()}
