"""The stats route is the plugin's own, guarded by the admin token or an admin session; other
routes under the prefix are answered locally (404/405), never proxied."""

import requests

import helpers
from helpers import ADMIN_TOKEN, STATS_PATH, TIMEOUT, bearer, login, stats_response, summary, ua, wait_stats


def _plugin_json(r, status):
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert "x-demo-app" not in r.headers, "answered by the app: the route was proxied"
    assert "no-store" in r.headers.get("cache-control", ""), r.headers
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    return r.json()


def test_no_credentials_is_401_without_data(gateway):
    body = _plugin_json(stats_response(gateway.url, token=None), 401)
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "sessions" not in body and "active_users" not in body, body


def test_wrong_bearer_is_403(gateway):
    body = _plugin_json(stats_response(gateway.url, token="not-the-token"), 403)
    assert isinstance(body.get("error"), str) and "sessions" not in body, body
    # Almost right is still wrong.
    for token in (ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1]):
        body = _plugin_json(stats_response(gateway.url, token=token), 403)
        assert isinstance(body.get("error"), str) and "sessions" not in body, body


def test_correct_bearer_is_200(gateway):
    body = _plugin_json(stats_response(gateway.url), 200)
    assert body["active_users"] == 0 and body["sessions"] == [], summary(body)
    assert set(body) == {"app", "active_users", "active_sessions", "window_seconds", "by_role", "sessions",
                         "traffic", "generated_at"}, body
    # The app counted: by default Envoy's plugin `name` (envoy.yaml's `headcount`), the Worker's `default`.
    assert body["app"] == {"envoy": "headcount", "fleet": "headcount", "worker": "default"}[gateway.kind], body
    assert set(body["traffic"]) == {"current_rps", "avg_response_time_ms", "requests_today",
                                    "authenticated_requests_today", "anonymous_requests_today"}


def test_student_session_is_403_admin_session_is_200(gateway):
    base = gateway.url
    student = login(base, "student1", user_agent=helpers.ua("s"))
    admin = login(base, "admin_user", user_agent=helpers.ua("a"))
    if not gateway.flushes_on_read:
        # Envoy: the logins may be buffered in another worker thread until its next flush. (The
        # Worker's stats route writes this isolate's buffered logins before it looks: no waiting.)
        wait_stats(base, lambda s: s["active_sessions"] == 2)

    body = _plugin_json(student.get(base + STATS_PATH, timeout=TIMEOUT), 403)
    assert "sessions" not in body, body

    body = _plugin_json(admin.get(base + STATS_PATH, timeout=TIMEOUT), 200)
    assert body["active_users"] == 2, summary(body)
    assert {x["username"] for x in body["sessions"]} == {"student1", "admin_user"}

    # A student with a wrong bearer is still refused; a student cookie plus the right token works.
    _plugin_json(student.get(base + STATS_PATH, headers=bearer("nope"), timeout=TIMEOUT), 403)
    _plugin_json(student.get(base + STATS_PATH, headers=bearer(), timeout=TIMEOUT), 200)


def test_logged_out_admin_cookie_is_refused(gateway):
    base = gateway.url
    admin = login(base, "admin_user")
    if not gateway.flushes_on_read:
        wait_stats(base, lambda s: s["active_sessions"] == 1)
    old_cookie = admin.cookies["session"]
    _plugin_json(admin.get(base + STATS_PATH, timeout=TIMEOUT), 200)
    assert admin.post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    wait_stats(base, lambda s: s["active_sessions"] == 0)
    r = requests.get(base + STATS_PATH, cookies={"session": old_cookie}, timeout=TIMEOUT)
    body = _plugin_json(r, 401)
    assert "sessions" not in body


def test_post_to_stats_is_not_proxied(gateway):
    for method in ("POST", "PUT", "DELETE"):
        r = requests.request(method, gateway.url + STATS_PATH, headers=bearer(), json={}, timeout=TIMEOUT)
        assert r.status_code in (404, 405), (method, r.status_code, r.text[:200])
        assert "x-demo-app" not in r.headers, f"{method} {STATS_PATH} reached the app"


def test_query_string_on_stats_is_still_the_plugin(gateway):
    r = requests.get(gateway.url + STATS_PATH + "?x=1", headers=bearer(), timeout=TIMEOUT)
    _plugin_json(r, 200)


def test_other_prefix_routes_are_answered_locally(gateway):
    for method in ("POST", "PUT", "DELETE"):
        r = requests.request(method, gateway.url + STATS_PATH, headers=bearer(), json={}, timeout=TIMEOUT)
        assert r.status_code == 405 and "x-demo-app" not in r.headers, (method, r.status_code)
    for path in ("/__headcount/nope", "/__headcount/stats/x", "/__headcount/../__headcount/x"):
        r = requests.get(gateway.url + path, headers=bearer(), timeout=TIMEOUT)
        assert r.status_code == 404 and "x-demo-app" not in r.headers, (path, r.status_code)
    # Paths that only look like the prefix are the app's.
    r = requests.get(gateway.url + "/__headcountX/stats", timeout=TIMEOUT)
    assert r.headers.get("x-demo-app") == "1", r.status_code


def test_custom_route_prefix(start_gateway):
    gw = start_gateway(dict(helpers.PLUGIN_CONFIG, route_prefix="/_hc"))
    r = requests.get(gw.url + "/_hc/stats", headers=bearer(), timeout=TIMEOUT)
    assert _plugin_json(r, 200)["active_users"] == 0
    # The default prefix is now just a path of the app.
    r = requests.get(gw.url + STATS_PATH, headers=bearer(), timeout=TIMEOUT)
    assert r.status_code == 404 and r.headers.get("x-demo-app") == "1", r.status_code


def test_limit_lists_fewer_sessions_and_zero_gives_the_counts_alone(gateway):
    base = gateway.url
    for name in ("student1", "student2", "teacher1"):
        login(base, name, user_agent=ua(f"limit-{name}"))
    full = wait_stats(base, lambda x: x["active_sessions"] == 3)
    assert len(full["sessions"]) == 3, summary(full)
    for limit, listed in ((1, 1), (0, 0)):
        r = requests.get(f"{base}{STATS_PATH}?limit={limit}", headers=bearer(), timeout=TIMEOUT)
        body = _plugin_json(r, 200)
        assert len(body["sessions"]) == listed, (limit, summary(body))
        assert (body["active_users"], body["active_sessions"], body["by_role"]) == (
            3, 3, {"admin": 0, "teacher": 1, "student": 2}), (limit, summary(body))
