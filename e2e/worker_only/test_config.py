"""The Worker: a bad configuration answers 500 on every request, naming the field, and is logged;
it never proxies. A bad ORIGIN or HEADCOUNT_SHARDS is named too; the shipped demo config counts
the demo app's tokens."""

import json
import re
import sys
import tomllib

import pytest
import requests

import helpers
from helpers import TIMEOUT
from hosts.worker import WORKERS


@pytest.mark.parametrize("config, field", helpers.bad_config_params(
    ('{"admin_token": "e2e-admin-token", ', None, "invalid-json"),
    ({"jwt": {"hs256_secret": "0123456789abcdef0123456789abcdef", "audence": "x"}}, "jwt.audence", "jwt-unknown-key"),
))
def test_bad_config_answers_500_naming_the_field(start_gateway, config, field):
    gw = start_gateway(config)
    for method, path in [("GET", "/"), ("POST", "/api/v1/auth/login"), ("GET", "/healthz"),
                         ("GET", helpers.STATS_PATH)]:
        r = requests.request(method, gw.url + path, headers=helpers.bearer(), timeout=TIMEOUT)
        assert r.status_code == 500, (method, path, r.status_code)
        assert "x-demo-app" not in r.headers, f"{method} {path} was proxied with a bad config"
        message = r.json()["error"]
        assert "HEADCOUNT_CONFIG" in message and "invalid headcount config" in message, message
        if field:
            assert f"`{field}`" in message, message
    assert gw.wait_log(re.escape(f"`{field}`" if field else "HEADCOUNT_CONFIG")), gw.log_tail()


def test_bad_origin_and_shards_are_named(start_gateway):
    gw = start_gateway(helpers.PLUGIN_CONFIG, origin="not a url")
    r = requests.get(gw.url + "/", timeout=TIMEOUT)
    assert r.status_code == 500 and "`ORIGIN`" in r.json()["error"], r.text
    gw = start_gateway(helpers.PLUGIN_CONFIG, shards=0)
    r = requests.get(gw.url + "/", timeout=TIMEOUT)
    assert r.status_code == 500 and "`HEADCOUNT_SHARDS`" in r.json()["error"], r.text


def test_shipped_demo_config_names_the_demo_apps_jwt_secret():
    """wrangler.toml's demo HEADCOUNT_CONFIG counts the demo app's API tokens (as envoy/envoy.yaml)."""
    sys.path.insert(0, str(WORKERS.parent / "envoy" / "demo"))
    from app import DEFAULT_JWT_SECRET
    toml = tomllib.loads((WORKERS / "wrangler.toml").read_text())
    shipped = json.loads(toml["vars"]["HEADCOUNT_CONFIG"])
    assert shipped["jwt"] == {"hs256_secret": DEFAULT_JWT_SECRET}
    # The same plugin configuration as the Envoy demo's (whoami's cluster is Envoy's only).
    envoy_yaml = (WORKERS.parent / "envoy" / "envoy.yaml").read_text()
    assert json.dumps(shipped) in envoy_yaml
