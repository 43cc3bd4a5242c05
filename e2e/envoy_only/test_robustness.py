"""Envoy: non-UTF-8 header bytes, 100 KB cookies, multi-megabyte login bodies (Envoy buffers
them: never a 413), and Envoy's own local replies when the app is down, all pass the filter."""

import http.client
import json
import time

import requests

import helpers
from helpers import TIMEOUT, raw_request, summary, wait_stats
from hosts.process import free_port

NON_UTF8_REQUESTS = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: session=\xff\xfe\x80\xc3\r\nConnection: close\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: caf\xe9 \xff bot?\r\nConnection: close\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: \xff\xff=\xfe; session=ok\r\n"
    b"X-Forwarded-For: \xc0\xaf\r\nConnection: close\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
]


def test_non_utf8_header_bytes_are_proxied(gateway):
    failures = []
    for raw in NON_UTF8_REQUESTS:
        status, headers, body = raw_request(gateway.port, raw)
        if status != 200 or headers.get("x-demo-app") != "1":
            failures.append((raw.split(b"\r\n")[2], status, body[:100]))
    assert not failures, failures


def test_non_utf8_header_bytes_on_the_plugin_routes(gateway):
    for path in (b"/api/v1/auth/login", b"/api/v1/auth/logout"):
        body = b"username=\xff\xfe&password=password"
        raw = (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nCookie: session=\xff\r\n"
               b"User-Agent: \xe9\xe9\r\nContent-Type: application/x-www-form-urlencoded\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        status, headers, resp = raw_request(gateway.port, raw)
        assert headers.get("x-demo-app") == "1", (path, status, resp[:200])
        assert status in (200, 401), (path, status)
    raw = b"GET /__headcount/stats HTTP/1.1\r\nHost: x\r\nCookie: session=\xff\xfe\r\nConnection: close\r\n\r\n"
    status, headers, _ = raw_request(gateway.port, raw)
    assert status in (401, 403) and "x-demo-app" not in headers, status
    # The plugin is still healthy.
    assert helpers.stats(gateway.url)["active_users"] == 0


def test_100kb_cookie_is_proxied(gateway):
    base = gateway.url
    big = "x" * 100_000
    r = requests.get(base + "/healthz", headers={"Cookie": "session=" + big}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1", r.status_code
    many = "; ".join(f"c{i}={'y' * 90}" for i in range(1000))  # ~100 KB of cookies
    r = requests.get(base + "/healthz", headers={"Cookie": many + "; session=" + big[:4000]},
                     timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1", r.status_code
    # A login carrying a 100 KB cookie still logs in and is counted.
    s = requests.Session()
    s.cookies.set("tracking", big)
    r = s.post(base + "/api/v1/auth/login", json={"username": "teacher1", "password": "password"},
               timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1", r.status_code
    snap = wait_stats(base, lambda x: x["active_sessions"] == 1)
    assert [x["username"] for x in snap["sessions"]] == ["teacher1"], summary(snap)


def test_large_login_bodies_still_reach_the_app(gateway):
    base = gateway.url
    padding = "p" * (3 * 1024 * 1024)  # larger than Envoy's default 1 MiB buffer
    payload = json.dumps({"username": "student2", "password": "password", "padding": padding})
    r = requests.post(base + "/api/v1/auth/login", data=payload,
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1", (r.status_code, r.text[:200])
    assert r.json()["user"]["username"] == "student2"
    snap = wait_stats(base, lambda x: x["active_sessions"] == 1)
    assert [x["username"] for x in snap["sessions"]] == ["student2"], summary(snap)


def test_a_login_body_sent_small_then_large_is_not_refused(gateway):
    """The split a slow client or network makes: Envoy sees a small first chunk, then
    megabytes. A filter that held the body back after the first chunk got a 413."""
    payload = json.dumps({"username": "teacher1", "password": "password",
                          "padding": "p" * (3 * 1024 * 1024)}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        conn.putrequest("POST", "/api/v1/auth/login")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(payload)))
        conn.endheaders(payload[:64])
        time.sleep(0.3)  # Envoy has passed the first chunk to the filter by now
        conn.send(payload[64:])
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    assert r.status == 200 and r.getheader("x-demo-app") == "1", (r.status, body[:200])
    snap = wait_stats(gateway.url, lambda x: x["active_sessions"] == 1)
    assert [x["username"] for x in snap["sessions"]] == ["teacher1"], summary(snap)


def test_upstream_down_local_replies(start_gateway):
    """With nothing behind Envoy, its own 503s pass through the filter; nobody is counted."""
    gw = start_gateway(helpers.PLUGIN_CONFIG, app_port=free_port())
    r = requests.post(gw.url + "/api/v1/auth/login", json={"username": "admin_user", "password": "password"},
                      timeout=TIMEOUT)
    assert r.status_code == 503 and "x-demo-app" not in r.headers, r.status_code
    r = requests.post(gw.url + "/api/v1/auth/logout", cookies={"session": "abc"}, timeout=TIMEOUT)
    assert r.status_code == 503
    r = requests.get(gw.url + "/api/v1/me", cookies={"session": "abc"}, timeout=TIMEOUT)
    assert r.status_code == 503
    snap = wait_stats(gw.url, lambda x: x["traffic"]["requests_today"] >= 3)
    assert snap["active_users"] == 0 and snap["sessions"] == [], summary(snap)
    assert snap["traffic"]["requests_today"] == 3, summary(snap)
