"""A full valid configuration loads and means what it says; an empty one loads with the defaults.
(How each host refuses a bad configuration differs: envoy_only/ and worker_only/test_config.py.)"""

import helpers
from helpers import TIMEOUT

FULL_CONFIG = {
    "login_method": "POST", "login_path": "/api/v1/auth/login",
    "logout_method": "POST", "logout_path": "/api/v1/auth/logout",
    "session_cookie": "session",
    "user_id_pointer": "/user/id", "username_pointer": "/user/username", "role_pointer": "/user/role",
    "username_form_field": "username",
    "user_id_header": "x-demo-user-id", "username_header": "x-demo-username", "role_header": "x-demo-role",
    "roles": ["admin", "teacher", "student", "parent"], "default_role": "guest",
    "admin_roles": ["admin", "teacher"], "admin_token": helpers.ADMIN_TOKEN,
    "active_window_seconds": 30, "idle_timeout_seconds": 60, "max_lifetime_seconds": 3600,
    "route_prefix": "/__headcount", "client_ip_header": "x-forwarded-for", "trusted_hops": 1,
    "ignore_user_agents": ["bot", "crawler", "spider", "slurp", "headless"],
    "cookie_hash_secret": "0123456789abcdef0123456789abcdef",
    "flush_interval_ms": 100, "sweep_interval_seconds": 1,
}


def test_full_valid_config_loads(start_gateway):
    gw = start_gateway(FULL_CONFIG)
    snap = helpers.stats(gw.url)
    assert snap["window_seconds"] == 30
    assert snap["by_role"] == {"admin": 0, "teacher": 0, "student": 0, "parent": 0}, snap
    # admin_roles includes teacher: a teacher's session may read the stats.
    teacher = helpers.login(gw.url, "teacher1", headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9"})
    if not gw.flushes_on_read:
        helpers.wait_stats(gw.url, lambda s: s["active_sessions"] == 1)
    r = teacher.get(gw.url + helpers.STATS_PATH, timeout=TIMEOUT)
    assert r.status_code == 200, r.status_code
    [x] = r.json()["sessions"]
    if gw.kind == "worker":
        # client_ip_header with trusted_hops 1: the last entry. (Envoy, the edge, appends its own
        # peer first: envoy_only/test_client_ip.py.)
        assert x["ip"] == "203.0.113.9", x
    student = helpers.login(gw.url, "student1", user_agent="HeadlessChrome/140")
    r = student.get(gw.url + helpers.STATS_PATH, timeout=TIMEOUT)
    assert r.status_code == 401, r.status_code  # an ignored user agent has no session
    snap = helpers.wait_stats(gw.url, lambda s: s["active_sessions"] == 1)
    assert [x["username"] for x in snap["sessions"]] == ["teacher1"], snap


def test_empty_config_loads_with_defaults(start_gateway, gateway_kind):
    # Envoy's plugin configuration "{}"; the Worker's HEADCOUNT_CONFIG var left empty.
    gw = start_gateway("" if gateway_kind == "worker" else "{}")
    # No admin_token: the bearer route is closed, but the plugin answers the route.
    r = helpers.stats_response(gw.url, token=None)
    assert r.status_code == 401 and "x-demo-app" not in r.headers, r.status_code
    s = helpers.login(gw.url, "admin_user")
    r = s.get(gw.url + helpers.STATS_PATH, timeout=TIMEOUT)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.json()["window_seconds"] == 300
