"""Logins are counted with the right identity; one user with two sessions; several users at once;
logging in again in the same browser."""

import threading
from datetime import timedelta

import requests

from helpers import (TIMEOUT, USERS, is_uuid, login, now_utc, parse_time, summary, ua, wait_stats)


def test_three_logins_are_three_users_with_details(gateway):
    """Three demo users log in (each also sending an untrusted X-Forwarded-For) and make one
    request each: three users with the right identity, IP, agent, times; 6 authenticated requests."""
    base = gateway.url
    agents = {"admin_user": ua("admin-laptop"), "teacher1": ua("teacher-desk"),
              "student1": ua("student-phone")}
    before = now_utc() - timedelta(seconds=2)  # clock slack
    # A client-sent X-Forwarded-For is not trusted without client_ip_header.
    clients = {name: login(base, name, user_agent=agent, headers={"X-Forwarded-For": "198.51.100.7"})
               for name, agent in agents.items()}
    for s in clients.values():
        assert s.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200

    snap = wait_stats(base, lambda s: s["active_sessions"] == 3
                        and s["traffic"]["authenticated_requests_today"] >= 6)
    assert snap["active_users"] == 3, summary(snap)
    assert snap["active_sessions"] == 3, summary(snap)
    assert snap["window_seconds"] == 60
    assert snap["by_role"] == {"admin": 1, "teacher": 1, "student": 1}, summary(snap)
    assert len(snap["sessions"]) == 3, summary(snap)
    generated = parse_time(snap["generated_at"])
    assert before <= generated <= now_utc() + timedelta(seconds=2)
    by_name = {x["username"]: x for x in snap["sessions"]}
    assert set(by_name) == set(agents), summary(snap)
    for name, x in by_name.items():
        user_id, role = USERS[name]
        assert x["user_id"] == user_id, x
        assert x["role"] == role, x
        assert x["ip"] == "127.0.0.1", x
        assert x["user_agent"] == agents[name], x
        assert is_uuid(x["session_id"]), x
        login_time, last = parse_time(x["login_time"]), parse_time(x["last_activity"])
        assert before <= login_time <= last <= generated + timedelta(seconds=1), x
        assert isinstance(x["duration_seconds"], (int, float)), x
        assert 0 <= x["duration_seconds"] <= (generated - login_time).total_seconds() + 1, x
    assert len({x["session_id"] for x in snap["sessions"]}) == 3
    traffic = snap["traffic"]
    assert traffic["authenticated_requests_today"] == 6, summary(snap)  # 3 logins + 3 requests
    assert traffic["requests_today"] == (traffic["authenticated_requests_today"]
                                         + traffic["anonymous_requests_today"]), summary(snap)


def test_html_form_login_is_counted(gateway):
    base = gateway.url
    s = login(base, "student2", user_agent=ua("form"), form=True)
    assert s.get(base + "/dashboard", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda s: s["active_sessions"] == 1)
    assert snap["active_users"] == 1, summary(snap)
    assert snap["by_role"] == {"admin": 0, "teacher": 0, "student": 1}, summary(snap)
    [x] = snap["sessions"]
    assert (x["user_id"], x["username"], x["role"]) == ("4", "student2", "student"), x


def test_same_user_twice_is_one_user_with_two_sessions(gateway):
    base = gateway.url
    laptop = login(base, "admin_user", user_agent=ua("laptop"))
    phone = login(base, "admin_user", user_agent=ua("phone"))
    assert laptop.cookies["session"] != phone.cookies["session"]
    snap = wait_stats(base, lambda s: s["active_sessions"] == 2)
    assert snap["active_users"] == 1, summary(snap)
    assert snap["active_sessions"] == 2, summary(snap)
    assert snap["by_role"] == {"admin": 1, "teacher": 0, "student": 0}, summary(snap)
    assert sorted(x["user_agent"] for x in snap["sessions"]) == sorted([ua("laptop"), ua("phone")])
    assert {x["username"] for x in snap["sessions"]} == {"admin_user"}
    assert len({x["session_id"] for x in snap["sessions"]}) == 2

    # Logging out on one device leaves the other.
    assert phone.post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda s: s["active_sessions"] == 1)
    assert snap["active_sessions"] == 1 and snap["active_users"] == 1, summary(snap)
    assert [x["user_agent"] for x in snap["sessions"]] == [ua("laptop")]


def test_concurrent_users_are_counted_exactly(gateway):
    """Five users browse in parallel, each request on a new connection (with Envoy: either worker
    thread), then one logs out."""
    base = gateway.url
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
    assert snap["active_sessions"] == 5, summary(snap)
    assert snap["by_role"] == {"admin": 1, "teacher": 1, "student": 3}, summary(snap)
    assert {x["username"] for x in snap["sessions"]} == set(USERS)
    assert snap["traffic"]["authenticated_requests_today"] == 35, summary(snap)
    assert sessions["teacher1"].post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda s: s["active_sessions"] == 4)
    assert snap["by_role"] == {"admin": 1, "teacher": 0, "student": 3}, summary(snap)


def test_logging_in_again_in_the_same_browser_replaces_the_session(gateway):
    base = gateway.url
    s = login(base, "student1", user_agent=ua("same-browser"))
    first = wait_stats(base, lambda x: x["active_sessions"] == 1)["sessions"][0]
    # The same browser (it sends its current cookie) logs in again: still one session.
    r = s.post(base + "/api/v1/auth/login", json={"username": "student1", "password": "password"},
               timeout=TIMEOUT)
    assert r.status_code == 200
    snap = wait_stats(base, lambda x: x["sessions"] and x["sessions"][0]["session_id"] != first["session_id"])
    assert snap["active_sessions"] == 1 and snap["active_users"] == 1, summary(snap)
    assert snap["sessions"][0]["session_id"] != first["session_id"], summary(snap)
    # ...and as someone else: the student's session is over, the teacher's counted.
    r = s.post(base + "/api/v1/auth/login", json={"username": "teacher1", "password": "password"},
               timeout=TIMEOUT)
    assert r.status_code == 200
    snap = wait_stats(base, lambda x: [y["username"] for y in x["sessions"]] == ["teacher1"])
    assert [y["username"] for y in snap["sessions"]] == ["teacher1"], summary(snap)
    assert snap["by_role"] == {"admin": 0, "teacher": 1, "student": 0}, summary(snap)
