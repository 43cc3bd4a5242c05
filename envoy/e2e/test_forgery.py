"""(g) Forged cookies count as nobody; identity headers from clients never reach the app."""

import secrets

import requests
from flask import Flask

import helpers
from helpers import TIMEOUT, login, summary, wait_stats


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


def test_forged_cookies_count_as_nobody(envoy):
    base = envoy.url
    for value in FORGED:
        r = requests.get(base + "/healthz", cookies={"session": value}, timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers.get("x-demo-app") == "1", r.status_code
        r = requests.get(base + "/api/v1/me", cookies={"session": value}, timeout=TIMEOUT)
        assert r.status_code == 401 and r.headers.get("x-demo-app") == "1", r.status_code
        # ...and it opens no door to the stats either.
        r = requests.get(base + helpers.STATS_PATH, cookies={"session": value}, timeout=TIMEOUT)
        assert r.status_code in (401, 403) and "x-demo-app" not in r.headers, r.status_code
    snap = wait_stats(base, lambda s: s["traffic"]["anonymous_requests_today"] >= 2 * len(FORGED))
    assert snap["active_users"] == 0, summary(snap)
    assert snap["sessions"] == [], summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == 0, summary(snap)


def test_forged_cookie_next_to_a_real_session_is_not_counted(envoy):
    base = envoy.url
    real = login(base, "student3")
    assert real.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    for value in FORGED:
        r = requests.get(base + "/api/v1/courses", cookies={"session": value}, timeout=TIMEOUT)
        assert r.status_code == 401
    snap = wait_stats(base, lambda s: s["active_sessions"] == 1)
    assert snap["active_users"] == 1 and snap["active_sessions"] == 1, summary(snap)
    assert [x["username"] for x in snap["sessions"]] == ["student3"]


IDENTITY_HEADERS = {
    "user_id_header": "x-demo-user-id",
    "username_header": "x-demo-username",
    "role_header": "x-demo-role",
}


def test_client_identity_headers_are_stripped(start_envoy):
    ep = start_envoy(dict(helpers.PLUGIN_CONFIG, **IDENTITY_HEADERS))
    spoof = {"X-Demo-User-Id": "1", "x-demo-username": "admin_user", "X-DEMO-ROLE": "admin",
             "X-Unrelated": "kept"}
    r = requests.get(ep.url + "/api/v1/debug/headers", headers=spoof, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    seen = r.json()["headers"]
    for name in IDENTITY_HEADERS.values():
        assert name not in seen, f"{name} reached the app: {seen}"
    assert seen.get("x-unrelated") == ["kept"], seen

    # A student claiming to be admin through request headers is still a student: identity comes
    # from the app's login response (its X-Demo-* response headers here).
    s = login(ep.url, "student1", headers=spoof)
    r = s.get(ep.url + "/api/v1/debug/headers", timeout=TIMEOUT)
    for name in IDENTITY_HEADERS.values():
        assert name not in r.json()["headers"]
    snap = wait_stats(ep.url, lambda x: x["active_sessions"] == 1)
    [x] = snap["sessions"]
    assert (x["user_id"], x["username"], x["role"]) == ("3", "student1", "student"), summary(snap)
    assert snap["by_role"] == {"admin": 0, "teacher": 0, "student": 1}
    # And the spoofed role opens no door to the stats.
    r = s.get(ep.url + helpers.STATS_PATH, headers={"X-Demo-Role": "admin"}, timeout=TIMEOUT)
    assert r.status_code == 403, r.status_code
