"""The stats route is the Worker's own, guarded by the admin token or an admin session; other
routes under the prefix are answered locally (404/405), never proxied."""

import requests

import helpers
from helpers import ADMIN_TOKEN, STATS_PATH, TIMEOUT, bearer, login, stats_response, summary, wait_stats


def _worker_json(r, status):
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert "x-demo-app" not in r.headers, "answered by the app: the route was proxied"
    assert "no-store" in r.headers.get("cache-control", ""), r.headers
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    return r.json()


def test_missing_and_wrong_credentials_are_refused(worker):
    body = _worker_json(stats_response(worker.url, token=None), 401)
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "sessions" not in body and "active_users" not in body, body
    for token in ("not-the-token", ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1]):
        body = _worker_json(stats_response(worker.url, token=token), 403)
        assert isinstance(body.get("error"), str) and "sessions" not in body, body
    body = _worker_json(stats_response(worker.url), 200)
    assert body["active_users"] == 0 and body["sessions"] == [], summary(body)
    assert set(body) == {"active_users", "active_sessions", "window_seconds", "by_role", "sessions",
                         "traffic", "generated_at"}, body
    assert set(body["traffic"]) == {"current_rps", "avg_response_time_ms", "requests_today",
                                    "authenticated_requests_today", "anonymous_requests_today"}


def test_student_session_is_403_admin_session_is_200(worker):
    base = worker.url
    student = login(base, "student1", user_agent=helpers.ua("s"))
    admin = login(base, "admin_user", user_agent=helpers.ua("a"))
    # No waiting: the stats route writes this isolate's buffered logins before it looks.
    _worker_json(student.get(base + STATS_PATH, timeout=TIMEOUT), 403)
    body = _worker_json(admin.get(base + STATS_PATH, timeout=TIMEOUT), 200)
    assert body["active_users"] == 2, summary(body)
    assert {x["username"] for x in body["sessions"]} == {"student1", "admin_user"}
    # A student with a wrong bearer is still refused; a student cookie plus the right token works.
    _worker_json(student.get(base + STATS_PATH, headers=bearer("nope"), timeout=TIMEOUT), 403)
    _worker_json(student.get(base + STATS_PATH, headers=bearer(), timeout=TIMEOUT), 200)


def test_logged_out_admin_cookie_is_refused(worker):
    base = worker.url
    admin = login(base, "admin_user")
    old_cookie = admin.cookies["session"]
    _worker_json(admin.get(base + STATS_PATH, timeout=TIMEOUT), 200)
    assert admin.post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    wait_stats(base, lambda s: s["active_sessions"] == 0)
    r = requests.get(base + STATS_PATH, cookies={"session": old_cookie}, timeout=TIMEOUT)
    body = _worker_json(r, 401)
    assert "sessions" not in body


def test_other_prefix_routes_are_answered_locally(worker):
    for method in ("POST", "PUT", "DELETE"):
        r = requests.request(method, worker.url + STATS_PATH, headers=bearer(), json={}, timeout=TIMEOUT)
        assert r.status_code == 405 and "x-demo-app" not in r.headers, (method, r.status_code)
    for path in ("/__headcount/nope", "/__headcount/stats/x", "/__headcount/../__headcount/x"):
        r = requests.get(worker.url + path, headers=bearer(), timeout=TIMEOUT)
        assert r.status_code == 404 and "x-demo-app" not in r.headers, (path, r.status_code)
    r = requests.get(worker.url + STATS_PATH + "?x=1", headers=bearer(), timeout=TIMEOUT)
    _worker_json(r, 200)
    # Paths that only look like the prefix are the app's.
    r = requests.get(worker.url + "/__headcountX/stats", timeout=TIMEOUT)
    assert r.headers.get("x-demo-app") == "1", r.status_code


def test_custom_route_prefix(start_worker):
    wp = start_worker(dict(helpers.PLUGIN_CONFIG, route_prefix="/_hc"))
    r = requests.get(wp.url + "/_hc/stats", headers=bearer(), timeout=TIMEOUT)
    assert _worker_json(r, 200)["active_users"] == 0
    r = requests.get(wp.url + STATS_PATH, headers=bearer(), timeout=TIMEOUT)
    assert r.status_code == 404 and r.headers.get("x-demo-app") == "1", r.status_code
