"""The demo app (envoy/demo/app.py) as a test process: started once per session on a free
127.0.0.1 port, stopped at the end (by PID, like every process of the suite)."""

from __future__ import annotations

import os
import secrets
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests

from hosts.process import Server, free_port, launch, wait_ready

REPO = Path(__file__).resolve().parents[1]
DEMO_APP = REPO / "envoy" / "demo" / "app.py"


@dataclass
class DemoApp(Server):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def running_demo_app(artifacts: Path, crowd: int = 0) -> Iterator[DemoApp]:
    """The demo Flask app on a free port, healthy; its log goes to artifacts/demo_app.log. ``crowd``:
    that many more users: ``member<i>``, role ``("student", "teacher", "admin")[i % 3]``."""
    port = free_port()
    env = dict(os.environ, DEMO_SECRET_KEY=secrets.token_hex(32), PYTHONUNBUFFERED="1", DEMO_CROWD=str(crowd))
    log_name = "demo_app.log" if not crowd else f"demo_app_crowd{crowd}.log"
    proc, log_path, log_file = launch([sys.executable, str(DEMO_APP), "--port", str(port)], artifacts,
                                      log_name, env=env, cwd=REPO)
    app = DemoApp(proc=proc, dir=artifacts, log_path=log_path, _log_file=log_file, port=port)
    try:
        healthy = lambda: requests.get(app.url + "/healthz", timeout=1).status_code == 200  # noqa: E731
        if not wait_ready(app, healthy, 20, "demo app"):
            pytest.fail(f"demo app exited with {proc.returncode}:\n{app.log_text()}")
        yield app
    finally:
        app.stop()
