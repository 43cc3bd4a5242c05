"""Idle users leave the count after the window; the Durable Object's alarm removes expired
sessions from storage (seen in the stored-row counts of the debug header)."""

import time


import helpers
from helpers import SHORT_WINDOWS, TIMEOUT, login, summary, ua, wait_debug, wait_stats

WINDOW = SHORT_WINDOWS["active_window_seconds"]  # 3
IDLE = SHORT_WINDOWS["idle_timeout_seconds"]  # 6


def test_idle_session_leaves_the_count_then_the_alarm_removes_it(start_worker):
    wp = start_worker(SHORT_WINDOWS)
    base = wp.url
    s = login(base, "student1", user_agent=ua("idle"))
    seen = time.monotonic()
    snap = wait_stats(base, lambda x: x["active_users"] == 1, timeout=2)
    assert snap["active_users"] == 1 and snap["window_seconds"] == WINDOW, summary(snap)

    # Idle: after the active window nobody is active, but the session is still stored.
    snap = wait_stats(base, lambda x: x["active_users"] == 0, timeout=WINDOW + 3)
    dropped_after = time.monotonic() - seen
    assert snap["active_users"] == 0 and snap["sessions"] == [], summary(snap)
    assert snap["by_role"] == helpers.NOBODY_BY_ROLE, summary(snap)
    assert dropped_after >= WINDOW - 1, f"left the active count after {dropped_after:.1f}s"
    d = helpers.debug(base)
    assert d["stored_sessions"] == 1 and d["stored_cookies"] >= 1, d

    # Only reads from here on: nothing but the alarm can remove the rows.
    d = wait_debug(base, lambda d: d["stored_sessions"] == 0, timeout=IDLE + 4)
    gone_after = time.monotonic() - seen
    assert d["stored_sessions"] == 0 and d["stored_cookies"] == 0, d
    assert IDLE - 1 <= gone_after <= IDLE + 4, f"removed after {gone_after:.1f}s"

    # Its cookie, still valid for the app, does not bring it back, nor does the rotated one.
    before = helpers.stats(base)["traffic"]
    assert s.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    assert s.get(base + "/api/v1/courses", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: x["traffic"]["requests_today"] >= before["requests_today"] + 2)
    assert snap["traffic"]["authenticated_requests_today"] == before["authenticated_requests_today"], summary(snap)
    assert snap["traffic"]["anonymous_requests_today"] == before["anonymous_requests_today"] + 2, summary(snap)
    assert snap["active_users"] == 0 and snap["sessions"] == [], summary(snap)


def test_activity_before_idle_timeout_makes_the_session_active_again(start_worker):
    wp = start_worker(SHORT_WINDOWS)
    base = wp.url
    s = login(base, "teacher1", user_agent=ua("comeback"))
    seen = time.monotonic()
    [session] = wait_stats(base, lambda x: x["active_users"] == 1, timeout=2)["sessions"]
    snap = wait_stats(base, lambda x: x["active_users"] == 0, timeout=WINDOW + 3)
    assert snap["active_users"] == 0, summary(snap)
    assert time.monotonic() - seen < IDLE - 1.5, "too slow to test the gap between window and timeout"
    assert s.get(base + "/api/v1/courses", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: x["active_users"] == 1, timeout=2)
    [again] = snap["sessions"]
    assert again["session_id"] == session["session_id"], summary(snap)
    assert again["login_time"] == session["login_time"]


def test_max_lifetime_ends_a_busy_session(start_worker):
    lifetime = 4
    wp = start_worker(dict(SHORT_WINDOWS, max_lifetime_seconds=lifetime))
    base = wp.url
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
    d = wait_debug(base, lambda d: d["stored_sessions"] == 0, timeout=3)
    assert d["stored_sessions"] == 0, d
