"""Issue 5's data routes: history, events, Prometheus metrics, the page shell, device names."""


import requests

from helpers import (ADMIN_TOKEN, PLUGIN_CONFIG, PREFIX, TIMEOUT, admin_get, bearer, login, stats, summary,
                     ua, wait_for, wait_stats)

METRICS_TOKEN = "e2e-metrics-token"



def test_data_routes_need_the_same_authorization_as_stats(start_envoy):
    envoy = start_envoy(dict(PLUGIN_CONFIG, metrics_token=METRICS_TOKEN))
    student = login(envoy.url, "student1", user_agent=ua("student"))
    admin = login(envoy.url, "admin_user", user_agent=ua("admin"))
    for path in ["/history", "/events", "/metrics"]:
        r = admin_get(envoy.url, path)
        assert r.status_code == 401 and "error" in r.json(), (path, r.status_code)
        assert r.headers.get("cache-control") == "no-store"
        assert "x-demo-app" not in r.headers
        assert admin_get(envoy.url, path, headers=bearer("wrong-token-123")).status_code == 403, path
        r = student.get(envoy.url + PREFIX + path, timeout=TIMEOUT)
        assert r.status_code == 403 and "student1" not in r.text, path
        assert admin.get(envoy.url + PREFIX + path, timeout=TIMEOUT).status_code == 200, path
        assert admin_get(envoy.url, path, headers=bearer()).status_code == 200, path
    # The metrics token opens /metrics only.
    assert admin_get(envoy.url, "/metrics", headers=bearer(METRICS_TOKEN)).status_code == 200
    assert admin_get(envoy.url, "/stats", headers=bearer(METRICS_TOKEN)).status_code == 403
    assert admin_get(envoy.url, "/events", headers=bearer(METRICS_TOKEN)).status_code == 403


def test_events_feed_records_login_logout_and_expiry(start_envoy):
    envoy = start_envoy(dict(PLUGIN_CONFIG, active_window_seconds=2, idle_timeout_seconds=3))
    s = login(envoy.url, "student2", user_agent=ua("events"))
    t = login(envoy.url, "teacher1", user_agent=ua("events"))
    assert s.post(envoy.url + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    events = wait_for(lambda: admin_get(envoy.url, "/events", headers=bearer()).json(),
                      lambda e: [x["kind"] for x in e["events"]] == ["logout", "login", "login"])
    kinds = [(x["kind"], x["username"]) for x in events["events"]]
    assert kinds == [("logout", "student2"), ("login", "teacher1"), ("login", "student2")], events
    assert events["next"] == 3
    assert all(x["at"].endswith("Z") and len(x["session_id"]) == 36 for x in events["events"])
    # Polling with after= returns only what is new.
    assert admin_get(envoy.url, "/events?after=3", headers=bearer()).json()["events"] == []
    # teacher1 goes idle: the sweep ends the session and the feed says so.
    expired = wait_for(lambda: admin_get(envoy.url, "/events?after=3", headers=bearer()).json(),
                       lambda e: e["events"], timeout=10)
    assert [(x["kind"], x["username"]) for x in expired["events"]] == [("expiry", "teacher1")], expired
    del t


def test_prometheus_metrics_are_exact(start_envoy):
    envoy = start_envoy(PLUGIN_CONFIG)
    for user in ["admin_user", "student1", "student2"]:
        login(envoy.url, user, user_agent=ua(user))
    login(envoy.url, "student1", user_agent=ua("second-device"))
    s = login(envoy.url, "teacher1", user_agent=ua("leaves"))
    s.post(envoy.url + "/api/v1/auth/logout", timeout=TIMEOUT)
    r = admin_get(envoy.url, "/metrics", headers=bearer())
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = set(r.text.splitlines())
    for want in [
        "headcount_active_users 3",
        "headcount_active_sessions 4",
        'headcount_active_users_by_role{role="admin"} 1',
        'headcount_active_users_by_role{role="student"} 2',
        'headcount_active_users_by_role{role="teacher"} 0',
        "headcount_logins_total 5",
        "headcount_logouts_total 1",
        "headcount_expiries_total 0",
        "headcount_evictions_total 0",
        "# TYPE headcount_active_users gauge",
        "# TYPE headcount_logins_total counter",
    ]:
        assert want in lines, (want, r.text)


def test_history_has_sixty_minutes_with_the_current_peak(start_envoy):
    envoy = start_envoy(PLUGIN_CONFIG)
    login(envoy.url, "student1", user_agent=ua("history"))
    login(envoy.url, "student3", user_agent=ua("history"))
    hist = wait_for(lambda: admin_get(envoy.url, "/history", headers=bearer()).json(),
                    lambda h: h["minutes"][-1]["active_users"] == 2)
    minutes = hist["minutes"]
    assert len(minutes) == 60
    assert minutes[-1]["active_users"] == 2 and minutes[-1]["active_sessions"] == 2, minutes[-1]
    assert all(m["active_users"] == 0 for m in minutes[:-2]), minutes
    assert minutes[0]["minute"] < minutes[-1]["minute"]
    assert minutes[-1]["minute"].endswith(":00.000Z")


def test_dashboard_page_is_served_by_the_plugin_without_data(envoy):
    login(envoy.url, "admin_user", user_agent=ua("page"))
    for path in ["/", ""]:
        r = admin_get(envoy.url, path)
        assert r.status_code == 200, (path, r.status_code)
        assert "x-demo-app" not in r.headers
        assert r.headers["content-type"].startswith("text/html")
        assert r.headers.get("cache-control") == "no-store"
        assert "<html" in r.text.lower() and "{{PREFIX}}" not in r.text
        assert "admin_user" not in r.text  # the page carries no data
    assert requests.post(envoy.url + PREFIX + "/", timeout=TIMEOUT).status_code == 405


def test_sessions_name_the_device(envoy):
    chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/148.0 Safari/537.36"
    login(envoy.url, "teacher1", user_agent=chrome)
    snap = wait_stats(envoy.url, lambda x: x["active_sessions"] == 1)
    assert snap["sessions"][0]["device"] == "Chrome 148 on Windows", summary(snap)
    assert stats(envoy.url, ADMIN_TOKEN)["sessions"][0]["user_agent"] == chrome
