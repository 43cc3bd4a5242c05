"""Bots, crawlers, anonymous page loads, health checks, failed logins and forged cookies count as
nobody; identity headers sent by clients never reach the app."""

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


def test_bots_anonymous_pages_and_health_checks_count_as_nobody(gateway):
    base = gateway.url
    proxied = 0

    def get(path, agent, session=None):
        nonlocal proxied
        r = (session or requests).get(base + path, headers={"User-Agent": agent}, timeout=TIMEOUT,
                                      allow_redirects=False)
        assert r.headers.get("x-demo-app") == "1", f"{path} not answered by the app: {r.status_code}"
        proxied += 1
        return r

    # Anonymous page loads by a browser.
    assert get("/", BROWSER_UA).status_code == 200
    assert get("/dashboard", BROWSER_UA).status_code == 302  # redirects reach the client
    assert get("/api/v1/me", BROWSER_UA).status_code == 401
    # Health checks.
    for _ in range(3):
        assert get("/healthz", "kube-probe/1.31").status_code == 200
        assert get("/healthz", "Envoy/HC").status_code == 200
    # A failed login by a browser.
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
    if gateway.debug:
        assert helpers.debug(base)["stored_sessions"] == 0


def test_fresh_gateway_reports_nobody(gateway):
    snap = wait_stats(gateway.url, lambda s: True)
    assert snap["active_users"] == 0
    assert snap["active_sessions"] == 0
    assert snap["sessions"] == []
    assert snap["by_role"] == NOBODY_BY_ROLE
    assert snap["window_seconds"] == 60
    for key in ("current_rps", "avg_response_time_ms", "requests_today",
                "authenticated_requests_today", "anonymous_requests_today"):
        assert key in snap["traffic"], summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == 0


def test_failed_login_counts_nobody(gateway):
    base = gateway.url
    for payload in ({"username": "admin_user", "password": "wrong"},
                    {"username": "nobody", "password": "password"}):
        r = requests.post(base + "/api/v1/auth/login", json=payload, timeout=TIMEOUT)
        assert r.status_code == 401 and r.json() == {"error": "invalid credentials"}
    snap = wait_stats(base, lambda s: s["traffic"]["anonymous_requests_today"] >= 2)
    assert snap["active_users"] == 0 and snap["sessions"] == [], summary(snap)


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


def _forged_requests(base, paths):
    """Each forged cookie on ``paths`` (the app's answers), then on the stats route (refused)."""
    for value in FORGED:
        for path, status in paths:
            r = requests.get(base + path, cookies={"session": value}, timeout=TIMEOUT)
            assert r.status_code == status and r.headers.get("x-demo-app") == "1", r.status_code
        # ...and it opens no door to the stats either.
        r = requests.get(base + helpers.STATS_PATH, cookies={"session": value}, timeout=TIMEOUT)
        assert r.status_code in (401, 403) and "x-demo-app" not in r.headers, r.status_code


def test_forged_cookies_count_as_nobody(gateway):
    base = gateway.url
    _forged_requests(base, [("/healthz", 200), ("/api/v1/me", 401)])
    snap = wait_stats(base, lambda s: s["traffic"]["anonymous_requests_today"] >= 2 * len(FORGED))
    assert snap["active_users"] == 0, summary(snap)
    assert snap["sessions"] == [], summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == 0, summary(snap)


def test_forged_cookie_next_to_a_real_session_is_not_counted(gateway):
    base = gateway.url
    real = login(base, "student3")
    assert real.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    _forged_requests(base, [("/api/v1/courses", 401)])
    # Forged cookies may be retried once (they might be a rotation not written yet), then anonymous.
    # Envoy settles each buffered request at its worker's flush: wait for both kinds.
    snap = wait_stats(base, lambda s: s["active_sessions"] == 1
                      and s["traffic"]["anonymous_requests_today"] >= len(FORGED)
                      and s["traffic"]["authenticated_requests_today"] >= 2)
    assert snap["traffic"]["anonymous_requests_today"] == len(FORGED), summary(snap)
    assert snap["active_users"] == 1 and snap["active_sessions"] == 1, summary(snap)
    assert [x["username"] for x in snap["sessions"]] == ["student3"], summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == 2, summary(snap)


IDENTITY_HEADERS = {
    "user_id_header": "x-demo-user-id",
    "username_header": "x-demo-username",
    "role_header": "x-demo-role",
}


def test_client_identity_headers_are_stripped(start_gateway):
    gw = start_gateway(dict(helpers.PLUGIN_CONFIG, **IDENTITY_HEADERS))
    spoof = {"X-Demo-User-Id": "1", "x-demo-username": "admin_user", "X-DEMO-ROLE": "admin",
             "X-Unrelated": "kept"}
    r = requests.get(gw.url + "/api/v1/debug/headers", headers=spoof, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    seen = r.json()["headers"]
    for name in IDENTITY_HEADERS.values():
        assert name not in seen, f"{name} reached the app: {seen}"
    assert seen.get("x-unrelated") == ["kept"], seen

    # A student claiming to be admin through request headers is still a student: identity comes
    # from the app's login response (its X-Demo-* response headers here).
    s = login(gw.url, "student1", headers=spoof)
    r = s.get(gw.url + "/api/v1/debug/headers", timeout=TIMEOUT)
    for name in IDENTITY_HEADERS.values():
        assert name not in r.json()["headers"]
    snap = wait_stats(gw.url, lambda x: x["active_sessions"] == 1)
    [x] = snap["sessions"]
    assert (x["user_id"], x["username"], x["role"]) == ("3", "student1", "student"), summary(snap)
    assert snap["by_role"] == {"admin": 0, "teacher": 0, "student": 1}
    # And the spoofed role opens no door to the stats.
    r = s.get(gw.url + helpers.STATS_PATH, headers={"X-Demo-Role": "admin"}, timeout=TIMEOUT)
    assert r.status_code == 403, r.status_code
