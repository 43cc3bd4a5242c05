"""Client helpers of the end-to-end suite: plain HTTP against the gateway under test (whatever the
host), the plugin's routes (stats, events, metrics, history, revocation), plus the Worker's debug
header."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

import requests

TIMEOUT = 10  # seconds, for every HTTP call (a Worker isolate's first request is slower)
PASSWORD = "password"
ADMIN_TOKEN = "e2e-admin-token"
STATS_PATH = "/__headcount/stats"

# The standard plugin configuration of the tests: a long activity window (so that nothing expires
# while a test runs) and fast flushing/sweeping so that shared state and gauges catch up quickly.
PLUGIN_CONFIG = {
    "admin_token": ADMIN_TOKEN,
    "active_window_seconds": 60,
    "idle_timeout_seconds": 120,
    "flush_interval_ms": 200,
    "sweep_interval_seconds": 1,
}

# For the tests about time: short windows.
SHORT_WINDOWS = dict(PLUGIN_CONFIG, active_window_seconds=3, idle_timeout_seconds=6)

# Identity of the demo users (envoy/demo/app.py).
USERS = {
    "admin_user": ("1", "admin"),
    "teacher1": ("2", "teacher"),
    "student1": ("3", "student"),
    "student2": ("4", "student"),
    "student3": ("5", "student"),
}

NOBODY_BY_ROLE = {"admin": 0, "teacher": 0, "student": 0}

BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) HeadcountE2E/1.0 Firefox/140.0"


def ua(tag: str) -> str:
    """A distinct, browser-like user agent (never matching the bot list)."""
    return f"Mozilla/5.0 (X11; Linux x86_64) HeadcountE2E/{tag} Firefox/140.0"


def login(base_url: str, username: str, user_agent: str = BROWSER_UA, password: str = PASSWORD,
          form: bool = False, headers: dict[str, str] | None = None) -> requests.Session:
    """Log a demo user in through the gateway; returns the requests.Session holding its cookie."""
    s = requests.Session()
    s.headers["User-Agent"] = user_agent
    if headers:
        s.headers.update(headers)
    url = base_url + "/api/v1/auth/login"
    if form:
        r = s.post(url, data={"username": username, "password": password}, timeout=TIMEOUT)
    else:
        r = s.post(url, json={"username": username, "password": password}, timeout=TIMEOUT)
    assert r.status_code == 200, f"login {username}: {r.status_code} {r.text[:300]}"
    assert r.headers.get("x-demo-app") == "1", "login was not answered by the app"
    assert r.json()["user"]["username"] == username
    assert s.cookies.get("session"), f"login {username}: no session cookie in {r.headers}"
    return s


def bearer(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stats_response(base_url: str, token: str | None = ADMIN_TOKEN, **kwargs) -> requests.Response:
    headers = dict(kwargs.pop("headers", {}) or {})
    if token is not None:
        headers.update(bearer(token))
    return requests.get(base_url + STATS_PATH, headers=headers, timeout=TIMEOUT, **kwargs)


def stats(base_url: str, token: str = ADMIN_TOKEN) -> dict[str, Any]:
    """GET the stats route with the bearer token (a new connection each time); asserts 200."""
    r = stats_response(base_url, token)
    assert r.status_code == 200, f"stats: {r.status_code} {r.text[:500]}"
    assert "x-demo-app" not in r.headers, "stats route was proxied to the app"
    return r.json()


def wait_stats(base_url: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0,
               token: str = ADMIN_TOKEN) -> dict[str, Any]:
    """Poll stats until predicate(stats) holds or the deadline passes; returns the last stats.

    Callers assert exact values on the returned snapshot, so a timeout fails with the full JSON.
    """
    return wait_for(lambda: stats(base_url, token), predicate, timeout)


def summary(snap: dict[str, Any]) -> str:
    return json.dumps(snap, indent=1, sort_keys=True)


def parse_time(value: str) -> datetime:
    """RFC 3339 timestamp (UTC, e.g. 2026-11-28T10:30:00.000Z) -> aware datetime."""
    assert isinstance(value, str) and value.endswith("Z"), f"not an RFC 3339 UTC time: {value!r}"
    assert "T" in value, f"not an RFC 3339 time: {value!r}"
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert dt.tzinfo is not None and dt.utcoffset().total_seconds() == 0
    return dt


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except (ValueError, AttributeError, TypeError):
        return False


def raw_request(port: int, data: bytes, host: str = "127.0.0.1", timeout: float = TIMEOUT):
    """Send raw bytes (one HTTP/1.1 request with Connection: close); returns (status, headers, body)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines and lines[0].startswith(b"HTTP/1."), f"no HTTP response: {raw[:200]!r}"
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, headers, body


def debug(base_url: str, token: str = ADMIN_TOKEN) -> dict[str, int]:
    """The Worker's x-headcount-debug header (HEADCOUNT_DEBUG=1) from a stats request:
    the isolate's counters as they were before that request, and the rows the shards hold."""
    r = stats_response(base_url, token)
    assert r.status_code == 200, f"stats: {r.status_code} {r.text[:500]}"
    raw = r.headers.get("x-headcount-debug")
    assert raw, f"no x-headcount-debug header (HEADCOUNT_DEBUG=1?): {dict(r.headers)}"
    out = {}
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        out[key] = int(value)
    return out


def wait_debug(base_url: str, predicate: Callable[[dict[str, int]], bool], timeout: float = 5.0) -> dict[str, int]:
    return wait_for(lambda: debug(base_url), predicate, timeout)


# The plugin's own routes (under the default route prefix).
PREFIX = "/__headcount"


def admin_get(base: str, path: str, **kw) -> requests.Response:
    """GET ``PREFIX + path`` (e.g. "/events?after=3"); pass headers=bearer() for credentials."""
    return requests.get(base + PREFIX + path, timeout=TIMEOUT, **kw)


def wait_for(fetch: Callable[[], Any], predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    """Calls ``fetch`` until ``predicate`` holds or ``timeout`` passes; returns the last value."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not predicate(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = fetch()
    return value


def local(r: requests.Response, status: int) -> requests.Response:
    """An answer of the plugin itself: this status, never proxied, never cached."""
    assert r.status_code == status, (r.request.url, r.status_code, r.text[:300])
    assert "x-demo-app" not in r.headers, "answered by the app: the route was proxied"
    assert r.headers.get("cache-control") == "no-store", r.headers
    return r


def events_of(base: str, after: int | None = None) -> dict[str, Any]:
    path = "/events" if after is None else f"/events?after={after}"
    return local(admin_get(base, path, headers=bearer()), 200).json()


def metrics_of(base: str, token: str = ADMIN_TOKEN) -> str:
    r = local(admin_get(base, "/metrics", headers=bearer(token)), 200)
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.headers
    return r.text


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text: (name, labels, value)."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def metric(text: str, name: str, app: str | None = None) -> int:
    """The value of sample ``name`` (``metric{label="v"}`` names the labels besides ``app``). Every
    sample carries the app it counts; ``app`` picks one when the text holds several apps'."""
    want = _SAMPLE.match(name + " 0")
    assert want, name
    base, labels = want.group(1), dict(_LABEL.findall(want.group(2) or ""))
    found = [(lab, v) for n, lab, v in samples(text)
             if n == base and {k: x for k, x in lab.items() if k != "app"} == labels
             and (app is None or lab.get("app") == app)]
    assert len(found) == 1, (name, app, found, text)
    assert "app" in found[0][0], ("a sample without its app", name, text)
    return int(found[0][1])


def wait_for_metric(base: str, name: str, value: int, timeout: float = 5.0) -> str:
    """The /metrics text once ``name`` has ``value`` (or the last one when ``timeout`` passes)."""
    return wait_for(lambda: metrics_of(base), lambda text: metric(text, name) == value, timeout)


def history_of(base: str) -> list[dict[str, Any]]:
    return local(admin_get(base, "/history", headers=bearer()), 200).json()["minutes"]


def wait_for_history(base: str, users: int, timeout: float = 8.0) -> list[dict[str, Any]]:
    """The history minutes once their peak is ``users`` active users."""
    return wait_for(lambda: history_of(base), lambda minutes: max(m["active_users"] for m in minutes) == users,
                    timeout)


def session_of(base: str, username: str) -> dict[str, Any]:
    """The (first) listed session of ``username``, once there is one."""
    snap = wait_stats(base, lambda x: any(s["username"] == username for s in x["sessions"]))
    return next(s for s in snap["sessions"] if s["username"] == username)


def revoke(base: str, session_id: str, **kw) -> requests.Response:
    return requests.post(f"{base}{PREFIX}/sessions/{session_id}/revoke", timeout=TIMEOUT, **kw)


REVOKED = {"error": "session revoked"}


def browse(s: requests.Session, base: str, n: int) -> list[str]:
    """n authenticated requests; the demo app rotates the cookie on each. Returns every value seen."""
    values = [s.cookies["session"]]
    for _ in range(n):
        r = s.get(base + "/api/v1/me", timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers.get("x-demo-app") == "1", r.status_code
        assert s.cookies["session"] != values[-1], "the demo app did not rotate the cookie"
        values.append(s.cookies["session"])
    return values


def refused(base: str, value: str, path: str = "/api/v1/me") -> requests.Response:
    """A request carrying the cookie ``value`` is answered 401 by the plugin, never by the app."""
    r = requests.get(base + path, cookies={"session": value}, headers={"User-Agent": ua("replay")},
                     timeout=TIMEOUT)
    assert r.status_code == 401, (r.status_code, r.text[:200])
    assert "x-demo-app" not in r.headers, "a revoked cookie reached the app"
    assert r.json() == REVOKED, r.text
    return r


# Plugin configurations every host must refuse, naming the field: (config, field, id). Each host's
# test_config.py adds its own and checks the refusal its way (Envoy: not serving and a log line;
# the Worker: 500 naming the field on every request).
BAD_CONFIGS = [
    ({"admin_token": ADMIN_TOKEN, "active_window_seconds": "soon"}, "active_window_seconds", "string-for-integer"),
    ({"admin_token": ADMIN_TOKEN, "frobnicate": 1}, "frobnicate", "unknown-key"),
    ({"active_window_seconds": 600, "idle_timeout_seconds": 60}, "idle_timeout_seconds", "idle-below-window"),
    ({"flush_interval_ms": 5}, "flush_interval_ms", "flush-out-of-range"),
    ({"jwt": {"hs256_secret": "too-short"}}, "jwt.hs256_secret", "jwt-secret-too-short"),
    ({"jwt": {"public_keys": ["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"]}},
     "jwt.public_keys[0]", "jwt-bad-pem"),
]


def bad_config_params(*extra: tuple[Any, str | None, str]) -> list:
    """BAD_CONFIGS and ``extra`` as pytest params (config, field), with their ids."""
    import pytest

    return [pytest.param(config, field, id=name) for config, field, name in [*BAD_CONFIGS, *extra]]
