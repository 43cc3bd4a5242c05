"""Admin revocation (enforced at the edge or only uncounted), the live-session cap and the per-user
limit with exact counts, privacy options, form login routes, and the cap under ten thousand users."""

import time
from concurrent.futures import ThreadPoolExecutor

import requests

import helpers
from helpers import (PLUGIN_CONFIG, PREFIX, REVOKED, TIMEOUT, bearer, browse, events_of, login, metric, metrics_of,
                     refused, revoke, session_of, stats, summary, ua, wait_stats)
from jwt_tokens import DEFAULT_JWT_SECRET, claims, sign_jwt


def test_revocation_blocks_every_value_of_the_session_at_the_edge(start_gateway):
    gw = start_gateway(dict(PLUGIN_CONFIG, enforce_revocation=True))
    base = gw.url
    victim = login(base, "student1", user_agent=ua("victim"))
    # Login value, then three rotations (the Worker keeps the newest two as aliases, the first
    # only for 30 s): every one of them is refused after the revocation.
    values = browse(victim, base, 3)
    other = login(base, "student2", user_agent=ua("bystander"))
    sid = session_of(base, "student1")["session_id"]

    assert revoke(base, sid).status_code == 401
    assert revoke(base, sid, headers=bearer("wrong-token-123")).status_code == 403
    student = login(base, "student3", user_agent=ua("student"))
    # No wait: a fleet node lets a login's answer go once the session is known
    # fleet-wide, so the next node (the front alternates) finds it at once.
    r = student.post(f"{base}{PREFIX}/sessions/{sid}/revoke", timeout=TIMEOUT)
    assert r.status_code == 403 and "x-demo-app" not in r.headers
    r = requests.get(f"{base}{PREFIX}/sessions/{sid}/revoke", headers=bearer(), timeout=TIMEOUT)
    assert r.status_code == 405 and "x-demo-app" not in r.headers
    r = revoke(base, "not-a-uuid", headers=bearer())
    assert r.status_code == 404 and "x-demo-app" not in r.headers
    assert revoke(base, "0b7c5d3e-1f2a-4b5c-8d9e-0f1a2b3c4d5e", headers=bearer()).status_code == 404

    # The six proxied requests so far (three logins, three browses) are all counted, and settled
    # as authenticated, before the baseline is read: Envoy does both at its worker's flushes.
    before = wait_stats(base, lambda x: x["traffic"]["authenticated_requests_today"] >= 6)["traffic"]
    assert (before["requests_today"], before["authenticated_requests_today"]) == (6, 6), before
    r = revoke(base, sid, headers=bearer())
    assert r.status_code == 200 and r.json() == {"revoked": True, "session_id": sid}, r.text
    assert r.headers.get("cache-control") == "no-store"
    gw.revocation_reached_every_node()

    # Every value the session ever had is refused before the app: current, aliases, the first.
    r = victim.get(base + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 401 and r.json() == REVOKED and "x-demo-app" not in r.headers
    for value in reversed(values):
        refused(base, value)
    refused(base, values[0], path="/dashboard")
    # Also on the login route (a revoked cookie cannot sneak through it), and for any user agent.
    r = requests.post(base + "/api/v1/auth/login", cookies={"session": values[-1]},
                      json={"username": "student1", "password": "password"}, timeout=TIMEOUT)
    assert r.status_code == 401 and "x-demo-app" not in r.headers
    r = requests.get(base + "/api/v1/me", cookies={"session": values[-1]},
                     headers={"User-Agent": "Googlebot/2.1"}, timeout=TIMEOUT)
    assert r.status_code == 401 and "x-demo-app" not in r.headers
    # Others are untouched.
    r = other.get(base + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    # Refused requests are neither traffic nor activity: only the bystander's counted.
    snap = wait_stats(base, lambda x: x["traffic"]["requests_today"] >= before["requests_today"] + 1
                      and x["traffic"]["authenticated_requests_today"] >= before["authenticated_requests_today"] + 1)
    assert snap["traffic"]["requests_today"] == before["requests_today"] + 1, summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == before["authenticated_requests_today"] + 1
    assert sorted(s["username"] for s in snap["sessions"]) == ["student2", "student3"], summary(snap)
    assert revoke(base, sid, headers=bearer()).status_code == 404

    events = events_of(base)["events"]
    assert (events[0]["kind"], events[0]["username"], events[0]["session_id"]) == ("revocation", "student1", sid)
    assert events[0]["by"] == {"via": "admin_token"}, events[0]  # who revoked it
    assert all("by" not in e for e in events[1:]), events  # logins name nobody
    text = metrics_of(base)
    assert metric(text, "headcount_revocations_total") == 1, text
    assert metric(text, "headcount_logouts_total") == 0, text
    if gw.debug:
        d = helpers.debug(base)
        assert d["stored_revoked"] == 4, d  # the login value and three rotations


def test_admin_session_may_revoke_and_the_app_never_sees_the_revoked_cookie(start_gateway, demo_app):
    gw = start_gateway(dict(PLUGIN_CONFIG, enforce_revocation=True))
    base = gw.url
    admin = login(base, "admin_user", user_agent=ua("admin"))
    victim = login(base, "teacher1", user_agent=ua("victim"))
    value = victim.cookies["session"]
    sid = session_of(base, "teacher1")["session_id"]
    # As the dashboard sends it: the admin's cookie, and the header a cross-site form cannot send.
    r = admin.post(f"{base}{PREFIX}/sessions/{sid}/revoke", headers={"X-Headcount-Request": "1"},
                   timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["revoked"] is True, r.text
    gw.revocation_reached_every_node()
    # The event names the admin who revoked it, and their session.
    admin_sid = session_of(base, "admin_user")["session_id"]
    revoked = [e for e in events_of(base)["events"] if e["kind"] == "revocation"]
    assert [(e["username"], e["session_id"]) for e in revoked] == [("teacher1", sid)], revoked
    assert revoked[0]["by"] == {"via": "admin_session", "username": "admin_user", "session_id": admin_sid}, revoked
    app_log_before = demo_app.log_text()
    for _ in range(3):
        refused(base, value, path="/api/v1/courses")
    assert demo_app.log_text().count("/api/v1/courses") == app_log_before.count("/api/v1/courses")


def test_without_enforcement_a_revoked_session_is_only_no_longer_counted(start_gateway):
    gw = start_gateway(PLUGIN_CONFIG)
    base = gw.url
    s = login(base, "teacher1", user_agent=ua("teacher"))
    sid = session_of(base, "teacher1")["session_id"]
    # The login is in the figures before the revocation (with Envoy a request is attributed when
    # its thread flushes, and a session revoked by then makes it anonymous).
    wait_stats(base, lambda x: x["traffic"]["authenticated_requests_today"] == 1)
    r = revoke(base, sid, headers=bearer())
    assert r.status_code == 200 and r.json() == {"revoked": True, "session_id": sid}, r.text
    r = s.get(base + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    snap = wait_stats(base, lambda x: x["traffic"]["anonymous_requests_today"] == 1)
    assert snap["active_sessions"] == 0 and snap["sessions"] == [], summary(snap)
    assert snap["traffic"]["anonymous_requests_today"] == 1, summary(snap)
    assert metric(metrics_of(base), "headcount_revocations_total") == 1
    if gw.debug:
        assert helpers.debug(base)["stored_revoked"] == 0


def test_per_user_limit_ends_the_oldest_session(start_gateway):
    gw = start_gateway(dict(PLUGIN_CONFIG, max_sessions_per_user=2))
    base = gw.url
    devices = [login(base, "student3", user_agent=ua(f"device-{i}")) for i in range(3)]
    login(base, "admin_user", user_agent=ua("admin"))
    login(base, "admin_user", user_agent=ua("admin-2"))
    snap = wait_stats(base, lambda x: x["active_sessions"] == 4)
    agents = sorted(s["user_agent"] for s in snap["sessions"] if s["username"] == "student3")
    assert agents == [ua("device-1"), ua("device-2")], summary(snap)
    assert snap["active_sessions"] == 4 and snap["active_users"] == 2, summary(snap)
    events = events_of(base)["events"]
    assert [(e["kind"], e["username"]) for e in events if e["kind"] == "eviction"] == [("eviction", "student3")]
    text = metrics_of(base)
    assert metric(text, "headcount_evictions_total") == 1 and metric(text, "headcount_logins_total") == 5, text
    # A logout frees a slot: the next login evicts nobody.
    assert devices[1].post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    login(base, "student3", user_agent=ua("device-3"))
    snap = wait_stats(base, lambda x: x["active_sessions"] == 4
                      and ua("device-3") in {s["user_agent"] for s in x["sessions"]})
    agents = sorted(s["user_agent"] for s in snap["sessions"] if s["username"] == "student3")
    assert agents == [ua("device-2"), ua("device-3")], summary(snap)
    assert metric(metrics_of(base), "headcount_evictions_total") == 1
    # The evicted device still reaches the app, as nobody.
    r = devices[0].get(base + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"


FORM_LOGIN_ROUTES = [
    {"path": "/api/v1/auth/login"},
    {"path": "/login", "success_statuses": [302], "success_location_prefix": "/dashboard",
     "identity": ["request_body"]},
]


def test_privacy_options_store_less(start_gateway):
    """With anonymize_ip and reduce_user_agent."""
    base = start_gateway(dict(PLUGIN_CONFIG, anonymize_ip=True, reduce_user_agent=True)).url
    login(base, "student1", user_agent=ua("private"))
    s = session_of(base, "student1")
    assert s["ip"] == "127.0.0.0", s
    assert s["user_agent"] == "Firefox 140 on Linux", s


def test_form_login_route_counts_only_a_redirect_to_the_dashboard(start_gateway):
    """With login_routes=FORM_LOGIN_ROUTES: a failed form login also sets a cookie and redirects."""
    base = start_gateway(dict(PLUGIN_CONFIG, login_routes=FORM_LOGIN_ROUTES)).url
    s = requests.Session()
    s.headers["User-Agent"] = ua("form")
    bad = s.post(base + "/login", data={"username": "teacher1", "password": "nope"},
                 allow_redirects=False, timeout=TIMEOUT)
    assert bad.status_code == 302 and bad.headers["location"].startswith("/?error")
    assert s.cookies.get("session"), "the failed login set a cookie (the hard case)"
    good = s.post(base + "/login", data={"username": "teacher1", "password": "password"},
                  allow_redirects=False, timeout=TIMEOUT)
    assert good.status_code == 302 and good.headers["location"] == "/dashboard"
    snap = wait_stats(base, lambda x: x["active_sessions"] >= 1)
    assert [(x["username"], x["role"]) for x in snap["sessions"]] == [("teacher1", "unknown")], summary(snap)
    # The JSON route still works beside it.
    login(base, "admin_user", user_agent=ua("json"))
    assert wait_stats(base, lambda x: x["active_users"] == 2)["active_users"] == 2


def test_ten_thousand_sessions_over_the_cap_keep_the_numbers_exact(start_gateway, cap=200, over=10_000, clients=8):
    """``cap + over`` distinct users each start a session (one verified JWT each: the cheapest way
    to make a session through the real gateway) from ``clients`` parallel clients, against
    max_sessions=cap: exactly ``cap`` sessions stay, ``over`` are evicted, traffic keeps flowing."""
    base = start_gateway(dict(PLUGIN_CONFIG, jwt={"hs256_secret": DEFAULT_JWT_SECRET}, max_sessions=cap)).url
    tokens = [sign_jwt(claims(f"user{i}", "student", str(1000 + i)), DEFAULT_JWT_SECRET)
              for i in range(cap + over)]

    def run(chunk):
        with requests.Session() as s:
            for t in chunk:
                r = s.get(base + "/healthz", headers={"Authorization": f"Bearer {t}"}, timeout=TIMEOUT)
                assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, [tokens[i::clients] for i in range(clients)]))
    print(f"{cap + over} sessions started in {time.monotonic() - t0:.1f}s")
    snap = wait_stats(base, lambda x: x["active_sessions"] == cap
                        and x["traffic"]["requests_today"] == cap + over
                        and x["traffic"]["authenticated_requests_today"] == cap + over, timeout=15)
    assert snap["active_sessions"] == cap and snap["active_users"] == cap, summary(snap)
    assert snap["by_role"]["student"] == cap
    assert snap["traffic"]["authenticated_requests_today"] == cap + over, snap["traffic"]
    metrics = requests.get(base + PREFIX + "/metrics", headers=bearer(), timeout=TIMEOUT).text
    assert metric(metrics, "headcount_evictions_total") == over, metrics
    assert metric(metrics, "headcount_logins_total") == cap + over, metrics
    # Still flowing, and a kept session is still followed (no new session, no eviction).
    kept = next(s["username"] for s in snap["sessions"])
    token = tokens[int(kept.removeprefix("user"))]
    assert requests.get(base + "/healthz", headers={"Authorization": f"Bearer {token}"},
                        timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: x["traffic"]["authenticated_requests_today"] == cap + over + 1)
    assert snap["traffic"]["authenticated_requests_today"] == cap + over + 1, snap["traffic"]
    assert snap["active_sessions"] == cap, summary(snap)
