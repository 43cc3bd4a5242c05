"""Logins as real apps do them, against the real frameworks (real_apps.py): a login that keeps the
session cookie the app set on the first visit (Express + express-session's defaults), a logout that
destroys the server-side session without clearing the cookie."""

from __future__ import annotations

import requests

from helpers import PLUGIN_CONFIG, TIMEOUT, summary, ua, wait_stats

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


def test_express_logins_that_keep_the_first_visit_cookie_are_counted(start_gateway, express_app):
    """One login after a first visit (no Set-Cookie on the login response), one direct: two users.
    Alice's logout destroys her server-side session and leaves her cookie: one user, and her next
    request (the app gives her a fresh, anonymous session) names nobody."""
    gw = start_gateway(EXPRESS_CONFIG, app=express_app)
    base = gw.url
    alice = express_login(base, "alice", visit_first=True)
    bob = express_login(base, "bob", visit_first=False)
    for s in (alice, bob):
        assert s.get(base + "/app", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda s: s["active_users"] == 2
                      and s["traffic"]["authenticated_requests_today"] == 4)
    assert sorted(x["username"] for x in snap["sessions"]) == ["alice", "bob"], summary(snap)
    # Each first visit and each login POST: alice's page before she logged in was anonymous.
    assert snap["traffic"]["anonymous_requests_today"] == 1, summary(snap)

    old = alice.cookies.get("connect.sid")
    r = alice.post(base + "/logout", allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code == 302 and "set-cookie" not in r.headers, r.headers
    snap = wait_stats(base, lambda s: s["active_users"] == 1)
    assert [x["username"] for x in snap["sessions"]] == ["bob"], summary(snap)
    # Her old cookie now leads nowhere: the app answers as for anyone new.
    r = alice.get(base + "/app", allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code == 302 and alice.cookies.get("connect.sid") != old
    snap = wait_stats(base, lambda s: s["traffic"]["anonymous_requests_today"] == 2)
    assert [x["username"] for x in snap["sessions"]] == ["bob"], summary(snap)


def test_a_second_login_that_keeps_the_cookie_replaces_the_session(start_gateway, express_app):
    """The same browser logs in as alice, then as carol, on one cookie: one session, carol's. A
    failed login on a kept cookie (redirect back to the form) changes nothing."""
    gw = start_gateway(EXPRESS_CONFIG, app=express_app)
    base = gw.url
    s = express_login(base, "alice", visit_first=True)
    snap = wait_stats(base, lambda x: x["active_sessions"] == 1)
    first = snap["sessions"][0]
    assert first["username"] == "alice", summary(snap)
    express_login(base, "carol", visit_first=False, s=s)
    snap = wait_stats(base, lambda x: [y["username"] for y in x["sessions"]] == ["carol"])
    assert snap["active_sessions"] == 1 and snap["active_users"] == 1, summary(snap)
    assert snap["sessions"][0]["session_id"] != first["session_id"], summary(snap)
    express_login(base, "bob", visit_first=False, s=s, password="wrong")
    assert s.get(base + "/app", timeout=TIMEOUT).status_code == 200  # still carol
    snap = wait_stats(base, lambda x: x["traffic"]["authenticated_requests_today"] == 4)
    assert [y["username"] for y in snap["sessions"]] == ["carol"], summary(snap)
