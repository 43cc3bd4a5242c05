"""The demo app as a test process, for both end-to-end suites (Envoy here, the Worker in
workers/e2e): started once per session on a free 127.0.0.1 port, stopped at the end."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
DEMO_APP = REPO / "envoy" / "demo" / "app.py"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DemoApp:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_demo_app(artifacts: Path) -> Iterator[DemoApp]:
    """The demo Flask app on a free port, healthy; its log goes to artifacts/demo_app.log."""
    artifacts.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = artifacts / "demo_app.log"
    log_file = open(log_path, "wb")
    env = dict(os.environ, DEMO_SECRET_KEY=secrets.token_hex(32), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(DEMO_APP), "--port", str(port)], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    app = DemoApp(proc=proc, port=port, log_path=log_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"demo app exited with {proc.returncode}:\n{app.log_text()}")
            try:
                if requests.get(app.url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"demo app not healthy after 20s:\n{app.log_text()}")
            time.sleep(0.05)
        yield app
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log_file.close()
