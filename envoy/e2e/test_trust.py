"""Issue 7 in a real Envoy: revocation, the session cap, per-user limits, login routes, privacy."""

from concurrent.futures import ThreadPoolExecutor

import requests

import cases
from helpers import PLUGIN_CONFIG, TIMEOUT, bearer, login, stats, summary, ua, wait_stats

PREFIX = "/__headcount"


def session_of(base, username):
    snap = wait_stats(base, lambda x: any(s["username"] == username for s in x["sessions"]))
    return next(s for s in snap["sessions"] if s["username"] == username)


def revoke(base, session_id, **kw):
    return requests.post(f"{base}{PREFIX}/sessions/{session_id}/revoke", timeout=TIMEOUT, **kw)


def test_revocation_blocks_every_value_of_the_session_at_the_edge(start_envoy):
    envoy = start_envoy(dict(PLUGIN_CONFIG, enforce_revocation=True))
    base = envoy.url
    victim = login(base, "student1", user_agent=ua("victim"))
    first_value = victim.cookies["session"]
    for _ in range(3):  # each response rotates the cookie
        assert victim.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    assert victim.cookies["session"] != first_value
    other = login(base, "student2", user_agent=ua("bystander"))
    sid = session_of(base, "student1")["session_id"]

    assert revoke(base, sid).status_code == 401
    assert revoke(base, sid, headers=bearer("wrong-token-123")).status_code == 403
    student = login(base, "student3", user_agent=ua("student"))
    assert student.post(f"{base}{PREFIX}/sessions/{sid}/revoke", timeout=TIMEOUT).status_code == 403
    r = revoke(base, sid, headers=bearer())
    assert r.status_code == 200 and r.json() == {"revoked": True, "session_id": sid}, r.text

    r = victim.get(base + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 401 and r.json() == {"error": "session revoked"}
    assert "x-demo-app" not in r.headers  # never reached the app
    old = requests.get(base + "/api/v1/me", cookies={"session": first_value}, timeout=TIMEOUT)
    assert old.status_code == 401 and "x-demo-app" not in old.headers
    assert other.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    snap = stats(base)
    assert [s["username"] for s in snap["sessions"] if s["username"] == "student1"] == [], summary(snap)
    assert revoke(base, sid, headers=bearer()).status_code == 404
    kinds = [e["kind"] for e in requests.get(base + PREFIX + "/events", headers=bearer(), timeout=TIMEOUT).json()["events"]]
    assert kinds[0] == "revocation", kinds


def test_without_enforcement_a_revoked_session_is_only_no_longer_counted(start_envoy):
    envoy = start_envoy(PLUGIN_CONFIG)
    s = login(envoy.url, "teacher1", user_agent=ua("teacher"))
    sid = session_of(envoy.url, "teacher1")["session_id"]
    assert revoke(envoy.url, sid, headers=bearer()).status_code == 200
    r = s.get(envoy.url + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    snap = wait_stats(envoy.url, lambda x: x["active_sessions"] == 0)
    assert snap["active_sessions"] == 0, summary(snap)


def test_the_cap_evicts_the_longest_idle_and_counts_stay_exact(start_envoy):
    envoy = start_envoy(dict(PLUGIN_CONFIG, max_sessions=20))
    base = envoy.url
    early = [login(base, "student1", user_agent=ua(f"early-{i}")) for i in range(5)]
    # Keep the first two busy so they are not the longest idle.
    for s in early[:2]:
        s.get(base + "/api/v1/me", timeout=TIMEOUT)
    wait_stats(base, lambda x: x["active_sessions"] == 5)
    with ThreadPoolExecutor(8) as pool:
        later = list(pool.map(lambda i: login(base, "student2", user_agent=ua(f"late-{i}")), range(60)))
    snap = wait_stats(base, lambda x: x["active_sessions"] == 20)
    assert snap["active_sessions"] == 20 and snap["active_users"] <= 2, summary(snap)
    metrics = requests.get(base + PREFIX + "/metrics", headers=bearer(), timeout=TIMEOUT).text
    assert "headcount_evictions_total 45\n" in metrics, metrics
    assert "headcount_logins_total 65\n" in metrics, metrics
    # Traffic keeps flowing for evicted and kept sessions alike.
    assert early[4].get(base + "/healthz", timeout=TIMEOUT).status_code == 200
    assert later[-1].get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200


def test_per_user_limit_ends_the_oldest_session(start_envoy):
    envoy = start_envoy(dict(PLUGIN_CONFIG, max_sessions_per_user=2))
    for i in range(3):
        login(envoy.url, "student3", user_agent=ua(f"device-{i}"))
    login(envoy.url, "admin_user", user_agent=ua("admin"))
    snap = wait_stats(envoy.url, lambda x: x["active_sessions"] == 3)
    agents = sorted(s["user_agent"] for s in snap["sessions"] if s["username"] == "student3")
    assert agents == [ua("device-1"), ua("device-2")], summary(snap)
    events = requests.get(envoy.url + PREFIX + "/events", headers=bearer(), timeout=TIMEOUT).json()["events"]
    assert [(e["kind"], e["username"]) for e in events if e["kind"] == "eviction"] == [("eviction", "student3")]


def test_privacy_options_store_less(start_envoy):
    envoy = start_envoy(dict(PLUGIN_CONFIG, anonymize_ip=True, reduce_user_agent=True))
    cases.privacy_options_store_less(envoy.url)


def test_form_login_route_counts_only_a_redirect_to_the_dashboard(start_envoy):
    envoy = start_envoy(dict(PLUGIN_CONFIG, login_routes=cases.FORM_LOGIN_ROUTES))
    cases.form_login_counts_only_a_redirect_to_the_dashboard(envoy.url)


def test_ten_thousand_sessions_over_the_cap_keep_the_numbers_exact(start_envoy):
    """10,200 distinct users at a cap of 200, from 8 clients across both Envoy workers."""
    envoy = start_envoy(dict(PLUGIN_CONFIG, jwt={"hs256_secret": cases.DEFAULT_JWT_SECRET}, max_sessions=200))
    cases.sessions_over_the_cap_keep_the_numbers_exact(envoy.url, cap=200, over=10_000)
