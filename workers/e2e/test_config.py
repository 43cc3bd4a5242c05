"""A bad configuration answers 500 on every request, naming the field, and is logged; it never
proxies. A good full configuration loads."""

import json
import re
import sys
import tomllib
from pathlib import Path

import pytest
import requests

import helpers
from helpers import TIMEOUT

WORKERS = Path(__file__).resolve().parents[1]

BAD_CONFIGS = [
    pytest.param({"admin_token": helpers.ADMIN_TOKEN, "active_window_seconds": "soon"},
                 "active_window_seconds", id="string-for-integer"),
    pytest.param({"admin_token": helpers.ADMIN_TOKEN, "frobnicate": 1}, "frobnicate", id="unknown-key"),
    pytest.param({"active_window_seconds": 600, "idle_timeout_seconds": 60}, "idle_timeout_seconds",
                 id="idle-below-window"),
    pytest.param({"flush_interval_ms": 5}, "flush_interval_ms", id="flush-out-of-range"),
    pytest.param('{"admin_token": "e2e-admin-token", ', None, id="invalid-json"),
    pytest.param({"jwt": {"hs256_secret": "too-short"}}, "jwt.hs256_secret", id="jwt-secret-too-short"),
    pytest.param({"jwt": {"public_keys": ["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"]}},
                 "jwt.public_keys[0]", id="jwt-bad-pem"),
    pytest.param({"jwt": {"hs256_secret": "0123456789abcdef0123456789abcdef", "audence": "x"}},
                 "jwt.audence", id="jwt-unknown-key"),
]


@pytest.mark.parametrize("config, field", BAD_CONFIGS)
def test_bad_config_answers_500_naming_the_field(start_worker, config, field):
    wp = start_worker(config)
    for method, path in [("GET", "/"), ("POST", "/api/v1/auth/login"), ("GET", "/healthz"),
                         ("GET", helpers.STATS_PATH)]:
        r = requests.request(method, wp.url + path, headers=helpers.bearer(), timeout=TIMEOUT)
        assert r.status_code == 500, (method, path, r.status_code)
        assert "x-demo-app" not in r.headers, f"{method} {path} was proxied with a bad config"
        message = r.json()["error"]
        assert "HEADCOUNT_CONFIG" in message and "invalid headcount config" in message, message
        if field:
            assert f"`{field}`" in message, message
    assert wp.wait_log(re.escape(f"`{field}`" if field else "HEADCOUNT_CONFIG")), wp.log_tail()


def test_bad_origin_and_shards_are_named(start_worker):
    wp = start_worker(helpers.PLUGIN_CONFIG, origin="not a url")
    r = requests.get(wp.url + "/", timeout=TIMEOUT)
    assert r.status_code == 500 and "`ORIGIN`" in r.json()["error"], r.text
    wp = start_worker(helpers.PLUGIN_CONFIG, shards=0)
    r = requests.get(wp.url + "/", timeout=TIMEOUT)
    assert r.status_code == 500 and "`HEADCOUNT_SHARDS`" in r.json()["error"], r.text


def test_full_valid_config_loads(start_worker):
    config = {
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
    wp = start_worker(config)
    snap = helpers.stats(wp.url)
    assert snap["window_seconds"] == 30
    assert snap["by_role"] == {"admin": 0, "teacher": 0, "student": 0, "parent": 0}, snap
    # admin_roles includes teacher: a teacher's session may read the stats.
    teacher = helpers.login(wp.url, "teacher1", headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9"})
    r = teacher.get(wp.url + helpers.STATS_PATH, timeout=TIMEOUT)
    assert r.status_code == 200, r.status_code
    [x] = r.json()["sessions"]
    assert x["ip"] == "203.0.113.9", x  # client_ip_header with trusted_hops 1
    student = helpers.login(wp.url, "student1", user_agent="HeadlessChrome/140")
    r = student.get(wp.url + helpers.STATS_PATH, timeout=TIMEOUT)
    assert r.status_code == 401, r.status_code  # an ignored user agent has no session
    snap = helpers.wait_stats(wp.url, lambda s: s["active_sessions"] == 1)
    assert [x["username"] for x in snap["sessions"]] == ["teacher1"], snap


def test_shipped_demo_config_names_the_demo_apps_jwt_secret():
    """wrangler.toml's demo HEADCOUNT_CONFIG counts the demo app's API tokens (as envoy/envoy.yaml)."""
    sys.path.insert(0, str(WORKERS.parent / "envoy" / "demo"))
    from app import DEFAULT_JWT_SECRET
    toml = tomllib.loads((WORKERS / "wrangler.toml").read_text())
    assert json.loads(toml["vars"]["HEADCOUNT_CONFIG"]) == {
        "admin_token": "demo-admin-token", "jwt": {"hs256_secret": DEFAULT_JWT_SECRET}}


def test_empty_config_loads_with_defaults(start_worker):
    wp = start_worker("")
    r = helpers.stats_response(wp.url, token=None)
    assert r.status_code == 401 and "x-demo-app" not in r.headers, r.status_code
    s = helpers.login(wp.url, "admin_user")
    r = s.get(wp.url + helpers.STATS_PATH, timeout=TIMEOUT)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.json()["window_seconds"] == 300
