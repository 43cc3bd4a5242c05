"""Bots, crawlers, anonymous page loads, health checks and forged cookies count as nobody;
identity headers sent by clients never reach the app."""

import secrets

import requests
from flask import Flask

import helpers
from helpers import BROWSER_UA, NOBODY_BY_ROLE, TIMEOUT, login, summary, wait_stats

BOT_LOGINS = [
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "student1"),
    ("Mozilla/5.0 (compatible; AhrefsCrawler/7.0)", "teacher1"),
    ("Uptime-BOT-Scanner/3.1", "admin_user"),
    ("Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)", "student2"),
    ("Mozilla/5.0 (compatible; Baiduspider/2.0)", "student3"),
]


def test_bots_anonymous_pages_and_health_checks_count_as_nobody(worker):
    base = worker.url
    proxied = 0

    def get(path, agent, session=None):
        nonlocal proxied
        r = (session or requests).get(base + path, headers={"User-Agent": agent}, timeout=TIMEOUT,
                                      allow_redirects=False)
        assert r.headers.get("x-demo-app") == "1", f"{path} not answered by the app: {r.status_code}"
        proxied += 1
        return r

    assert get("/", BROWSER_UA).status_code == 200
    assert get("/dashboard", BROWSER_UA).status_code == 302  # redirects reach the client
    assert get("/api/v1/me", BROWSER_UA).status_code == 401
    for _ in range(3):
        assert get("/healthz", "kube-probe/1.31").status_code == 200
    r = requests.post(base + "/api/v1/auth/login", json={"username": "student1", "password": "nope"},
                      headers={"User-Agent": BROWSER_UA}, timeout=TIMEOUT)
    assert r.status_code == 401 and "session" not in r.cookies
    proxied += 1
    # Bots and crawlers that even log in successfully and browse with their cookie.
    for agent, user in BOT_LOGINS:
        s = login(base, user, user_agent=agent)
        proxied += 1
        assert get("/api/v1/courses", agent, session=s).status_code == 200
        assert get("/dashboard", agent, session=s).status_code == 200

    snap = wait_stats(base, lambda s: s["traffic"]["anonymous_requests_today"] >= proxied)
    assert snap["active_users"] == 0, summary(snap)
    assert snap["active_sessions"] == 0, summary(snap)
    assert snap["sessions"] == [], summary(snap)
    assert snap["by_role"] == NOBODY_BY_ROLE, summary(snap)
    traffic = snap["traffic"]
    assert traffic["authenticated_requests_today"] == 0, summary(snap)
    assert traffic["anonymous_requests_today"] == proxied, summary(snap)
    assert traffic["requests_today"] == proxied, summary(snap)
    assert helpers.debug(base)["stored_sessions"] == 0


def _foreign_flask_cookie(data: dict) -> str:
    """A well-formed Flask session cookie signed with some other key."""
    app = Flask("forger")
    app.secret_key = secrets.token_hex(16)
    return app.session_interface.get_signing_serializer(app).dumps(data)


FORGED = [
    secrets.token_urlsafe(40),
    _foreign_flask_cookie({"_permanent": True, "uid": 1, "n": 3}),
    "eyJ1aWQiOjF9.abcdef.0123456789abcdef",
]


def test_forged_cookies_count_as_nobody(worker):
    base = worker.url
    real = login(base, "student3")
    assert real.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    for value in FORGED:
        r = requests.get(base + "/api/v1/me", cookies={"session": value}, timeout=TIMEOUT)
        assert r.status_code == 401 and r.headers.get("x-demo-app") == "1", r.status_code
        # ...and it opens no door to the stats either.
        r = requests.get(base + helpers.STATS_PATH, cookies={"session": value}, timeout=TIMEOUT)
        assert r.status_code in (401, 403) and "x-demo-app" not in r.headers, r.status_code
    # Forged cookies are retried once (they might be a rotation not flushed yet), then anonymous.
    snap = wait_stats(base, lambda s: s["traffic"]["anonymous_requests_today"] >= len(FORGED))
    assert snap["traffic"]["anonymous_requests_today"] == len(FORGED), summary(snap)
    assert snap["active_users"] == 1 and snap["active_sessions"] == 1, summary(snap)
    assert [x["username"] for x in snap["sessions"]] == ["student3"], summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == 2, summary(snap)


IDENTITY_HEADERS = {
    "user_id_header": "x-demo-user-id",
    "username_header": "x-demo-username",
    "role_header": "x-demo-role",
}


def test_client_identity_headers_are_stripped(start_worker):
    wp = start_worker(dict(helpers.PLUGIN_CONFIG, **IDENTITY_HEADERS))
    spoof = {"X-Demo-User-Id": "1", "x-demo-username": "admin_user", "X-DEMO-ROLE": "admin",
             "X-Unrelated": "kept"}
    r = requests.get(wp.url + "/api/v1/debug/headers", headers=spoof, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    seen = r.json()["headers"]
    for name in IDENTITY_HEADERS.values():
        assert name not in seen, f"{name} reached the app: {seen}"
    assert seen.get("x-unrelated") == ["kept"], seen

    # A student claiming to be admin through request headers is still a student: identity comes
    # from the app's login response (its X-Demo-* response headers here).
    s = login(wp.url, "student1", headers=spoof)
    snap = wait_stats(wp.url, lambda x: x["active_sessions"] == 1)
    [x] = snap["sessions"]
    assert (x["user_id"], x["username"], x["role"]) == ("3", "student1", "student"), summary(snap)
    r = s.get(wp.url + helpers.STATS_PATH, headers={"X-Demo-Role": "admin"}, timeout=TIMEOUT)
    assert r.status_code == 403, r.status_code
