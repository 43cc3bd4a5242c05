"""Issue 7 in the Worker: admin revocation (enforced at the edge, persisted, cleaned by the alarm),
the live-session cap and the per-user limit, with exact counts."""

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

import helpers
from helpers import (PLUGIN_CONFIG, SHORT_WINDOWS, TIMEOUT, bearer, login, stats, summary, ua, wait_debug,
                     wait_stats)
from helpers import events_of, metric, metrics_of

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "envoy" / "e2e"))
import cases  # noqa: E402  (test bodies shared with the Envoy suite)

PREFIX = "/__headcount"
REVOKED = {"error": "session revoked"}


def session_of(base, username):
    snap = wait_stats(base, lambda x: any(s["username"] == username for s in x["sessions"]))
    return next(s for s in snap["sessions"] if s["username"] == username)


def revoke(base, session_id, **kw):
    return requests.post(f"{base}{PREFIX}/sessions/{session_id}/revoke", timeout=TIMEOUT, **kw)


def browse(s, base, n):
    """n authenticated requests; the demo app rotates the cookie on each. Returns every value seen."""
    values = [s.cookies["session"]]
    for _ in range(n):
        r = s.get(base + "/api/v1/me", timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers.get("x-demo-app") == "1", r.status_code
        assert s.cookies["session"] != values[-1], "the demo app did not rotate the cookie"
        values.append(s.cookies["session"])
    return values


def refused(base, value, path="/api/v1/me"):
    """A request carrying `value` is answered 401 by the Worker, never by the app."""
    r = requests.get(base + path, cookies={"session": value}, headers={"User-Agent": ua("replay")},
                     timeout=TIMEOUT)
    assert r.status_code == 401, (r.status_code, r.text[:200])
    assert "x-demo-app" not in r.headers, "a revoked cookie reached the app"
    assert r.json() == REVOKED, r.text
    return r


def test_revocation_blocks_every_value_of_the_session_at_the_edge(start_worker):
    wp = start_worker(dict(PLUGIN_CONFIG, enforce_revocation=True))
    base = wp.url
    victim = login(base, "student1", user_agent=ua("victim"))
    # Login value, then three rotations: the newest two stay aliases, the first only for 30 s.
    values = browse(victim, base, 3)
    other = login(base, "student2", user_agent=ua("bystander"))
    sid = session_of(base, "student1")["session_id"]

    assert revoke(base, sid).status_code == 401
    assert revoke(base, sid, headers=bearer("wrong-token-123")).status_code == 403
    student = login(base, "student3", user_agent=ua("student"))
    r = student.post(f"{base}{PREFIX}/sessions/{sid}/revoke", timeout=TIMEOUT)
    assert r.status_code == 403 and "x-demo-app" not in r.headers
    r = requests.get(f"{base}{PREFIX}/sessions/{sid}/revoke", headers=bearer(), timeout=TIMEOUT)
    assert r.status_code == 405 and "x-demo-app" not in r.headers
    r = revoke(base, "not-a-uuid", headers=bearer())
    assert r.status_code == 404 and "x-demo-app" not in r.headers
    assert revoke(base, "0b7c5d3e-1f2a-4b5c-8d9e-0f1a2b3c4d5e", headers=bearer()).status_code == 404

    before = stats(base)["traffic"]
    r = revoke(base, sid, headers=bearer())
    assert r.status_code == 200 and r.json() == {"revoked": True, "session_id": sid}, r.text
    assert r.headers.get("cache-control") == "no-store"

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
    snap = wait_stats(base, lambda x: x["traffic"]["requests_today"] >= before["requests_today"] + 1)
    assert snap["traffic"]["requests_today"] == before["requests_today"] + 1, summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == before["authenticated_requests_today"] + 1
    assert sorted(s["username"] for s in snap["sessions"]) == ["student2", "student3"], summary(snap)
    assert revoke(base, sid, headers=bearer()).status_code == 404

    events = events_of(base)["events"]
    assert (events[0]["kind"], events[0]["username"], events[0]["session_id"]) == ("revocation", "student1", sid)
    text = metrics_of(base)
    assert metric(text, "headcount_revocations_total") == 1, text
    assert metric(text, "headcount_logouts_total") == 0, text
    d = helpers.debug(base)
    assert d["stored_revoked"] == 4, d  # the login value and three rotations


def test_admin_session_may_revoke_and_the_app_never_sees_the_revoked_cookie(start_worker, demo_app):
    wp = start_worker(dict(PLUGIN_CONFIG, enforce_revocation=True))
    base = wp.url
    admin = login(base, "admin_user", user_agent=ua("admin"))
    victim = login(base, "teacher1", user_agent=ua("victim"))
    value = victim.cookies["session"]
    sid = session_of(base, "teacher1")["session_id"]
    r = admin.post(f"{base}{PREFIX}/sessions/{sid}/revoke", timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["revoked"] is True, r.text
    app_log_before = demo_app.log_text()
    for _ in range(3):
        refused(base, value, path="/api/v1/courses")
    assert demo_app.log_text().count("/api/v1/courses") == app_log_before.count("/api/v1/courses")


def test_without_enforcement_a_revoked_session_is_only_no_longer_counted(start_worker):
    wp = start_worker(PLUGIN_CONFIG)
    base = wp.url
    s = login(base, "teacher1", user_agent=ua("teacher"))
    sid = session_of(base, "teacher1")["session_id"]
    r = revoke(base, sid, headers=bearer())
    assert r.status_code == 200 and r.json() == {"revoked": True, "session_id": sid}, r.text
    r = s.get(base + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    snap = wait_stats(base, lambda x: x["traffic"]["anonymous_requests_today"] == 1)
    assert snap["active_sessions"] == 0 and snap["sessions"] == [], summary(snap)
    assert snap["traffic"]["anonymous_requests_today"] == 1, summary(snap)
    assert metric(metrics_of(base), "headcount_revocations_total") == 1
    assert helpers.debug(base)["stored_revoked"] == 0


def test_the_cap_evicts_the_longest_idle_and_counts_stay_exact(start_worker):
    wp = start_worker(dict(PLUGIN_CONFIG, max_sessions=20))
    base = wp.url
    early = [login(base, "student1", user_agent=ua(f"early-{i}")) for i in range(5)]
    # Keep the first two busy: the three idle ones are evicted first.
    for s in early[:2]:
        assert s.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    wait_stats(base, lambda x: x["active_sessions"] == 5 and x["traffic"]["authenticated_requests_today"] == 7)
    for i in range(16):
        login(base, "teacher1", user_agent=ua(f"fill-{i}"))
    snap = wait_stats(base, lambda x: x["active_sessions"] == 20)
    assert snap["active_sessions"] == 20, summary(snap)
    agents = {s["user_agent"] for s in snap["sessions"]}
    assert {ua(f"early-{i}") for i in range(5)} - agents == {ua("early-2")}, summary(snap)
    text = metrics_of(base)
    assert metric(text, "headcount_evictions_total") == 1, text
    [evicted] = [e for e in events_of(base)["events"] if e["kind"] == "eviction"]
    assert evicted["username"] == "student1", evicted

    # Many concurrent logins past the cap.
    with ThreadPoolExecutor(8) as pool:
        later = list(pool.map(lambda i: login(base, "student2", user_agent=ua(f"late-{i}")), range(60)))
    snap = wait_stats(base, lambda x: x["active_sessions"] == 20 and x["active_users"] == 1)
    assert snap["active_sessions"] == 20 and snap["active_users"] == 1, summary(snap)
    text = wait_for_metric(base, "headcount_logins_total", 81)
    assert metric(text, "headcount_logins_total") == 81, text
    assert metric(text, "headcount_evictions_total") == 61, text
    assert metric(text, "headcount_active_sessions") == 20, text
    feed = events_of(base)
    assert feed["next"] == 81 + 61, feed["next"]
    assert len(feed["events"]) == 100
    d = helpers.debug(base)
    assert d["stored_sessions"] == 20, d

    # Traffic keeps flowing for evicted and kept sessions alike; the evicted one is anonymous now.
    before = stats(base)["traffic"]
    r = early[4].get(base + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    r = later[-1].get(base + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    snap = wait_stats(base, lambda x: x["traffic"]["requests_today"] == before["requests_today"] + 2
                      and x["traffic"]["anonymous_requests_today"] == before["anonymous_requests_today"] + 1)
    assert snap["traffic"]["authenticated_requests_today"] == before["authenticated_requests_today"] + 1, summary(snap)
    assert snap["traffic"]["anonymous_requests_today"] == before["anonymous_requests_today"] + 1, summary(snap)


def wait_for_metric(base, name, value, timeout=5.0):
    import time
    deadline = time.monotonic() + timeout
    text = metrics_of(base)
    while metric(text, name) != value and time.monotonic() < deadline:
        time.sleep(0.1)
        text = metrics_of(base)
    return text


def test_per_user_limit_ends_the_oldest_session(start_worker):
    wp = start_worker(dict(PLUGIN_CONFIG, max_sessions_per_user=2))
    base = wp.url
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


def test_revocation_survives_a_restart_and_the_alarm_forgets_it(start_worker, tmp_path):
    lifetime = 25  # long enough to restart wrangler dev before it runs out
    config = dict(SHORT_WINDOWS, enforce_revocation=True, idle_timeout_seconds=lifetime,
                  max_lifetime_seconds=lifetime)
    state = tmp_path / "persisted"
    first = start_worker(config, state_dir=state)
    victim = login(first.url, "student1", user_agent=ua("victim"))
    values = browse(victim, first.url, 2)
    sid = session_of(first.url, "student1")["session_id"]
    bystander = login(first.url, "teacher1", user_agent=ua("bystander"))
    hist = wait_for_history(first.url, 2)
    assert max(m["active_users"] for m in hist) == 2, hist
    r = revoke(first.url, sid, headers=bearer())
    assert r.status_code == 200, r.text
    refused(first.url, values[-1])
    feed_before = events_of(first.url)
    assert [e["kind"] for e in feed_before["events"]] == ["revocation", "login", "login"], feed_before
    first.stop()

    second = start_worker(config, state_dir=state)
    # A new isolate knows the revocation before it lets the first cookie through.
    for value in reversed(values):
        refused(second.url, value)
    r = bystander.get(second.url + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    assert helpers.debug(second.url)["stored_revoked"] == 3
    # Events, counters and the history peak were kept.
    assert events_of(second.url) == feed_before
    text = metrics_of(second.url)
    assert (metric(text, "headcount_logins_total"), metric(text, "headcount_revocations_total")) == (2, 1), text
    hist = local_history(second.url)
    assert max(m["active_users"] for m in hist) == 2, hist

    # Once the session would have ended anyway, the alarm forgets the revocation and the values
    # are just unknown cookies again (the app answers, nobody is counted).
    d = wait_debug(second.url, lambda d: d["stored_revoked"] == 0, timeout=lifetime + 6)
    assert d["stored_revoked"] == 0, d
    r = requests.get(second.url + "/api/v1/me", cookies={"session": values[-1]}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"


def local_history(base):
    r = requests.get(base + PREFIX + "/history", headers=bearer(), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()["minutes"]


def wait_for_history(base, users, timeout=8.0):
    import time
    deadline = time.monotonic() + timeout
    minutes = local_history(base)
    while max(m["active_users"] for m in minutes) != users and time.monotonic() < deadline:
        time.sleep(0.2)
        minutes = local_history(base)
    return minutes


def test_four_shards_apply_the_same_rules(start_worker):
    """Events, the per-user limit and revocations cross shards (the feed on shard 0, users on their
    user's shard, revocations on every shard)."""
    wp = start_worker(dict(PLUGIN_CONFIG, enforce_revocation=True, max_sessions_per_user=1), shards=4)
    base = wp.url
    first = login(base, "student1", user_agent=ua("first"))
    second = login(base, "student1", user_agent=ua("second"))
    others = [login(base, name, user_agent=ua(name)) for name in ("teacher1", "student2", "student3")]
    snap = wait_stats(base, lambda x: x["active_sessions"] == 4)
    assert sorted(s["user_agent"] for s in snap["sessions"] if s["username"] == "student1") == [ua("second")]
    values = browse(second, base, 2)
    sid = session_of(base, "student1")["session_id"]
    assert revoke(base, sid, headers=bearer()).status_code == 200
    for value in values:
        refused(base, value)
    r = first.get(base + "/api/v1/me", timeout=TIMEOUT)  # evicted earlier, not revoked
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    for s in others:
        assert s.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    text = metrics_of(base)
    assert [metric(text, f"headcount_{n}_total") for n in ("logins", "evictions", "revocations")] == [5, 1, 1], text
    assert metric(text, "headcount_active_sessions") == 3, text
    kinds = [e["kind"] for e in events_of(base)["events"]]
    assert sorted(kinds) == ["eviction", "login", "login", "login", "login", "login", "revocation"], kinds
    assert kinds[0] == "revocation", kinds
    assert helpers.debug(base)["stored_revoked"] == 3


def test_privacy_options_store_less(start_worker):
    wp = start_worker(dict(PLUGIN_CONFIG, anonymize_ip=True, reduce_user_agent=True))
    cases.privacy_options_store_less(wp.url)


def test_form_login_route_counts_only_a_redirect_to_the_dashboard(start_worker):
    wp = start_worker(dict(PLUGIN_CONFIG, login_routes=cases.FORM_LOGIN_ROUTES))
    cases.form_login_counts_only_a_redirect_to_the_dashboard(wp.url)


def test_ten_thousand_sessions_over_the_cap_keep_the_numbers_exact(start_worker):
    """10,200 distinct users at a cap of 200, from 8 parallel clients."""
    wp = start_worker(dict(PLUGIN_CONFIG, jwt={"hs256_secret": cases.DEFAULT_JWT_SECRET}, max_sessions=200))
    cases.sessions_over_the_cap_keep_the_numbers_exact(wp.url, cap=200, over=10_000)
