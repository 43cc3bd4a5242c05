"""(e) The stats route is the plugin's, guarded by the admin token or an admin session."""

import requests

import helpers
from helpers import ADMIN_TOKEN, STATS_PATH, TIMEOUT, bearer, login, stats_response, summary, wait_stats


def _plugin_json(r, status):
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert "x-demo-app" not in r.headers, "answered by the app: the stats route was proxied"
    assert "no-store" in r.headers.get("cache-control", ""), r.headers
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    return r.json()


def test_no_credentials_is_401_without_data(envoy):
    body = _plugin_json(stats_response(envoy.url, token=None), 401)
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "sessions" not in body and "active_users" not in body, body


def test_wrong_bearer_is_403(envoy):
    body = _plugin_json(stats_response(envoy.url, token="not-the-token"), 403)
    assert isinstance(body.get("error"), str) and "sessions" not in body, body
    # Almost right is still wrong.
    body = _plugin_json(stats_response(envoy.url, token=ADMIN_TOKEN + "x"), 403)
    assert "sessions" not in body
    body = _plugin_json(stats_response(envoy.url, token=ADMIN_TOKEN[:-1]), 403)
    assert "sessions" not in body


def test_correct_bearer_is_200(envoy):
    body = _plugin_json(stats_response(envoy.url), 200)
    assert body["active_users"] == 0 and body["sessions"] == [], summary(body)


def test_student_session_is_403_admin_session_is_200(envoy):
    base = envoy.url
    student = login(base, "student1", user_agent=helpers.ua("s"))
    admin = login(base, "admin_user", user_agent=helpers.ua("a"))
    wait_stats(base, lambda s: s["active_sessions"] == 2)

    r = student.get(base + STATS_PATH, timeout=TIMEOUT)
    body = _plugin_json(r, 403)
    assert "sessions" not in body, body

    r = admin.get(base + STATS_PATH, timeout=TIMEOUT)
    body = _plugin_json(r, 200)
    assert body["active_users"] == 2, summary(body)
    assert {x["username"] for x in body["sessions"]} == {"student1", "admin_user"}

    # A student with a wrong bearer is still refused; a student cookie plus the right token works.
    r = student.get(base + STATS_PATH, headers=bearer("nope"), timeout=TIMEOUT)
    _plugin_json(r, 403)
    r = student.get(base + STATS_PATH, headers=bearer(), timeout=TIMEOUT)
    _plugin_json(r, 200)


def test_logged_out_admin_cookie_is_refused(envoy):
    base = envoy.url
    admin = login(base, "admin_user")
    wait_stats(base, lambda s: s["active_sessions"] == 1)
    old_cookie = admin.cookies["session"]
    assert admin.post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    wait_stats(base, lambda s: s["active_sessions"] == 0)
    r = requests.get(base + STATS_PATH, cookies={"session": old_cookie}, timeout=TIMEOUT)
    assert r.status_code in (401, 403), (r.status_code, r.text[:300])
    assert "x-demo-app" not in r.headers
    assert "sessions" not in r.json()


def test_post_to_stats_is_not_proxied(envoy):
    for method in ("POST", "PUT", "DELETE"):
        r = requests.request(method, envoy.url + STATS_PATH, headers=bearer(), json={}, timeout=TIMEOUT)
        assert r.status_code in (404, 405), (method, r.status_code, r.text[:200])
        assert "x-demo-app" not in r.headers, f"{method} {STATS_PATH} reached the app"


def test_query_string_on_stats_is_still_the_plugin(envoy):
    r = requests.get(envoy.url + STATS_PATH + "?x=1", headers=bearer(), timeout=TIMEOUT)
    _plugin_json(r, 200)


def test_custom_route_prefix(start_envoy):
    ep = start_envoy(dict(helpers.PLUGIN_CONFIG, route_prefix="/_hc"))
    r = requests.get(ep.url + "/_hc/stats", headers=bearer(), timeout=TIMEOUT)
    assert _plugin_json(r, 200)["active_users"] == 0
    # The default prefix is now just a path of the app.
    r = requests.get(ep.url + STATS_PATH, headers=bearer(), timeout=TIMEOUT)
    assert r.status_code == 404 and r.headers.get("x-demo-app") == "1", r.status_code
