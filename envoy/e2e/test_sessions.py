"""(b) logins are counted with the right identity; (c) one user with two sessions."""

import threading

import requests

import cases
from helpers import TIMEOUT, USERS, login, summary, ua, wait_stats


def test_three_logins_are_three_users_with_details(envoy):
    cases.three_logins_are_three_users_with_details(envoy.url)


def test_html_form_login_is_counted(envoy):
    cases.html_form_login_is_counted(envoy.url)


def test_failed_login_counts_nobody(envoy):
    base = envoy.url
    for payload in ({"username": "admin_user", "password": "wrong"},
                    {"username": "nobody", "password": "password"}):
        r = requests.post(base + "/api/v1/auth/login", json=payload, timeout=TIMEOUT)
        assert r.status_code == 401 and r.json() == {"error": "invalid credentials"}
    snap = wait_stats(base, lambda s: s["traffic"]["anonymous_requests_today"] >= 2)
    assert snap["active_users"] == 0 and snap["sessions"] == [], summary(snap)


def test_same_user_twice_is_one_user_with_two_sessions(envoy):
    base = envoy.url
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


def test_concurrent_users_on_both_workers_are_counted_exactly(envoy):
    """Five users browse in parallel on new connections (both workers) then log out."""
    base = envoy.url
    errors = []

    def browse(name):
        try:
            s = login(base, name, user_agent=ua(name))
            for i in range(6):
                # A fresh connection each time: requests land on either worker.
                with requests.Session() as one:
                    one.headers["User-Agent"] = ua(name)
                    one.cookies.update(s.cookies)
                    r = one.get(base + ("/api/v1/me", "/api/v1/courses")[i % 2], timeout=TIMEOUT)
                    assert r.status_code == 200, (name, r.status_code)
                    s.cookies.update(one.cookies)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((name, repr(e)))

    threads = [threading.Thread(target=browse, args=(n,)) for n in USERS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    snap = wait_stats(base, lambda s: s["active_sessions"] == 5)
    assert snap["active_users"] == 5, summary(snap)
    assert snap["active_sessions"] == 5, summary(snap)
    assert snap["by_role"] == {"admin": 1, "teacher": 1, "student": 3}, summary(snap)
    assert {x["username"] for x in snap["sessions"]} == set(USERS)


def test_trusted_client_ip_header(start_envoy):
    """Behind a load balancer: the LB appends the client to X-Forwarded-For and Envoy (the
    configured edge, use_remote_address) appends its peer, the LB. trusted_hops counts from the
    right, so a client-forged first entry is never taken."""
    import helpers

    xff = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}  # forged entry, then what the "LB" added
    ep = start_envoy(dict(helpers.PLUGIN_CONFIG, client_ip_header="x-forwarded-for", trusted_hops=2))
    login(ep.url, "teacher1", headers=xff)
    snap = wait_stats(ep.url, lambda s: s["active_sessions"] == 1)
    [x] = snap["sessions"]
    assert x["ip"] == "203.0.113.9", x

    ep2 = start_envoy(dict(helpers.PLUGIN_CONFIG, client_ip_header="x-forwarded-for", trusted_hops=1))
    login(ep2.url, "teacher1", headers=xff)
    snap = wait_stats(ep2.url, lambda s: s["active_sessions"] == 1)
    [x] = snap["sessions"]
    # One hop: the entry Envoy appended itself (for a loopback peer Envoy appends its own
    # local address, so ask the app what arrived).
    seen = requests.get(ep2.url + "/api/v1/debug/headers", headers=xff, timeout=TIMEOUT).json()
    appended = seen["headers"]["x-forwarded-for"][0].split(",")[-1].strip()
    assert appended not in ("6.6.6.6", "203.0.113.9"), seen
    assert x["ip"] == appended, (x, seen)

    ep3 = start_envoy(dict(helpers.PLUGIN_CONFIG, client_ip_header="x-forwarded-for", trusted_hops=3))
    login(ep3.url, "teacher1", headers=xff)
    snap = wait_stats(ep3.url, lambda s: s["active_sessions"] == 1)
    [x] = snap["sessions"]
    assert x["ip"] == "6.6.6.6", x  # trusting three hops means trusting what the client wrote


def test_logging_in_again_in_the_same_browser_replaces_the_session(envoy):
    base = envoy.url
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
