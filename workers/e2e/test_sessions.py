"""Logins are counted with the right identity; one user with two sessions; rotation is followed
to logout; several users at once."""

import threading

import requests

import cases
from helpers import TIMEOUT, USERS, login, parse_time, summary, ua, wait_stats

PATHS = ["/api/v1/me", "/api/v1/courses", "/dashboard", "/api/v1/me", "/api/v1/courses"]


def test_three_logins_are_three_users_with_details(worker):
    cases.three_logins_are_three_users_with_details(worker.url)


def test_html_form_login_is_counted(worker):
    cases.html_form_login_is_counted(worker.url)


def test_same_user_twice_is_one_user_with_two_sessions(worker):
    base = worker.url
    laptop = login(base, "admin_user", user_agent=ua("laptop"))
    phone = login(base, "admin_user", user_agent=ua("phone"))
    assert laptop.cookies["session"] != phone.cookies["session"]
    snap = wait_stats(base, lambda s: s["active_sessions"] == 2)
    assert snap["active_users"] == 1, summary(snap)
    assert snap["active_sessions"] == 2, summary(snap)
    assert snap["by_role"] == {"admin": 1, "teacher": 0, "student": 0}, summary(snap)
    assert sorted(x["user_agent"] for x in snap["sessions"]) == sorted([ua("laptop"), ua("phone")])
    assert len({x["session_id"] for x in snap["sessions"]}) == 2

    # Logging out on one device leaves the other.
    assert phone.post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda s: s["active_sessions"] == 1)
    assert snap["active_sessions"] == 1 and snap["active_users"] == 1, summary(snap)
    assert [x["user_agent"] for x in snap["sessions"]] == [ua("laptop")]


def _one_session(snap):
    assert snap["active_sessions"] == 1 and len(snap["sessions"]) == 1, summary(snap)
    return snap["sessions"][0]


def test_rotation_is_followed_until_logout(worker):
    base = worker.url
    s = login(base, "student1", user_agent=ua("rotation"))
    first = _one_session(wait_stats(base, lambda x: x["active_sessions"] == 1))
    cookie = s.cookies["session"]
    for path in PATHS:
        r = s.get(base + path, timeout=TIMEOUT, allow_redirects=False)
        assert r.status_code == 200, (path, r.status_code)
        rotated = r.cookies.get("session")
        assert rotated and rotated != cookie, f"{path}: the app did not re-issue the session cookie"
        cookie = rotated

    snap = wait_stats(base, lambda x: x["traffic"]["authenticated_requests_today"] >= 1 + len(PATHS))
    now = _one_session(snap)
    assert now["session_id"] == first["session_id"], summary(snap)
    assert now["login_time"] == first["login_time"], summary(snap)
    assert parse_time(now["last_activity"]) > parse_time(first["last_activity"]), summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == 1 + len(PATHS), summary(snap)
    assert snap["traffic"]["anonymous_requests_today"] == 0, summary(snap)

    r = s.post(base + "/api/v1/auth/logout", timeout=TIMEOUT)
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert "session" not in s.cookies  # Flask deleted it
    snap = wait_stats(base, lambda x: x["active_sessions"] == 0)
    assert snap["active_sessions"] == 0 and snap["active_users"] == 0, summary(snap)
    assert snap["sessions"] == [], summary(snap)


def test_logout_with_latest_cookie_ends_only_that_session(worker):
    base = worker.url
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


def test_concurrent_users_are_counted_exactly(worker):
    """Five users browse in parallel, each request on a new connection, then one logs out."""
    base = worker.url
    errors = []
    sessions = {}

    def browse(name):
        try:
            s = login(base, name, user_agent=ua(name))
            for i in range(6):
                with requests.Session() as one:
                    one.headers["User-Agent"] = ua(name)
                    one.cookies.update(s.cookies)
                    r = one.get(base + ("/api/v1/me", "/api/v1/courses")[i % 2], timeout=TIMEOUT)
                    assert r.status_code == 200, (name, r.status_code)
                    s.cookies.update(one.cookies)
            sessions[name] = s
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((name, repr(e)))

    threads = [threading.Thread(target=browse, args=(n,)) for n in USERS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    snap = wait_stats(base, lambda s: s["active_sessions"] == 5
                      and s["traffic"]["authenticated_requests_today"] >= 35)
    assert snap["active_users"] == 5, summary(snap)
    assert snap["by_role"] == {"admin": 1, "teacher": 1, "student": 3}, summary(snap)
    assert {x["username"] for x in snap["sessions"]} == set(USERS)
    assert snap["traffic"]["authenticated_requests_today"] == 35, summary(snap)
    assert sessions["teacher1"].post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda s: s["active_sessions"] == 4)
    assert snap["by_role"] == {"admin": 1, "teacher": 0, "student": 3}, summary(snap)
