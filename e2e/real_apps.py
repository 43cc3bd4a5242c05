"""Real web frameworks as test upstreams, each started once per test session on a free 127.0.0.1
port and stopped by PID: the apps whose login styles Headcount must follow as they really are.

* ``express``: e2e/apps/express (Express 5 + express-session with its defaults: the session cookie
  ``connect.sid`` is set on the first visit and kept through the login).
* ``flask``: e2e/apps/flask (Flask-Login with its "remember me" cookie: a browser that comes back
  with ``remember_token`` alone is logged in again on any page, which sets a new ``session``).
* ``django``: e2e/apps/django (Django's own LoginView/LogoutView: CSRF-protected form, the typed
  name stripped and NFKC-normalized, the last of a repeated field wins; ``sessionid`` rotated at login).

Each app has ``.url`` and ``.port``; pass it to ``start_gateway(config, app=...)``. Their packages
are installed by ``./dev test`` (``npm ci`` in the app's folder); a missing install is a failure,
never a skip.
"""

from __future__ import annotations

import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests

from hosts.process import Server, free_port, launch, wait_ready

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"


@dataclass
class RealApp(Server):
    name: str = ""
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def _running(name: str, cmd: list[str], artifacts: Path, cwd: Path, env: dict[str, str] | None = None
             ) -> Iterator[RealApp]:
    port = free_port()
    cmd = [part.replace("{port}", str(port)) for part in cmd]
    run_dir = artifacts / f"app-{name}"
    proc, log_path, log_file = launch(cmd, run_dir, f"{name}.log", env=env, cwd=cwd)
    app = RealApp(proc=proc, dir=run_dir, log_path=log_path, _log_file=log_file, name=name, port=port)
    try:
        healthy = lambda: requests.get(app.url + "/healthz", timeout=1).status_code == 200  # noqa: E731
        if not wait_ready(app, healthy, 30, f"{name} app"):
            pytest.fail(f"{name} app exited with {proc.returncode}:\n{app.log_text()}", pytrace=False)
        yield app
    finally:
        app.stop()


@contextmanager
def running_express(artifacts: Path) -> Iterator[RealApp]:
    folder = APPS / "express"
    if not (folder / "node_modules" / "express-session").is_dir():
        pytest.fail(f"{folder}/node_modules missing: run `npm ci` there (./dev test does)", pytrace=False)
    node = shutil.which("node")
    if not node:
        pytest.fail("node not found: the Express app needs Node.js", pytrace=False)
    with _running("express", [node, "app.js", "--port", "{port}"], artifacts, folder) as app:
        yield app


@contextmanager
def running_django(artifacts: Path) -> Iterator[RealApp]:
    folder = APPS / "django"
    db = artifacts / "app-django" / "db.sqlite3"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.unlink(missing_ok=True)
    cmd = [sys.executable, "app.py", "--port", "{port}", "--db", str(db)]
    with _running("django", cmd, artifacts, folder) as app:
        yield app


@contextmanager
def running_flask(artifacts: Path) -> Iterator[RealApp]:
    cmd = [sys.executable, "app.py", "--port", "{port}"]
    with _running("flask", cmd, artifacts, APPS / "flask") as app:
        yield app
