"""Envoy: a bad plugin configuration is refused (Envoy exits, or runs without the plugin serving)
with a log line naming the field; the shipped demo config validates; the generated config keeps
the demo's shape."""

import json
import re
import subprocess
import sys

import pytest

import helpers
from hosts.envoy import ENVOY_TEMPLATE, REPO, envoy_binary, refused, render_envoy_config, wasm_path

LOG_LEVELS = r"\[(?:warning|error|critical)\]"


@pytest.mark.parametrize("config, field", helpers.bad_config_params(
    ({"active_window_seconds": 600, "max_lifetime_seconds": 60}, "max_lifetime_seconds", "lifetime-below-window"),
    ({"roles": "admin"}, "roles", "roles-not-a-list"),
    ({"session_cookie": 7}, "session_cookie", "cookie-not-a-string"),
))
def test_bad_config_is_refused_naming_the_field(start_context, config, field):
    outcome = refused(start_context, config, log_pattern=LOG_LEVELS + r".*" + re.escape(field))
    assert outcome.refused, (f"plugin config {config} was accepted "
                             f"(stats answered {outcome.probe_status})\n" + outcome.log[-3000:])
    named = [line for line in outcome.wasm_lines()
             if re.search(LOG_LEVELS, line) and field in line]
    assert named, (f"no warning/error wasm log line names {field!r}:\n"
                   + "\n".join(outcome.wasm_lines()[-30:]))


def test_invalid_json_is_refused(start_context):
    outcome = refused(start_context, '{"admin_token": "%s", ' % helpers.ADMIN_TOKEN,  # cut short
                      log_pattern=LOG_LEVELS + r".*wasm|wasm.*" + LOG_LEVELS)
    assert outcome.refused, outcome.log[-3000:]
    assert any(re.search(LOG_LEVELS, line) for line in outcome.wasm_lines()), outcome.log[-3000:]


def test_shipped_demo_config_validates(tmp_path):
    """envoy/envoy.yaml (with its demo plugin configuration) passes `envoy --mode validate`."""
    config = ENVOY_TEMPLATE
    if wasm_path() != REPO / "target/wasm32-wasip1/release/headcount.wasm":
        config = tmp_path / "envoy.yaml"
        config.write_text(ENVOY_TEMPLATE.read_text().replace(
            "target/wasm32-wasip1/release/headcount.wasm", str(wasm_path())))
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(config),
                           "--disable-hot-restart"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and " OK" in out, out[-3000:]
    # The demo's JWT secret is the demo app's, so the demo's API tokens are counted.
    sys.path.insert(0, str(REPO / "envoy" / "demo"))
    from app import DEFAULT_JWT_SECRET
    shipped = json.loads(re.search(r'value: \|\n\s+(\{.*\})\n', ENVOY_TEMPLATE.read_text()).group(1))
    assert shipped["jwt"] == {"hs256_secret": DEFAULT_JWT_SECRET}
    # Form logins are named through whoami, asked of the demo app's cluster.
    assert shipped["whoami"] == {"path": "/api/v1/me", "cluster": "demo_app"}
    assert "name: demo_app" in ENVOY_TEMPLATE.read_text()


def test_generated_config_keeps_the_demo_shape(tmp_path):
    text = render_envoy_config({"a": "b'c\"d"}, wasm=tmp_path / "x.wasm", listener_port=1,
                               admin_port=2, app_port=3)
    assert "envoy.filters.http.wasm" in text and "envoy.wasm.runtime.v8" in text
    assert json.dumps(json.dumps({"a": "b'c\"d"})) in text
