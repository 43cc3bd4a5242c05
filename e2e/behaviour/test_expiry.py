"""Idle sessions leave the active count after the window and end after the idle timeout (Envoy's
sweep, the Worker's Durable Object alarm: with the Worker the stored rows are seen to go); a busy
session ends at its maximum lifetime."""

import time

import helpers
from helpers import NOBODY_BY_ROLE, SHORT_WINDOWS, TIMEOUT, events_of, login, summary, ua, wait_debug, wait_for, wait_stats

WINDOW = SHORT_WINDOWS["active_window_seconds"]  # 3
IDLE = SHORT_WINDOWS["idle_timeout_seconds"]  # 6


def _assert_a_dead_cookie_counts_as_nobody(base, s, paths):
    """Requests with the cookie of an ended session (still valid for the app, rotated on each
    answer) are anonymous: waits until all of them are in the figures, then checks nobody is there."""
    before = helpers.stats(base)["traffic"]
    for path in paths:
        r = s.get(base + path, timeout=TIMEOUT)
        assert r.status_code == 200 and r.cookies.get("session"), "the app still knows the cookie"
    # An unknown cookie is settled as anonymous after one retry (Envoy: two flushes later).
    snap = wait_stats(base, lambda x: x["traffic"]["requests_today"] >= before["requests_today"] + len(paths)
                      and x["traffic"]["anonymous_requests_today"] >= before["anonymous_requests_today"] + len(paths))
    assert snap["traffic"]["authenticated_requests_today"] == before["authenticated_requests_today"], (
        f"a request with an ended session's cookie counted as authenticated: {summary(snap)}")
    assert snap["traffic"]["anonymous_requests_today"] == before["anonymous_requests_today"] + len(paths), summary(snap)
    assert snap["active_users"] == 0 and snap["sessions"] == [], summary(snap)


def test_idle_session_stops_counting_then_ends(start_gateway):
    gw = start_gateway(SHORT_WINDOWS)
    base = gw.url
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
    assert snap["by_role"] == NOBODY_BY_ROLE, summary(snap)
    assert dropped_after >= WINDOW - 1, f"left the active count after {dropped_after:.1f}s"
    assert snap["sessions"] == [], summary(snap)  # only active sessions are listed
    if gw.debug:  # ...but the session is still stored
        d = helpers.debug(base)
        assert d["stored_sessions"] == 1 and d["stored_cookies"] >= 1, d

    # Only reads from here on: after the idle timeout the sweep (the alarm) ends the session and
    # the event feed says so.
    feed = wait_for(lambda: events_of(base), lambda e: any(x["kind"] == "expiry" for x in e["events"]),
                    timeout=IDLE + SHORT_WINDOWS["sweep_interval_seconds"] + 6)
    assert [(x["kind"], x["username"]) for x in feed["events"] if x["kind"] == "expiry"] == [
        ("expiry", "student1")], feed
    ended_after = time.monotonic() - seen
    assert ended_after >= IDLE - 1, f"ended after {ended_after:.1f}s"
    if gw.debug:  # the rows are gone
        d = wait_debug(base, lambda d: d["stored_sessions"] == 0)
        assert d["stored_sessions"] == 0 and d["stored_cookies"] == 0, d

    # Its cookie does not bring it back, nor does the rotated cookie the app issues for it.
    _assert_a_dead_cookie_counts_as_nobody(base, s, ["/api/v1/me", "/api/v1/courses"])


def test_activity_before_idle_timeout_makes_the_session_active_again(start_gateway):
    gw = start_gateway(SHORT_WINDOWS)
    base = gw.url
    s = login(base, "teacher1", user_agent=ua("comeback"))
    first = wait_stats(base, lambda x: x["active_users"] == 1, timeout=2)
    [session] = first["sessions"]
    snap = wait_stats(base, lambda x: x["active_users"] == 0, timeout=WINDOW + 3)
    assert snap["active_users"] == 0, summary(snap)

    assert s.get(base + "/api/v1/courses", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: x["active_users"] == 1, timeout=2)
    assert snap["active_users"] == 1 and snap["active_sessions"] == 1, summary(snap)
    [again] = snap["sessions"]
    assert again["session_id"] == session["session_id"], summary(snap)
    assert again["login_time"] == session["login_time"]


def test_max_lifetime_ends_a_busy_session(start_gateway):
    lifetime = 4
    gw = start_gateway(dict(SHORT_WINDOWS, max_lifetime_seconds=lifetime))
    base = gw.url
    s = login(base, "student2", user_agent=ua("busy"))
    t0 = time.monotonic()
    wait_stats(base, lambda x: x["active_sessions"] == 1, timeout=2)
    ended_at, made = None, 1  # requests so far: the login
    while time.monotonic() - t0 < lifetime + 5:
        assert s.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
        made += 1
        snap = helpers.stats(base)
        if snap["sessions"] == []:
            ended_at = time.monotonic() - t0
            break
        time.sleep(0.3)  # busy: a request every 0.3 s, until the session is gone
    assert ended_at is not None, f"still live after {lifetime + 5}s of activity: {summary(snap)}"
    assert ended_at >= lifetime - 1, f"ended after {ended_at:.1f}s"
    if gw.debug:
        d = wait_debug(base, lambda d: d["stored_sessions"] == 0, timeout=3)
        assert d["stored_sessions"] == 0, d
    # Further requests with its cookie are nobody's (once the busy ones are all in the figures).
    wait_stats(base, lambda x: x["traffic"]["requests_today"] >= made)
    _assert_a_dead_cookie_counts_as_nobody(base, s, ["/api/v1/me"])
