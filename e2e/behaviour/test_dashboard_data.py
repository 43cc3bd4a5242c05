"""The dashboard's data routes: /history, /events?after=N and /metrics, with the same shapes,
authorization and Cache-Control on every host; the page that polls them; device names."""

import requests

import helpers
from helpers import (ADMIN_TOKEN, PLUGIN_CONFIG, PREFIX, TIMEOUT, admin_get, bearer, events_of, local, login, metric,
                     metrics_of, stats, summary, ua, wait_for, wait_stats)

METRICS_TOKEN = "e2e-metrics-token"
DATA_ROUTES = ["/history", "/events", "/metrics"]


def test_data_routes_need_the_same_authorization_as_stats(start_gateway):
    gw = start_gateway(dict(PLUGIN_CONFIG, metrics_token=METRICS_TOKEN))
    base = gw.url
    student = login(base, "student1", user_agent=ua("student"))
    admin = login(base, "admin_user", user_agent=ua("admin"))
    for path in DATA_ROUTES:
        body = local(admin_get(base, path), 401).json()
        assert set(body) == {"error"} and body["error"], (path, body)
        local(admin_get(base, path, headers=bearer("wrong-token-123")), 403)
        r = local(student.get(base + PREFIX + path, timeout=TIMEOUT), 403)
        assert "student1" not in r.text and "admin_user" not in r.text, (path, r.text)
        local(admin.get(base + PREFIX + path, timeout=TIMEOUT), 200)
        local(admin_get(base, path, headers=bearer()), 200)
        # Read-only routes: other methods are refused locally.
        for method in ("POST", "PUT", "DELETE"):
            r = requests.request(method, base + PREFIX + path, headers=bearer(), timeout=TIMEOUT)
            local(r, 405)
        local(requests.head(base + PREFIX + path, headers=bearer(), timeout=TIMEOUT), 200)
    # The metrics token opens /metrics only.
    local(admin_get(base, "/metrics", headers=bearer(METRICS_TOKEN)), 200)
    for path in ["/stats", "/events", "/history"]:
        local(admin_get(base, path, headers=bearer(METRICS_TOKEN)), 403)
    # Without a metrics_token configured, that token is just wrong.
    other = start_gateway(PLUGIN_CONFIG)
    local(admin_get(other.url, "/metrics", headers=bearer(METRICS_TOKEN)), 403)


def test_events_feed_records_login_logout_and_expiry(start_gateway):
    gw = start_gateway(dict(PLUGIN_CONFIG, active_window_seconds=2, idle_timeout_seconds=3))
    base = gw.url
    body = events_of(base)
    assert body == {"events": [], "next": 0}, body
    s = login(base, "student2", user_agent=ua("events"))
    t = login(base, "teacher1", user_agent=ua("events"))
    assert s.post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    events = wait_for(lambda: events_of(base), lambda e: len(e["events"]) == 3)
    if gw.kind == "envoy":  # one thread saw both logins in order (the Worker's shards may not)
        assert [(x["kind"], x["username"]) for x in events["events"]] == [
            ("logout", "student2"), ("login", "teacher1"), ("login", "student2")], events
    assert set(events) == {"events", "next"}, events
    assert events["next"] == 3, events
    seqs = [x["seq"] for x in events["events"]]
    assert seqs == [2, 1, 0], events  # newest first
    newest = events["events"][0]
    assert (newest["kind"], newest["username"], newest["role"]) == ("logout", "student2", "student"), events
    assert sorted((x["kind"], x["username"], x["role"]) for x in events["events"][1:]) == [
        ("login", "student2", "student"), ("login", "teacher1", "teacher")], events
    for x in events["events"]:
        assert set(x) == {"seq", "kind", "at", "username", "role", "session_id"}, x
        assert helpers.is_uuid(x["session_id"]), x
        helpers.parse_time(x["at"])
    by_kind = {(x["kind"], x["username"]): x["session_id"] for x in events["events"]}
    assert by_kind[("logout", "student2")] == by_kind[("login", "student2")]
    # Polling with after= returns only what is new.
    assert events_of(base, after=3) == {"events": [], "next": 3}
    assert [x["seq"] for x in events_of(base, after=1)["events"]] == [2, 1]
    # teacher1 goes idle: the sweep (the Durable Object's alarm) ends the session and the feed says so.
    expired = wait_for(lambda: events_of(base, after=3), lambda e: e["events"], timeout=10)
    assert [(x["kind"], x["username"], x["seq"]) for x in expired["events"]] == [("expiry", "teacher1", 3)], expired
    assert expired["events"][0]["session_id"] == by_kind[("login", "teacher1")]
    assert expired["next"] == 4
    text = metrics_of(base)
    assert [metric(text, f"headcount_{n}_total") for n in
            ("logins", "logouts", "expiries", "evictions", "revocations")] == [2, 1, 1, 0, 0], text
    del t


def test_prometheus_metrics_are_exact(gateway):
    base = gateway.url
    text = metrics_of(base)  # before any traffic: every series, all zeros
    for name in ("headcount_active_users", "headcount_active_sessions", "headcount_logins_total",
                 "headcount_revocations_total"):
        assert metric(text, name) == 0, text
    for user in ["admin_user", "student1", "student2"]:
        login(base, user, user_agent=ua(user))
    login(base, "student1", user_agent=ua("second-device"))
    s = login(base, "teacher1", user_agent=ua("leaves"))
    assert s.post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    text = wait_for(lambda: metrics_of(base), lambda t: metric(t, "headcount_logouts_total") == 1)
    lines = set(text.splitlines())
    # Every sample names its app: by default Envoy's plugin `name` (envoy.yaml's is `headcount`);
    # the Worker's `default`.
    app = {"envoy": "headcount", "fleet": "headcount", "worker": "default"}[gateway.kind]
    for want in [
        f'headcount_active_users{{app="{app}"}} 3',
        f'headcount_active_sessions{{app="{app}"}} 4',
        f'headcount_active_users_by_role{{app="{app}",role="admin"}} 1',
        f'headcount_active_users_by_role{{app="{app}",role="student"}} 2',
        f'headcount_active_users_by_role{{app="{app}",role="teacher"}} 0',
        f'headcount_logins_total{{app="{app}"}} 5',
        f'headcount_logouts_total{{app="{app}"}} 1',
        f'headcount_expiries_total{{app="{app}"}} 0',
        f'headcount_evictions_total{{app="{app}"}} 0',
        f'headcount_revocations_total{{app="{app}"}} 0',
        "# TYPE headcount_active_users gauge",
        "# TYPE headcount_active_users_by_role gauge",
        "# TYPE headcount_logins_total counter",
    ]:
        assert want in lines, (want, text)
    # The same numbers as the stats route.
    snap = helpers.stats(base)
    assert (snap["active_users"], snap["active_sessions"]) == (3, 4), summary(snap)


def test_history_has_sixty_minutes_with_the_current_peak(gateway):
    base = gateway.url
    empty = local(admin_get(base, "/history", headers=bearer()), 200).json()
    assert set(empty) == {"minutes"} and len(empty["minutes"]) == 60, empty
    assert all(m == {"minute": m["minute"], "active_users": 0, "active_sessions": 0}
               for m in empty["minutes"]), empty
    login(base, "student1", user_agent=ua("history"))
    login(base, "student3", user_agent=ua("history"))
    login(base, "student3", user_agent=ua("history-phone"))
    hist = wait_for(lambda: local(admin_get(base, "/history", headers=bearer()), 200).json(),
                    lambda h: h["minutes"][-1]["active_sessions"] == 3, timeout=8)
    minutes = hist["minutes"]
    assert len(minutes) == 60
    assert minutes[-1]["active_users"] == 2 and minutes[-1]["active_sessions"] == 3, minutes[-1]
    assert all(m["active_users"] == 0 and m["active_sessions"] == 0 for m in minutes[:-2]), minutes
    stamps = [helpers.parse_time(m["minute"]) for m in minutes]
    assert all((b - a).total_seconds() == 60 for a, b in zip(stamps, stamps[1:])), minutes
    assert minutes[-1]["minute"].endswith(":00.000Z")
    now = helpers.now_utc()
    assert 0 <= (now - stamps[-1]).total_seconds() < 62, (now, minutes[-1])


def test_dashboard_page_is_served_by_the_plugin_without_data(gateway):
    login(gateway.url, "admin_user", user_agent=ua("page"))
    for path in ["/", ""]:
        r = local(admin_get(gateway.url, path), 200)
        assert r.headers["content-type"].startswith("text/html")
        assert "<html" in r.text.lower() and "{{PREFIX}}" not in r.text
        assert "admin_user" not in r.text  # the page carries no data
        # It polls the data routes the plugin answers.
        for route in ["/stats", "/history", "/events?after="]:
            assert route in r.text, route
    local(requests.post(gateway.url + PREFIX + "/", timeout=TIMEOUT), 405)


def test_sessions_name_the_device(gateway):
    chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/148.0 Safari/537.36"
    login(gateway.url, "teacher1", user_agent=chrome)
    snap = wait_stats(gateway.url, lambda x: x["active_sessions"] == 1)
    assert snap["sessions"][0]["device"] == "Chrome 148 on Windows", summary(snap)
    assert stats(gateway.url, ADMIN_TOKEN)["sessions"][0]["user_agent"] == chrome
