"""(f) Idle sessions leave the active count after the window and end after the idle timeout."""

import time

import helpers
from helpers import SHORT_WINDOWS, TIMEOUT, login, summary, ua, wait_stats

WINDOW = SHORT_WINDOWS["active_window_seconds"]  # 3
IDLE = SHORT_WINDOWS["idle_timeout_seconds"]  # 6


def test_idle_session_stops_counting_then_ends(start_envoy):
    ep = start_envoy(SHORT_WINDOWS)
    base = ep.url
    s = login(base, "student1", user_agent=ua("idle"))
    seen = time.monotonic()
    snap = wait_stats(base, lambda x: x["active_users"] == 1, timeout=2)
    assert snap["active_users"] == 1 and snap["active_sessions"] == 1, summary(snap)
    assert snap["window_seconds"] == WINDOW

    # Stay idle: after the active window nobody is active.
    snap = wait_stats(base, lambda x: x["active_users"] == 0, timeout=WINDOW + 3)
    dropped_after = time.monotonic() - seen
    assert snap["active_users"] == 0, summary(snap)
    assert snap["active_sessions"] == 0, summary(snap)
    assert snap["by_role"] == {"admin": 0, "teacher": 0, "student": 0}, summary(snap)
    assert dropped_after >= WINDOW - 1, f"left the active count after {dropped_after:.1f}s"

    assert snap["sessions"] == [], summary(snap)  # only active sessions are listed

    # After the idle timeout (and a sweep) the session is over: its cookie, still valid for the
    # app, does not bring it back. There is nothing to poll for here, so wait out the timeout.
    time.sleep(max(0.0, IDLE + SHORT_WINDOWS["sweep_interval_seconds"] + 0.5 - (time.monotonic() - seen)))
    before = helpers.stats(base)["traffic"]
    r = s.get(base + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200 and r.cookies.get("session"), "the app still knows the cookie"
    snap = wait_stats(base, lambda x: x["traffic"]["requests_today"] > before["requests_today"])
    assert snap["traffic"]["authenticated_requests_today"] == before["authenticated_requests_today"], (
        f"a request with an ended session's cookie counted as authenticated: {summary(snap)}")
    assert snap["traffic"]["anonymous_requests_today"] == before["anonymous_requests_today"] + 1, summary(snap)
    assert snap["active_users"] == 0 and snap["sessions"] == [], summary(snap)
    # ...nor does the rotated cookie the app just issued for it.
    assert s.get(base + "/api/v1/courses", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: x["traffic"]["requests_today"] > before["requests_today"] + 1)
    assert snap["active_users"] == 0 and snap["sessions"] == [], summary(snap)


def test_activity_before_idle_timeout_makes_the_session_active_again(start_envoy):
    ep = start_envoy(SHORT_WINDOWS)
    base = ep.url
    s = login(base, "teacher1", user_agent=ua("comeback"))
    seen = time.monotonic()
    first = wait_stats(base, lambda x: x["active_users"] == 1, timeout=2)
    [session] = first["sessions"]
    snap = wait_stats(base, lambda x: x["active_users"] == 0, timeout=WINDOW + 3)
    assert snap["active_users"] == 0, summary(snap)
    assert time.monotonic() - seen < IDLE - 1.5, "too slow to test the gap between window and timeout"

    assert s.get(base + "/api/v1/courses", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: x["active_users"] == 1, timeout=2)
    assert snap["active_users"] == 1 and snap["active_sessions"] == 1, summary(snap)
    [again] = snap["sessions"]
    assert again["session_id"] == session["session_id"], summary(snap)
    assert again["login_time"] == session["login_time"]


def test_max_lifetime_ends_a_busy_session(start_envoy):
    lifetime = 4
    ep = start_envoy(dict(SHORT_WINDOWS, max_lifetime_seconds=lifetime))
    base = ep.url
    s = login(base, "student2", user_agent=ua("busy"))
    t0 = time.monotonic()
    wait_stats(base, lambda x: x["active_sessions"] == 1, timeout=2)
    ended_at = None
    while time.monotonic() - t0 < lifetime + 5:
        assert s.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
        snap = helpers.stats(base)
        if snap["sessions"] == []:
            ended_at = time.monotonic() - t0
            break
        time.sleep(0.3)
    assert ended_at is not None, f"still live after {lifetime + 5}s of activity: {summary(snap)}"
    assert ended_at >= lifetime - 1, f"ended after {ended_at:.1f}s"
    # Further requests with its cookie are nobody's.
    assert s.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    time.sleep(0.6)
    snap = helpers.stats(base)
    assert snap["active_users"] == 0 and snap["sessions"] == [], summary(snap)
