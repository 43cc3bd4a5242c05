"""The plugin's routes as a browser attacker sees them: a state change on an admin's ambient cookie
needs same-origin evidence (no CSRF), and every answer carries strict headers (the dashboard a CSP
that allows nothing but its own inline script and style, no framing)."""

from __future__ import annotations

import requests

from helpers import (ADMIN_TOKEN, PREFIX, TIMEOUT, bearer, login, revoke, session_of, summary, ua,
                     wait_stats)


def test_the_dashboard_and_data_routes_carry_strict_headers(gateway):
    page = requests.get(gateway.url + PREFIX + "/", timeout=TIMEOUT)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert policy.startswith("default-src 'none'; script-src 'sha256-"), policy
    assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy, policy
    assert page.headers["x-frame-options"] == "DENY"
    for r in (page, requests.get(gateway.url + PREFIX + "/stats", headers=bearer(), timeout=TIMEOUT),
              requests.get(gateway.url + PREFIX + "/stats", timeout=TIMEOUT)):
        assert r.headers["x-content-type-options"] == "nosniff", r.headers
        assert r.headers["referrer-policy"] == "no-referrer", r.headers
        assert r.headers["cache-control"] == "no-store", r.headers


def test_a_cross_site_revoke_on_the_admins_cookie_is_refused(gateway):
    """A page on another site makes the admin's browser POST the revoke route: refused (403), the
    victim's session lives. The same request from the dashboard's origin, or marked with the
    header a form cannot send, works; so does the admin token from anywhere (it is not ambient)."""
    base = gateway.url
    admin = login(base, "admin_user", user_agent=ua("csrf-admin"))
    for name in ("student1", "student2", "student3"):
        login(base, name, user_agent=ua(f"csrf-{name}"))
    wait_stats(base, lambda x: x["active_sessions"] == 4)
    cookie = {"Cookie": f"session={admin.cookies.get('session')}"}
    sid = session_of(base, "student1")["session_id"]
    forged = [
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {},  # nothing says where it came from
    ]
    for extra in forged:
        r = revoke(base, sid, headers={**cookie, **extra})
        assert r.status_code == 403 and "cross-site" in r.json()["error"], (extra, r.status_code, r.text)
    snap = wait_stats(base, lambda x: x["active_sessions"] == 4)
    assert "student1" in {x["username"] for x in snap["sessions"]}, summary(snap)

    same_origin = [
        {"Sec-Fetch-Site": "same-origin", "Origin": base},
        {"Origin": base},  # a browser without Sec-Fetch-Site
        {"X-Headcount-Request": "1"},
    ]
    for name, extra in zip(("student1", "student2", "student3"), same_origin):
        sid = session_of(base, name)["session_id"]
        r = revoke(base, sid, headers={**cookie, **extra})
        assert r.status_code == 200 and r.json()["revoked"] is True, (extra, r.status_code, r.text)
    snap = wait_stats(base, lambda x: x["active_sessions"] == 1)
    assert [x["username"] for x in snap["sessions"]] == ["admin_user"], summary(snap)

    # The admin token is not ambient: no origin check.
    login(base, "teacher1", user_agent=ua("csrf-token"))
    sid = session_of(base, "teacher1")["session_id"]
    r = revoke(base, sid, headers={**bearer(ADMIN_TOKEN), "Origin": "https://evil.example",
                                   "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 200, r.text
