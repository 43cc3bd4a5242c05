"""Test bodies that both end-to-end suites run against their own gateway (a real Envoy here, the
Worker in workerd in workers/e2e), so the two hosts are held to the same rules.

Each case takes the gateway's base URL and uses the calling suite's own ``helpers`` module
(imported at call time: both suites name it ``helpers``)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import requests

from jwt_tokens import DEFAULT_JWT_SECRET, claims, sign_jwt

PREFIX = "/__headcount"

FORM_LOGIN_ROUTES = [
    {"path": "/api/v1/auth/login"},
    {"path": "/login", "success_statuses": [302], "success_location_prefix": "/dashboard",
     "identity": ["request_body"]},
]


def _h():
    import helpers
    return helpers


def _session_of(base, username):
    h = _h()
    snap = h.wait_stats(base, lambda x: any(s["username"] == username for s in x["sessions"]))
    return next(s for s in snap["sessions"] if s["username"] == username)


def privacy_options_store_less(base):
    """With anonymize_ip and reduce_user_agent."""
    h = _h()
    h.login(base, "student1", user_agent=h.ua("private"))
    s = _session_of(base, "student1")
    assert s["ip"] == "127.0.0.0", s
    assert s["user_agent"] == "Firefox 140 on Linux", s


def form_login_counts_only_a_redirect_to_the_dashboard(base):
    """With login_routes=FORM_LOGIN_ROUTES: a failed form login also sets a cookie and redirects."""
    h = _h()
    s = requests.Session()
    s.headers["User-Agent"] = h.ua("form")
    bad = s.post(base + "/login", data={"username": "teacher1", "password": "nope"},
                 allow_redirects=False, timeout=h.TIMEOUT)
    assert bad.status_code == 302 and bad.headers["location"].startswith("/?error")
    assert s.cookies.get("session"), "the failed login set a cookie (the hard case)"
    good = s.post(base + "/login", data={"username": "teacher1", "password": "password"},
                  allow_redirects=False, timeout=h.TIMEOUT)
    assert good.status_code == 302 and good.headers["location"] == "/dashboard"
    snap = h.wait_stats(base, lambda x: x["active_sessions"] >= 1)
    assert [(x["username"], x["role"]) for x in snap["sessions"]] == [("teacher1", "unknown")], h.summary(snap)
    # The JSON route still works beside it.
    h.login(base, "admin_user", user_agent=h.ua("json"))
    assert h.wait_stats(base, lambda x: x["active_users"] == 2)["active_users"] == 2


def sessions_over_the_cap_keep_the_numbers_exact(base, cap, over, clients=8):
    """``cap + over`` distinct users each start a session (one verified JWT each: the cheapest way
    to make a session through the real gateway) from ``clients`` parallel clients, against
    max_sessions=cap: exactly ``cap`` sessions stay, ``over`` are evicted, traffic keeps flowing."""
    h = _h()
    tokens = [sign_jwt(claims(f"user{i}", "student", str(1000 + i)), DEFAULT_JWT_SECRET)
              for i in range(cap + over)]

    def run(chunk):
        with requests.Session() as s:
            for t in chunk:
                r = s.get(base + "/healthz", headers={"Authorization": f"Bearer {t}"}, timeout=h.TIMEOUT)
                assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, [tokens[i::clients] for i in range(clients)]))
    print(f"{cap + over} sessions started in {time.monotonic() - t0:.1f}s")
    snap = h.wait_stats(base, lambda x: x["active_sessions"] == cap
                        and x["traffic"]["requests_today"] == cap + over, timeout=15)
    assert snap["active_sessions"] == cap and snap["active_users"] == cap, h.summary(snap)
    assert snap["by_role"]["student"] == cap
    assert snap["traffic"]["authenticated_requests_today"] == cap + over, snap["traffic"]
    metrics = requests.get(base + PREFIX + "/metrics", headers=h.bearer(), timeout=h.TIMEOUT).text
    assert f"headcount_evictions_total {over}\n" in metrics, metrics
    assert f"headcount_logins_total {cap + over}\n" in metrics, metrics
    # Still flowing, and a kept session is still followed (no new session, no eviction).
    kept = next(s["username"] for s in snap["sessions"])
    token = tokens[int(kept.removeprefix("user"))]
    assert requests.get(base + "/healthz", headers={"Authorization": f"Bearer {token}"},
                        timeout=h.TIMEOUT).status_code == 200
    snap = h.wait_stats(base, lambda x: x["traffic"]["authenticated_requests_today"] == cap + over + 1)
    assert snap["traffic"]["authenticated_requests_today"] == cap + over + 1, snap["traffic"]
    assert snap["active_sessions"] == cap, h.summary(snap)
