#!/usr/bin/env python3
"""Demo "testing platform" app that Headcount watches from the edge.

A plain Flask app with real, signed session cookies:

* ``POST /api/v1/auth/login``  JSON ``{"username", "password"}`` or an HTML form;
  200 ``{"user": {"id", "username", "role"}}`` plus a ``session`` cookie, or
  401 ``{"error": "invalid credentials"}`` without one.
* ``POST /api/v1/auth/logout`` clears the session (Flask sends a deleting Set-Cookie).
* ``POST /api/v2/auth/token`` JSON ``{"username", "password"}``: 200
  ``{"access_token", "token_type": "Bearer", "expires_in"}``, an HS256 JWT for API
  clients that send ``Authorization: Bearer`` instead of a cookie (no cookie is set).
* ``GET /api/v1/me``, ``GET /api/v1/courses`` (login required, JSON 401 otherwise),
  ``GET /api/v1/debug/headers`` (echoes the request headers), ``GET /healthz``,
  ``GET /`` (home page: a login form that posts JSON, and a classic form login, ``POST /login``,
  a redirect either way) and ``GET /dashboard`` (login required). Headcount's demo config names
  form-login users by asking ``GET /api/v1/me`` (its ``whoami`` route).

The session is permanent and a per-request counter is stored in it for every
logged-in request, so **every authenticated response re-issues the session cookie
with a new value** (cookie rotation), the hardest case for an edge observer.

Run: ``python envoy/demo/app.py --port 5000``. The signing key comes from the
environment variable ``DEMO_SECRET_KEY`` (a random one otherwise); JWTs are signed
with ``DEMO_JWT_SECRET`` (default ``DEFAULT_JWT_SECRET``, which the demo's Headcount
config also names).
All demo users have the password ``password``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import html
import json
import os
import secrets
import sys
import time
from datetime import timedelta
from functools import wraps

from flask import Flask, jsonify, redirect, request, session

# id, username, role. Every password is "password".
USERS = {
    "admin_user": {"id": 1, "username": "admin_user", "role": "admin"},
    "teacher1": {"id": 2, "username": "teacher1", "role": "teacher"},
    "student1": {"id": 3, "username": "student1", "role": "student"},
    "student2": {"id": 4, "username": "student2", "role": "student"},
    "student3": {"id": 5, "username": "student3", "role": "student"},
}
# Tests of many people at once (DEMO_CROWD=N): N more users, member1..memberN, ids 1001.., roles in turn.
for _i in range(1, int(os.environ.get("DEMO_CROWD", "0")) + 1):
    USERS[f"member{_i}"] = {"id": 1000 + _i, "username": f"member{_i}",
                            "role": ("student", "teacher", "admin")[_i % 3]}
USERS_BY_ID = {u["id"]: u for u in USERS.values()}
PASSWORD = "password"

COURSES = [
    {"id": 101, "title": "Algebra I", "teacher": "teacher1", "students": ["student1", "student2"]},
    {"id": 102, "title": "Intro to Physics", "teacher": "teacher1", "students": ["student2", "student3"]},
    {"id": 103, "title": "World History", "teacher": "teacher1", "students": ["student1", "student3"]},
]

DEFAULT_JWT_SECRET = "demo-jwt-secret-not-for-production-0123456789"
TOKEN_LIFETIME_S = 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_jwt(claims: dict, secret: str, header: dict | None = None) -> str:
    """An HS256 JWS compact token (stdlib only)."""
    head = _b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def verify_jwt(token: str, secret: str) -> dict | None:
    """The claims of a valid, unexpired HS256 token; None otherwise."""
    try:
        head, body, sig = token.split(".")
        if json.loads(_unb64(head)).get("alg") != "HS256":
            return None
        want = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(want, _unb64(sig)):
            return None
        claims = json.loads(_unb64(body))
        return claims if isinstance(claims, dict) and claims.get("exp", 0) > time.time() else None
    except (ValueError, AttributeError, TypeError):
        return None


# Paths whose handler manages the session itself: the counter is not bumped there.
_AUTH_PATHS = {"/api/v1/auth/login", "/api/v1/auth/logout", "/login"}


def create_app(secret_key: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key or os.environ.get("DEMO_SECRET_KEY") or secrets.token_hex(32),
        SESSION_COOKIE_NAME="session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        # The cookie is re-issued because the session changes (the counter below),
        # not because of Flask's refresh: a failed login never re-issues a cookie.
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    app.json.sort_keys = False  # keep {"id", "username", "role"} in that order
    jwt_secret = os.environ.get("DEMO_JWT_SECRET") or DEFAULT_JWT_SECRET

    def bearer_user():
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        claims = verify_jwt(auth[7:].strip(), jwt_secret)
        return USERS.get(claims.get("preferred_username")) if claims else None

    def current_user():
        uid = session.get("uid")
        if uid is None:
            return bearer_user()
        return USERS_BY_ID.get(uid)

    def login_required_json(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            if current_user() is None:
                return jsonify(error="authentication required"), 401
            return view(*args, **kwargs)

        return wrapper

    @app.before_request
    def rotate_session():
        # Every authenticated request writes the session, so Flask re-signs it and
        # sends a new Set-Cookie value: the session cookie rotates on every response.
        if request.path in _AUTH_PATHS:
            return
        if session.get("uid") is not None:  # bearer requests carry no session
            session.permanent = True
            session["n"] = int(session.get("n", 0)) + 1

    @app.after_request
    def stamp(resp):
        resp.headers.setdefault("Cache-Control", "no-store")
        # Marks every response that really came from the app (the end-to-end tests
        # use it to tell proxied responses from the plugin's own answers).
        resp.headers["X-Demo-App"] = "1"
        return resp

    @app.post("/api/v1/auth/login")
    def login():
        data = request.get_json(silent=True) if request.is_json else None
        if not isinstance(data, dict):
            data = request.form
        username = data.get("username")
        password = data.get("password")
        user = USERS.get(username) if isinstance(username, str) else None
        if user is None or not isinstance(password, str) or not secrets.compare_digest(
            password.encode(), PASSWORD.encode()
        ):
            return jsonify(error="invalid credentials"), 401
        session.clear()
        session.permanent = True
        session["uid"] = user["id"]
        session["n"] = 0
        session["nonce"] = secrets.token_hex(8)
        resp = jsonify(user=user)
        # Identity also as response headers (only trusted by Headcount when its
        # user_id_header / username_header / role_header options name them).
        resp.headers["X-Demo-User-Id"] = str(user["id"])
        resp.headers["X-Demo-Username"] = user["username"]
        resp.headers["X-Demo-Role"] = user["role"]
        return resp

    @app.post("/login")
    def form_login():
        # A classic HTML form login: a redirect either way, and a failed attempt
        # stores a message in the session (so it sets a cookie too): only the
        # redirect target tells success from failure.
        username = request.form.get("username", "")
        user = USERS.get(username)
        if user is None or not secrets.compare_digest(
            request.form.get("password", "").encode(), PASSWORD.encode()
        ):
            session["flash"] = "invalid credentials"
            return redirect("/?error=1", code=302)
        session.clear()
        session.permanent = True
        session["uid"] = user["id"]
        session["n"] = 0
        session["nonce"] = secrets.token_hex(8)
        return redirect("/dashboard", code=302)

    @app.post("/api/v2/auth/token")
    def token():
        data = request.get_json(silent=True)
        data = data if isinstance(data, dict) else {}
        user = USERS.get(data.get("username")) if isinstance(data.get("username"), str) else None
        password = data.get("password")
        if user is None or not isinstance(password, str) or not secrets.compare_digest(
            password.encode(), PASSWORD.encode()
        ):
            return jsonify(error="invalid credentials"), 401
        now = int(time.time())
        claims = {"sub": str(user["id"]), "preferred_username": user["username"], "role": user["role"],
                  "sid": secrets.token_hex(8), "iat": now, "exp": now + TOKEN_LIFETIME_S}
        return jsonify(access_token=sign_jwt(claims, jwt_secret), token_type="Bearer",
                       expires_in=TOKEN_LIFETIME_S)

    @app.post("/api/v1/auth/logout")
    def logout():
        session.clear()
        return jsonify(ok=True)

    @app.get("/api/v1/me")
    @login_required_json
    def me():
        return jsonify(user=current_user(), requests_in_session=session.get("n", 0))

    @app.get("/api/v1/courses")
    @login_required_json
    def courses():
        user = current_user()
        if user["role"] == "student":
            mine = [c for c in COURSES if user["username"] in c["students"]]
        elif user["role"] == "teacher":
            mine = [c for c in COURSES if c["teacher"] == user["username"]]
        else:
            mine = COURSES
        return jsonify(courses=[{"id": c["id"], "title": c["title"], "teacher": c["teacher"]} for c in mine])

    @app.get("/api/v1/debug/headers")
    def debug_headers():
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        return jsonify(headers=headers)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.get("/")
    def home():
        user = current_user()
        return _page("Home", HOME_BODY.format(who=_who(user)))

    @app.get("/dashboard")
    def dashboard():
        user = current_user()
        if user is None:
            return redirect("/")
        return _page("Dashboard", DASHBOARD_BODY.format(
            who=_who(user),
            username=html.escape(user["username"]),
            role=html.escape(user["role"]),
            count=int(session.get("n", 0)),
        ))

    return app


def _who(user) -> str:
    if user is None:
        return "You are not logged in."
    return f"Logged in as <b>{html.escape(user['username'])}</b> ({html.escape(user['role'])})."


def _page(title: str, body: str) -> str:
    return PAGE.format(title=html.escape(title), body=body)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} · Testing Platform</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }}
form {{ display: grid; gap: .5rem; max-width: 20rem; }}
code {{ background: #eee; padding: 0 .2rem; }}
#msg {{ color: #b00; min-height: 1.2em; }}
</style>
</head>
<body>
<h1>Testing Platform</h1>
{body}
</body>
</html>
"""

HOME_BODY = """<p>{who}</p>
<form id="login" method="post" action="/api/v1/auth/login">
  <label>Username <input name="username" autocomplete="username" value="student1"></label>
  <label>Password <input name="password" type="password" autocomplete="current-password" value="password"></label>
  <button type="submit">Log in</button>
  <div id="msg"></div>
</form>
<p>Demo users: <code>admin_user</code>, <code>teacher1</code>, <code>student1</code>,
<code>student2</code>, <code>student3</code>; password <code>password</code>.</p>
<form method="post" action="/login">
  <button type="submit" name="username" value="teacher1">Or sign in as teacher1 with a classic form</button>
  <input type="hidden" name="password" value="password">
</form>
<p>The classic form login (<code>POST /login</code>) redirects either way and names nobody in
its answer: Headcount learns who logged in, and their role, by asking <code>/api/v1/me</code>
(its <code>whoami</code> route).</p>
<p><a href="/dashboard">Dashboard</a></p>
<script>
document.getElementById("login").addEventListener("submit", async (ev) => {{
  ev.preventDefault();
  const f = ev.target;
  const r = await fetch("/api/v1/auth/login", {{
    method: "POST",
    headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{username: f.username.value, password: f.password.value}}),
  }});
  // The answer names who logged in; the page reads it before moving on, as an app's page
  // does. (Headcount records a login as its answer's body passes: a page that moved on at
  // the headers could reach another worker a moment before the login is recorded.)
  if (r.ok) {{ await r.json(); location.href = "/dashboard"; }}
  else {{ document.getElementById("msg").textContent = "Login failed (" + r.status + ")"; }}
}});
</script>
"""

DASHBOARD_BODY = """<p>{who}</p>
<p>Welcome, {username}. Your role is <b>{role}</b>; this session has made {count} requests.</p>
<ul id="courses"><li>loading courses…</li></ul>
<button id="logout">Log out</button>
<script>
fetch("/api/v1/courses").then(r => r.json()).then(d => {{
  const ul = document.getElementById("courses");
  ul.textContent = "";
  for (const c of d.courses || []) {{
    const li = document.createElement("li");
    li.textContent = c.title + " (" + c.teacher + ")";
    ul.appendChild(li);
  }}
}});
document.getElementById("logout").addEventListener("click", async () => {{
  await fetch("/api/v1/auth/logout", {{method: "POST"}});
  location.href = "/";
}});
</script>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Headcount demo app (Flask)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    app = create_app()
    import http.client

    from werkzeug.serving import run_simple

    # The standard library's HTTP server refuses header lines over 64 KiB (431). Real
    # sites do see huge cookies; let the demo accept them so that the edge is what the
    # large-cookie tests exercise (Envoy's own limit is max_request_headers_kb).
    http.client._MAXLINE = max(http.client._MAXLINE, 1 << 20)

    print(f"demo app listening on http://{args.host}:{args.port}/", flush=True)
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False, use_debugger=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
