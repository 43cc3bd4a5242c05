"""Logging in to the real frameworks of real_apps.py, and the plugin configurations that fit them,
shared by the behaviour tests about login styles and sessions Headcount never saw."""

from __future__ import annotations

import re

import requests

from helpers import PLUGIN_CONFIG, TIMEOUT, ua

# express-session's cookie; a form login that redirects to /app on success, to /login?failed=1 not.
EXPRESS_CONFIG = dict(
    PLUGIN_CONFIG,
    session_cookie="connect.sid",
    login_routes=[{"method": "POST", "path": "/login", "success_location_prefix": "/app",
                   "identity": ["request_body"]}],
    logout_path="/logout",
)


def express_login(base: str, name: str, visit_first: bool, password: str | None = None,
                  s: requests.Session | None = None) -> requests.Session:
    """Logs ``name`` in through the form; ``visit_first`` loads a page before, as a browser does
    (the app sets its cookie there and keeps it through the login)."""
    if s is None:
        s = requests.Session()
        s.headers["User-Agent"] = ua(f"express-{name}")
    if visit_first:
        assert s.get(base + "/login", timeout=TIMEOUT).status_code == 200
        assert s.cookies.get("connect.sid"), "express-session sets its cookie on the first visit"
    r = s.post(base + "/login", data={"username": name, "password": password or f"pw-{name}"},
               allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code == 302, r.text[:200]
    if password is None:
        assert r.headers["location"] == "/app", r.headers
    if visit_first:
        assert "set-cookie" not in r.headers, f"the app kept its cookie: {r.headers}"
    return s


# Django's LoginView: 302 to /app/ on success, the form again (200) on failure; `sessionid` is
# rotated at login.
DJANGO_CONFIG = dict(
    PLUGIN_CONFIG,
    session_cookie="sessionid",
    login_routes=[{"method": "POST", "path": "/login/", "success_statuses": [302],
                   "success_location_prefix": "/app/", "identity": ["request_body"]}],
    logout_path="/logout/",
)


def django_login(base: str, fields: list[tuple[str, str]], tag: str) -> requests.Session:
    """Posts Django's login form (with its CSRF token) as ``fields``, repeated names allowed;
    asserts that Django logged someone in; returns the browser."""
    s = requests.Session()
    s.headers["User-Agent"] = ua(f"django-{tag}")
    page = s.get(base + "/login/", timeout=TIMEOUT)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert page.status_code == 200 and token, page.text[:300]
    r = s.post(base + "/login/", data=[("csrfmiddlewaretoken", token.group(1)), *fields],
               allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code == 302 and r.headers["location"] == "/app/", (r.status_code, r.text[:300])
    return s


def whoami(s: requests.Session, base: str) -> str:
    r = s.get(base + "/me", timeout=TIMEOUT)
    assert r.status_code == 200, r.text[:200]
    return r.json()["user"]["username"]


# whoami: the app's own answer names the session (on Envoy, a call to the app's cluster).
WHOAMI = {"path": "/me", "cluster": "demo_app", "timeout_ms": 1000}


def roles_of(snap: dict) -> dict[str, str]:
    return {x["username"]: x["role"] for x in snap["sessions"]}


# Django REST framework's TokenAuthentication: the login answers {"token": ...}; requests send
# `Authorization: Token <token>`; whoami is asked with the token.
DRF_CONFIG = dict(
    PLUGIN_CONFIG,
    token_scheme="Token",
    login_routes=[{"method": "POST", "path": "/api/token/", "token_pointer": "/token",
                   "identity": ["whoami", "request_body"]}],
    logout_path="/api/logout/",
    whoami=dict(WHOAMI, path="/api/me"),
)
