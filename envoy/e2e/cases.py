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


def three_logins_are_three_users_with_details(base):
    """Three demo users log in (each also sending an untrusted X-Forwarded-For) and make one
    request each: three users with the right identity, IP, agent, times; 6 authenticated requests."""
    from datetime import timedelta

    h = _h()
    agents = {"admin_user": h.ua("admin-laptop"), "teacher1": h.ua("teacher-desk"),
              "student1": h.ua("student-phone")}
    before = h.now_utc() - timedelta(seconds=2)  # clock slack
    # A client-sent X-Forwarded-For is not trusted without client_ip_header.
    clients = {name: h.login(base, name, user_agent=agent, headers={"X-Forwarded-For": "198.51.100.7"})
               for name, agent in agents.items()}
    for s in clients.values():
        assert s.get(base + "/api/v1/me", timeout=h.TIMEOUT).status_code == 200

    snap = h.wait_stats(base, lambda s: s["active_sessions"] == 3
                        and s["traffic"]["authenticated_requests_today"] >= 6)
    assert snap["active_users"] == 3, h.summary(snap)
    assert snap["active_sessions"] == 3, h.summary(snap)
    assert snap["window_seconds"] == 60
    assert snap["by_role"] == {"admin": 1, "teacher": 1, "student": 1}, h.summary(snap)
    assert len(snap["sessions"]) == 3, h.summary(snap)
    generated = h.parse_time(snap["generated_at"])
    assert before <= generated <= h.now_utc() + timedelta(seconds=2)
    by_name = {x["username"]: x for x in snap["sessions"]}
    assert set(by_name) == set(agents), h.summary(snap)
    for name, x in by_name.items():
        user_id, role = h.USERS[name]
        assert x["user_id"] == user_id, x
        assert x["role"] == role, x
        assert x["ip"] == "127.0.0.1", x
        assert x["user_agent"] == agents[name], x
        assert h.is_uuid(x["session_id"]), x
        login_time, last = h.parse_time(x["login_time"]), h.parse_time(x["last_activity"])
        assert before <= login_time <= last <= generated + timedelta(seconds=1), x
        assert isinstance(x["duration_seconds"], (int, float)), x
        assert 0 <= x["duration_seconds"] <= (generated - login_time).total_seconds() + 1, x
    assert len({x["session_id"] for x in snap["sessions"]}) == 3
    traffic = snap["traffic"]
    assert traffic["authenticated_requests_today"] == 6, h.summary(snap)  # 3 logins + 3 requests
    assert traffic["requests_today"] == (traffic["authenticated_requests_today"]
                                         + traffic["anonymous_requests_today"]), h.summary(snap)


def html_form_login_is_counted(base):
    h = _h()
    s = h.login(base, "student2", user_agent=h.ua("form"), form=True)
    assert s.get(base + "/dashboard", timeout=h.TIMEOUT).status_code == 200
    snap = h.wait_stats(base, lambda s: s["active_sessions"] == 1)
    assert snap["active_users"] == 1, h.summary(snap)
    assert snap["by_role"] == {"admin": 0, "teacher": 0, "student": 1}, h.summary(snap)
    [x] = snap["sessions"]
    assert (x["user_id"], x["username"], x["role"]) == ("4", "student2", "student"), x


def revoked_token_is_answered_401_at_the_edge(base):
    """With the demo JWT secret and enforce_revocation: a revoked token gets 401 before the app on
    every route and never restarts its session; the user's next token is a new session."""
    from jwt_tokens import app_token

    h = _h()
    token = app_token(base, "student3")
    call = lambda path, t=token: requests.get(base + path, headers={"Authorization": f"Bearer {t}"},  # noqa: E731
                                              timeout=h.TIMEOUT)
    assert call("/api/v1/me").status_code == 200
    snap = h.wait_stats(base, lambda x: x["active_users"] == 1)
    sid = snap["sessions"][0]["session_id"]
    r = requests.post(f"{base}{PREFIX}/sessions/{sid}/revoke", headers=h.bearer(), timeout=h.TIMEOUT)
    assert r.status_code == 200, r.text
    for path in ("/api/v1/me", "/api/v1/courses", "/healthz", "/api/v1/auth/login"):
        r = call(path)
        assert r.status_code == 401 and r.json() == {"error": "session revoked"}, (path, r.status_code)
        assert "x-demo-app" not in r.headers
    snap = h.stats(base)
    assert snap["active_sessions"] == 0, h.summary(snap)
    # Another token of the same user is a new session and works.
    assert call("/api/v1/me", app_token(base, "student3")).status_code == 200
    snap = h.wait_stats(base, lambda x: x["active_sessions"] == 1)
    assert snap["active_sessions"] == 1 and snap["sessions"][0]["session_id"] != sid, h.summary(snap)
    text = h.metrics_of(base)
    assert (h.metric(text, "headcount_logins_total"), h.metric(text, "headcount_revocations_total")) == (2, 1), text
