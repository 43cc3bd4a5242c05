#!/usr/bin/env python3
"""A stand-in for the plugin's dashboard routes, for developing the page without Envoy.

Serves plugin/core/assets/dashboard.html at ``{prefix}/`` (``{{PREFIX}}`` replaced) and fake data
at ``{prefix}/stats``, ``/history`` and ``/events``, and ``POST {prefix}/sessions/{id}/revoke``, with the
plugin's authorization rules: the bearer token (``--token``) or a ``session=<username>`` cookie of an
admin user (for the revoke, with ``X-Headcount-Request``); 401 without credentials, 403 with
credentials that are not allowed. Development only, not used by the tests.

Control routes (no auth, for poking at the page by hand):
``/mock/login?user=student1``, ``/mock/logout?user=student1``, ``/mock/fail?status=503`` (every
data route answers that status; ``status=0`` back to normal), ``/mock/cookie?user=admin_user``
(sets the ``session`` cookie in the browser).

Run: ``python e2e/mock_dashboard_api.py --port 8099`` then open http://127.0.0.1:8099/__headcount/
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

PAGE = Path(__file__).resolve().parents[1] / "plugin" / "core" / "assets" / "dashboard.html"
USERS = {"admin_user": ("1", "admin"), "teacher1": ("2", "teacher"), "student1": ("3", "student"),
         "student2": ("4", "student"), "student3": ("5", "student")}
AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/148.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:140.0) Gecko/20100101 Firefox/140.0",
]


def iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ms) % 1000:03d}Z"


class State:
    def __init__(self, token: str, prefix: str, send_device: bool) -> None:
        self.token, self.prefix, self.send_device = token, prefix, send_device
        self.lock = threading.Lock()
        self.sessions: dict[str, dict] = {}
        self.events: list[dict] = []
        self.seq = 0
        self.fail = 0
        self.requests = 0
        now = time.time() * 1000
        self.history = [(int(now // 60000) - 59 + i, random.choice([0, 1, 1, 2, 2, 3, 4])) for i in range(60)]

    def login(self, user: str, ua: str | None = None) -> None:
        uid, role = USERS.get(user, (str(abs(hash(user)) % 1000), "unknown"))
        now = time.time() * 1000
        with self.lock:
            sid = str(uuid.uuid4())
            self.sessions[sid] = dict(session_id=sid, user_id=uid, username=user, role=role, ip="127.0.0.1",
                                      user_agent=ua or random.choice(AGENTS), login_ms=now, last_ms=now)
            self._event("login", user, role, sid, now)

    def logout(self, user: str) -> None:
        now = time.time() * 1000
        with self.lock:
            for sid, s in list(self.sessions.items()):
                if s["username"] == user:
                    del self.sessions[sid]
                    self._event("logout", user, s["role"], sid, now)

    def revoke(self, sid: str, by: dict) -> bool:
        now = time.time() * 1000
        with self.lock:
            s = self.sessions.pop(sid, None)
            if s:
                self._event("revocation", s["username"], s["role"], sid, now, by)
            return s is not None

    def _event(self, kind, user, role, sid, now, by=None):
        self.events.append(dict(seq=self.seq, kind=kind, at=iso(now), username=user, role=role, session_id=sid))
        if by:
            self.events[-1]["by"] = by
        self.seq += 1
        del self.events[:-100]

    def stats(self) -> dict:
        now = time.time() * 1000
        with self.lock:
            sess = sorted(self.sessions.values(), key=lambda s: -s["last_ms"])
            by_role = {"admin": set(), "student": set(), "teacher": set()}
            for s in sess:
                by_role.setdefault(s["role"], set()).add(s["user_id"])
            views = []
            for s in sess:
                v = {k: s[k] for k in ("session_id", "user_id", "username", "role", "ip", "user_agent")}
                if self.send_device:
                    v["device"] = "Chrome 148 on Linux" if "Chrome" in s["user_agent"] else "Other on Somewhere"
                v.update(login_time=iso(s["login_ms"]), last_activity=iso(s["last_ms"]),
                         duration_seconds=int((now - s["login_ms"]) / 1000))
                views.append(v)
            self.requests += 3
            return dict(app="demo", active_users=len({s["user_id"] for s in sess}), active_sessions=len(sess), window_seconds=300,
                        by_role={r: len(u) for r, u in sorted(by_role.items())}, sessions=views,
                        traffic=dict(current_rps=round(random.uniform(0.5, 4), 2),
                                     avg_response_time_ms=round(random.uniform(1, 9), 2),
                                     requests_today=self.requests, authenticated_requests_today=self.requests * 2 // 3,
                                     anonymous_requests_today=self.requests - self.requests * 2 // 3),
                        generated_at=iso(now))

    def history_view(self) -> dict:
        cur = int(time.time() // 60)
        known = dict(self.history)
        return {"minutes": [dict(minute=iso(m * 60000), active_users=known.get(m, 0), active_sessions=known.get(m, 0))
                            for m in range(cur - 59, cur + 1)]}

    def events_view(self, after: int) -> dict:
        with self.lock:
            return {"events": [e for e in reversed(self.events) if e["seq"] >= after], "next": self.seq}


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet
            pass

        def send(self, status: int, body: bytes, ctype: str = "application/json", extra: dict | None = None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def json(self, status: int, obj) -> None:
            self.send(status, json.dumps(obj).encode())

        def do_GET(self):  # noqa: N802
            url = urlsplit(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            p = state.prefix
            if url.path.startswith("/mock/"):
                action = url.path[6:]
                if action == "login":
                    state.login(q.get("user", "student1"), q.get("ua"))
                elif action == "logout":
                    state.logout(q.get("user", "student1"))
                elif action == "fail":
                    state.fail = int(q.get("status", "0"))
                elif action == "cookie":
                    return self.send(200, b"ok", "text/plain", {"Set-Cookie": f"session={q.get('user', '')}; Path=/"})
                return self.json(200, {"ok": True})
            if url.path in (p, p + "/"):
                return self.send(200, PAGE.read_text().replace("{{PREFIX}}", p).encode(), "text/html; charset=utf-8")
            if url.path not in (p + "/stats", p + "/history", p + "/events"):
                return self.json(404, {"error": "no such route"})
            if self.refused():
                return
            if url.path.endswith("/stats"):
                return self.json(200, state.stats())
            if url.path.endswith("/history"):
                return self.json(200, state.history_view())
            return self.json(200, state.events_view(int(q.get("after", "0") or 0)))

        def refused(self, changes_state: bool = False) -> bool:
            """Answers the request if it may not use the data routes; sets ``self.by`` otherwise."""
            if state.fail:
                self.json(state.fail, {"error": "mock failure"})
                return True
            auth = self.headers.get("Authorization", "")
            cookie = dict(c.strip().split("=", 1) for c in self.headers.get("Cookie", "").split(";") if "=" in c)
            user = cookie.get("session")
            if auth:
                if auth != "Bearer " + state.token:
                    self.json(403, {"error": "not allowed"})
                    return True
                self.by = {"via": "admin_token"}
            elif user:
                if USERS.get(user, ("", ""))[1] != "admin":
                    self.json(403, {"error": "not allowed"})
                    return True
                if changes_state and not self.headers.get("X-Headcount-Request"):
                    self.json(403, {"error": "cross-site request refused"})
                    return True
                self.by = {"via": "admin_session", "username": user, "session_id": "mock"}
            else:
                self.json(401, {"error": "authentication required"})
                return True
            return False

        def do_POST(self):  # noqa: N802
            path = urlsplit(self.path).path
            rest = path.removeprefix(state.prefix + "/sessions/")
            if rest == path or not rest.endswith("/revoke"):
                return self.json(404, {"error": "no such route"})
            if self.refused(changes_state=True):
                return
            sid = rest.removesuffix("/revoke")
            if not state.revoke(sid, self.by):
                return self.json(404, {"error": "no such live session"})
            return self.json(200, {"revoked": True, "session_id": sid})

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8099)
    ap.add_argument("--token", default="mock-token")
    ap.add_argument("--prefix", default="/__headcount")
    ap.add_argument("--no-device", action="store_true", help="omit the device field (the page derives it)")
    ap.add_argument("--seed", action="store_true", help="start with a few sessions")
    args = ap.parse_args()
    state = State(args.token, args.prefix, not args.no_device)
    if args.seed:
        for u in ("admin_user", "student1", "student2", "teacher1"):
            state.login(u)
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(state))
    print(f"mock dashboard API on http://127.0.0.1:{args.port}{args.prefix}/ (token {args.token})", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
