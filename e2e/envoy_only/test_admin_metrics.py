"""Envoy: the plugin's metrics are exported by Envoy's admin /stats/prometheus.

Envoy puts proxy-wasm metrics in its `wasmcustom` stats namespace; the filter names each one
`<metric>.app.<app>` (the per-role gauge `headcount_active_users_by_role.role.<role>.app.<app>`),
so `/stats` shows `wasmcustom.headcount_active_users.app.headcount`. The `stats_tags` of
envoy/envoy.yaml make the suffixes labels, and Prometheus output strips the namespace and adds no
`envoy_` prefix: the exported series are the plugin's own, `headcount_active_users{app="headcount"}`.
"""

import requests

from helpers import PLUGIN_CONFIG, TIMEOUT, login, samples, summary, ua, wait_for, wait_stats

APP = "headcount"  # the plugin's `name` in envoy/envoy.yaml
GAUGES = ["headcount_active_users", "headcount_active_sessions", "headcount_active_users_by_role"]
COUNTERS = ["headcount_logins_total", "headcount_logouts_total", "headcount_expiries_total",
            "headcount_evictions_total", "headcount_unnamed_logins_total", "headcount_whoami_begun_total",
            "headcount_whoami_nobody_total", "headcount_whoami_throttled_total"]


def prometheus(admin_url: str, app: str = APP) -> tuple[dict[str, float], dict[str, str]]:
    """`app`'s headcount samples, keyed `name` or `name{role="..."}`, and every family's type."""
    r = requests.get(admin_url + "/stats/prometheus", timeout=TIMEOUT)
    assert r.status_code == 200
    found, types = {}, {}
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
    for name, labels, value in samples(r.text):
        if name.startswith("headcount") and labels.get("app") == app:
            rest = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "app")
            found[name + (f"{{{rest}}}" if rest else "")] = value
    return found, types


def wait_metrics(admin_url: str, want: dict[str, float], timeout: float = 5.0):
    return wait_for(lambda: prometheus(admin_url), lambda got: all(got[0].get(k) == v for k, v in want.items()),
                    timeout)


def test_prometheus_metrics_follow_the_counts(gateway):
    base = gateway.url
    sessions = {name: login(base, name, user_agent=ua(name))
                for name in ("admin_user", "student1", "student2")}
    login(base, "student1", user_agent=ua("second-device"))
    snap = wait_stats(base, lambda s: s["active_sessions"] == 4)
    assert snap["active_users"] == 3, summary(snap)

    want = {"headcount_active_users": 3, "headcount_active_sessions": 4,
            'headcount_active_users_by_role{role="admin"}': 1,
            'headcount_active_users_by_role{role="teacher"}': 0,
            'headcount_active_users_by_role{role="student"}': 2, "headcount_logins_total": 4,
            "headcount_logouts_total": 0, "headcount_expiries_total": 0,
            "headcount_evictions_total": 0, "headcount_unnamed_logins_total": 0,
            "headcount_whoami_begun_total": 0, "headcount_whoami_nobody_total": 0,
            "headcount_whoami_throttled_total": 0}
    samples, types = wait_metrics(gateway.admin_url, want)
    assert samples == want, samples
    for name in GAUGES:
        assert types.get(name) == "gauge", (name, types.get(name))
    for name in COUNTERS:
        assert types.get(name) == "counter", (name, types.get(name))

    # A logout moves the gauges and the counter.
    assert sessions["student2"].post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    want.update({"headcount_active_users": 2, "headcount_active_sessions": 3,
                 'headcount_active_users_by_role{role="student"}': 1, "headcount_logouts_total": 1})
    samples, _ = wait_metrics(gateway.admin_url, want)
    assert {k: samples.get(k) for k in want} == want


def test_metrics_exist_before_any_traffic(gateway):
    found, types = prometheus(gateway.admin_url)
    roles = [f'headcount_active_users_by_role{{role="{r}"}}' for r in ("admin", "teacher", "student")]
    for name in [n for n in GAUGES if not n.endswith("by_role")] + roles + COUNTERS:
        assert found.get(name) == 0, (name, found.get(name))


def test_one_envoy_exports_every_apps_series_with_its_app_label(start_apps):
    """Two apps behind one Envoy (the same .wasm and vm_id): /stats/prometheus carries each app's
    gauges and counters under its own `app` label, each counting its own users."""
    gws = start_apps({"shop-a": dict(PLUGIN_CONFIG), "shop-b": dict(PLUGIN_CONFIG, admin_token="e2e-token-b-0123")})
    a, b = gws["shop-a"], gws["shop-b"]
    for name in ("admin_user", "student1", "student2"):
        login(a.url, name, user_agent=ua(f"a-{name}"))
    login(b.url, "student1", user_agent=ua("b-student1"))
    wait_stats(a.url, lambda s: s["active_sessions"] == 3)
    wait_stats(b.url, lambda s: s["active_sessions"] == 1, token="e2e-token-b-0123")
    want_a = {"headcount_active_users": 3, "headcount_logins_total": 3,
              'headcount_active_users_by_role{role="student"}': 2}
    want_b = {"headcount_active_users": 1, "headcount_logins_total": 1,
              'headcount_active_users_by_role{role="admin"}': 0}
    got_a, _ = wait_for(lambda: prometheus(a.admin_url, "shop-a"),
                        lambda got: all(got[0].get(k) == v for k, v in want_a.items()))
    got_b, _ = wait_for(lambda: prometheus(b.admin_url, "shop-b"),
                        lambda got: all(got[0].get(k) == v for k, v in want_b.items()))
    assert {k: got_a.get(k) for k in want_a} == want_a, got_a
    assert {k: got_b.get(k) for k in want_b} == want_b, got_b
