"""(d) The app re-issues its session cookie on every response: Headcount follows it to logout."""

import threading
import time
from datetime import timedelta

import requests

from helpers import TIMEOUT, login, now_utc, parse_time, summary, ua, wait_stats

SLACK = timedelta(milliseconds=50)  # same clock, millisecond timestamps

PATHS = ["/api/v1/me", "/api/v1/courses", "/dashboard", "/api/v1/me", "/api/v1/courses"]


def _one_session(snap):
    assert snap["active_sessions"] == 1 and len(snap["sessions"]) == 1, summary(snap)
    return snap["sessions"][0]


def _rotate(get, cookie, paths):
    """Requests each path with the latest cookie; asserts the app re-issued a new one each time."""
    for path in paths:
        r = get(path, cookie)
        assert r.status_code == 200, (path, r.status_code)
        rotated = r.cookies.get("session")
        assert rotated, f"{path}: the app did not re-issue the session cookie"
        assert rotated != cookie, f"{path}: the cookie did not change"
        cookie = rotated
    return cookie


def test_rotation_is_followed_until_logout(gateway):
    base = gateway.url
    s = login(base, "student1", user_agent=ua("rotation"))
    first = _one_session(wait_stats(base, lambda x: x["active_sessions"] == 1))

    def get(path, cookie):
        assert s.cookies["session"] == cookie
        return s.get(base + path, timeout=TIMEOUT, allow_redirects=False)

    last_request_at = None
    cookie = s.cookies["session"]
    for path in PATHS:  # one at a time, so that the last request's time is known
        time.sleep(0.05)
        last_request_at = now_utc()
        cookie = _rotate(get, cookie, [path])

    snap = wait_stats(base, lambda x: bool(x["sessions"])
                      and parse_time(x["sessions"][0]["last_activity"]) >= last_request_at - SLACK
                      and x["traffic"]["authenticated_requests_today"] >= 1 + len(PATHS))
    now = _one_session(snap)
    assert now["session_id"] == first["session_id"], summary(snap)
    assert now["login_time"] == first["login_time"], summary(snap)
    # Activity under the newest cookie is this session's.
    assert parse_time(now["last_activity"]) >= last_request_at - SLACK, summary(snap)
    assert parse_time(now["last_activity"]) > parse_time(first["last_activity"]), summary(snap)
    assert snap["active_users"] == 1
    assert snap["traffic"]["authenticated_requests_today"] == 1 + len(PATHS), summary(snap)
    assert snap["traffic"]["anonymous_requests_today"] == 0, summary(snap)

    r = s.post(base + "/api/v1/auth/logout", timeout=TIMEOUT)
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert "session" not in s.cookies  # Flask deleted it
    snap = wait_stats(base, lambda x: x["active_sessions"] == 0)
    assert snap["active_sessions"] == 0, summary(snap)
    assert snap["active_users"] == 0, summary(snap)
    assert snap["sessions"] == [], summary(snap)


def test_rotation_is_followed_across_connections(gateway):
    """Each request on a new connection (with Envoy: either worker thread), right after the
    previous rotation."""
    base = gateway.url
    s = login(base, "teacher1", user_agent=ua("many-connections"))
    first = _one_session(wait_stats(base, lambda x: x["active_sessions"] == 1))

    def get(path, cookie):
        return requests.get(base + path, cookies={"session": cookie}, timeout=TIMEOUT,
                            headers={"User-Agent": ua("many-connections"), "Connection": "close"},
                            allow_redirects=False)

    cookie = _rotate(get, s.cookies["session"], PATHS * 2)
    last_request_at = now_utc()
    cookie = _rotate(get, cookie, PATHS[:1])
    snap = wait_stats(base, lambda x: bool(x["sessions"])
                      and parse_time(x["sessions"][0]["last_activity"]) >= last_request_at - SLACK)
    now = _one_session(snap)
    assert now["session_id"] == first["session_id"], summary(snap)
    assert parse_time(now["last_activity"]) >= last_request_at - SLACK, summary(snap)

    r = requests.post(base + "/api/v1/auth/logout", cookies={"session": cookie},
                      headers={"Connection": "close"}, timeout=TIMEOUT)
    assert r.status_code == 200
    snap = wait_stats(base, lambda x: x["active_sessions"] == 0)
    assert snap["active_sessions"] == 0 and snap["sessions"] == [], summary(snap)


def test_requests_of_a_rotating_session_count_as_authenticated(gateway):
    """Six quick requests, each rotating the cookie (faster than one flush): all six are the
    session's, none anonymous."""
    base = gateway.url
    s = login(base, "student3", user_agent=ua("burst"))
    # A fresh gateway: the login is the only request so far; wait until it is in the figures.
    before = wait_stats(base, lambda x: x["active_sessions"] == 1
                        and x["traffic"]["requests_today"] == 1)["traffic"]
    assert before["requests_today"] == 1, before

    def get(path, cookie):
        return s.get(base + path, timeout=TIMEOUT, allow_redirects=False)

    _rotate(get, s.cookies["session"], PATHS + PATHS[:1])
    made = len(PATHS) + 1
    snap = wait_stats(base, lambda x: x["traffic"]["requests_today"] >= before["requests_today"] + made)
    traffic = snap["traffic"]
    assert traffic["requests_today"] == before["requests_today"] + made, summary(snap)
    assert traffic["anonymous_requests_today"] == before["anonymous_requests_today"], (
        "requests of a logged-in session counted as anonymous:\n" + summary(snap))
    assert traffic["authenticated_requests_today"] == before["authenticated_requests_today"] + made, summary(snap)


def test_logout_with_latest_cookie_ends_only_that_session(gateway):
    base = gateway.url
    keep = login(base, "student2", user_agent=ua("keep"))
    leave = login(base, "student3", user_agent=ua("leave"))
    for _ in range(3):
        assert keep.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
        assert leave.get(base + "/api/v1/courses", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: x["active_sessions"] == 2)
    assert snap["active_users"] == 2, summary(snap)
    assert leave.post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: x["active_sessions"] == 1)
    assert [x["username"] for x in snap["sessions"]] == ["student2"], summary(snap)
    assert snap["by_role"] == {"admin": 0, "teacher": 0, "student": 1}, summary(snap)


def test_parallel_requests_sharing_a_cookie(gateway):
    """A page firing six requests at once with the same cookie: each response re-issues it.
    Whichever response the browser keeps last, the session continues with that cookie."""
    base = gateway.url
    s = login(base, "student2", user_agent=ua("parallel"))
    first = _one_session(wait_stats(base, lambda x: x["active_sessions"] == 1))
    cookie = s.cookies["session"]
    barrier = threading.Barrier(6)
    arrivals = []  # (path, status, new cookie), in the order the responses completed
    lock = threading.Lock()

    def fire(path):
        barrier.wait(timeout=10)
        r = requests.get(base + path, cookies={"session": cookie}, timeout=TIMEOUT,
                         headers={"User-Agent": ua("parallel"), "Connection": "close"})
        with lock:
            arrivals.append((path, r.status_code, r.cookies.get("session")))

    threads = [threading.Thread(target=fire, args=(PATHS[i % 2],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(arrivals) == 6 and all(status == 200 and new for _, status, new in arrivals), arrivals
    kept = arrivals[-1][2]
    assert kept != cookie

    last_request_at = now_utc()
    r = requests.get(base + "/api/v1/me", cookies={"session": kept}, timeout=TIMEOUT)
    assert r.status_code == 200
    snap = wait_stats(base, lambda x: bool(x["sessions"])
                      and parse_time(x["sessions"][0]["last_activity"]) >= last_request_at - SLACK)
    now = _one_session(snap)
    assert now["session_id"] == first["session_id"], summary(snap)
    assert parse_time(now["last_activity"]) >= last_request_at - SLACK, summary(snap)
    r = requests.post(base + "/api/v1/auth/logout", cookies={"session": r.cookies["session"]},
                      timeout=TIMEOUT)
    assert r.status_code == 200
    snap = wait_stats(base, lambda x: x["active_sessions"] == 0)
    assert snap["sessions"] == [], summary(snap)
