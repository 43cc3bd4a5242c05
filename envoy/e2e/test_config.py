"""(h) Bad plugin configurations are refused with a log line naming the field; good ones load."""

import json
import re
import subprocess
import sys

import pytest

import helpers
from conftest import ENVOY_TEMPLATE, REPO, envoy_binary, render_envoy_config

BAD_CONFIGS = [
    pytest.param({"admin_token": helpers.ADMIN_TOKEN, "active_window_seconds": "soon"}, "active_window_seconds",
                 id="string-for-integer"),
    pytest.param({"admin_token": helpers.ADMIN_TOKEN, "frobnicate": 1}, "frobnicate", id="unknown-key"),
    pytest.param({"active_window_seconds": 600, "idle_timeout_seconds": 60}, "idle_timeout_seconds",
                 id="idle-below-window"),
    pytest.param({"active_window_seconds": 600, "max_lifetime_seconds": 60}, "max_lifetime_seconds",
                 id="lifetime-below-window"),
    pytest.param({"flush_interval_ms": 5}, "flush_interval_ms", id="flush-out-of-range"),
    pytest.param({"roles": "admin"}, "roles", id="roles-not-a-list"),
    pytest.param({"session_cookie": 7}, "session_cookie", id="cookie-not-a-string"),
    pytest.param({"jwt": {"hs256_secret": "too-short"}}, "jwt.hs256_secret", id="jwt-secret-too-short"),
    pytest.param({"jwt": {"public_keys": ["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"]}},
                 "jwt.public_keys[0]", id="jwt-bad-pem"),
]

LOG_LEVELS = r"\[(?:warning|error|critical)\]"


@pytest.mark.parametrize("config, field", BAD_CONFIGS)
def test_bad_config_is_refused_naming_the_field(start_envoy_refused, config, field):
    outcome = start_envoy_refused(config)
    assert outcome.refused, (f"plugin config {config} was accepted "
                             f"(stats answered {outcome.probe_status})\n" + outcome.log[-3000:])
    named = [line for line in outcome.wasm_lines()
             if re.search(LOG_LEVELS, line) and field in line]
    assert named, (f"no warning/error wasm log line names {field!r}:\n"
                   + "\n".join(outcome.wasm_lines()[-30:]))


def test_invalid_json_is_refused(start_envoy_refused):
    outcome = start_envoy_refused('{"admin_token": "%s", ' % helpers.ADMIN_TOKEN)  # cut short
    assert outcome.refused, outcome.log[-3000:]
    assert any(re.search(LOG_LEVELS, line) for line in outcome.wasm_lines()), outcome.log[-3000:]


def test_full_valid_config_loads(start_envoy):
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
    ep = start_envoy(config)
    snap = helpers.stats(ep.url)
    assert snap["window_seconds"] == 30
    assert snap["by_role"] == {"admin": 0, "teacher": 0, "student": 0, "parent": 0}, snap
    # admin_roles includes teacher: a teacher's session may read the stats.
    teacher = helpers.login(ep.url, "teacher1")
    helpers.wait_stats(ep.url, lambda s: s["active_sessions"] == 1)
    r = teacher.get(ep.url + helpers.STATS_PATH, timeout=helpers.TIMEOUT)
    assert r.status_code == 200, r.status_code
    student = helpers.login(ep.url, "student1", user_agent="HeadlessChrome/140")
    r = student.get(ep.url + helpers.STATS_PATH, timeout=helpers.TIMEOUT)
    assert r.status_code in (401, 403), r.status_code  # ignored user agent, or not an admin role
    snap = helpers.wait_stats(ep.url, lambda s: s["active_sessions"] == 1)
    assert [x["username"] for x in snap["sessions"]] == ["teacher1"], snap


def test_empty_config_loads_with_defaults(start_envoy):
    ep = start_envoy("{}")
    # No admin_token: the bearer route is closed, but the plugin answers the route.
    r = helpers.stats_response(ep.url, token=None)
    assert r.status_code == 401 and "x-demo-app" not in r.headers, r.status_code
    s = helpers.login(ep.url, "admin_user")
    r = s.get(ep.url + helpers.STATS_PATH, timeout=helpers.TIMEOUT)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.json()["window_seconds"] == 300


def test_shipped_demo_config_validates(wasm_path, tmp_path):
    """envoy/envoy.yaml (with its demo plugin configuration) passes `envoy --mode validate`."""
    config = ENVOY_TEMPLATE
    if wasm_path != REPO / "target/wasm32-wasip1/release/headcount.wasm":
        config = tmp_path / "envoy.yaml"
        config.write_text(ENVOY_TEMPLATE.read_text().replace(
            "target/wasm32-wasip1/release/headcount.wasm", str(wasm_path)))
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(config),
                           "--disable-hot-restart"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and " OK" in out, out[-3000:]
    # The demo's JWT secret is the demo app's, so the demo's API tokens are counted.
    sys.path.insert(0, str(REPO / "envoy" / "demo"))
    from app import DEFAULT_JWT_SECRET
    assert json.loads(re.search(r'value: \|\n\s+(\{.*\})\n', ENVOY_TEMPLATE.read_text()).group(1)) == {
        "admin_token": "demo-admin-token", "jwt": {"hs256_secret": DEFAULT_JWT_SECRET}}


def test_generated_config_keeps_the_demo_shape(tmp_path):
    text = render_envoy_config({"a": "b'c\"d"}, wasm=tmp_path / "x.wasm", listener_port=1,
                               admin_port=2, app_port=3)
    assert "envoy.filters.http.wasm" in text and "envoy.wasm.runtime.v8" in text
    assert json.dumps(json.dumps({"a": "b'c\"d"})) in text
