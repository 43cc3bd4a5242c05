"""Whatever the request looks like, the plugin never breaks proxying (on every host)."""

import requests

import helpers
from helpers import TIMEOUT, login, summary, wait_stats

MALFORMED_COOKIES = [
    "session",
    "session=",
    "=session",
    ";;;",
    "; ; =; ==",
    "session=; session=; session=x",
    'session="unterminated',
    'session="quoted value"',
    "a=1;;b=2;=;session",
    "%%%=%%%; session=%ZZ%",
    "session=" + "\t \t",
    "session=a=b=c; session=d",
    "session=" + "é" * 10,
]


def test_malformed_cookie_headers_are_proxied(gateway):
    failures = []
    for cookie in MALFORMED_COOKIES:
        for path in ("/healthz", "/api/v1/me", "/api/v1/auth/logout"):
            method = "POST" if path.endswith("logout") else "GET"
            r = requests.request(method, gateway.url + path, timeout=TIMEOUT,
                                 headers={"Cookie": cookie.encode("utf-8").decode("latin-1")})
            if r.headers.get("x-demo-app") != "1" or r.status_code >= 500:
                failures.append((cookie, method, path, r.status_code))
    assert not failures, failures
    assert helpers.stats(gateway.url)["sessions"] == []


def test_garbage_around_a_real_session_cookie(gateway):
    base = gateway.url
    s = login(base, "student1")
    value = s.cookies["session"]
    r = requests.get(base + "/api/v1/me", headers={"Cookie": f";; junk; =x; session={value}; tail="},
                     timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["user"]["username"] == "student1"
    snap = wait_stats(base, lambda x: x["active_sessions"] == 1)
    assert snap["active_users"] == 1, summary(snap)


def test_unusual_methods_and_paths_are_proxied(gateway):
    base = gateway.url
    cases = [("GET", "/api/v1/auth/login"), ("PUT", "/api/v1/auth/login"), ("GET", "/api/v1/auth/logout"),
             ("POST", "/api/v1/auth/login?next=/dashboard"), ("GET", "/__headcountX/stats"),
             ("GET", "/healthz?" + "q=" + "z" * 8000), ("OPTIONS", "/")]
    for method, path in cases:
        r = requests.request(method, base + path, timeout=TIMEOUT, data=b"" if method != "GET" else None)
        assert r.headers.get("x-demo-app") == "1", (method, path, r.status_code)
