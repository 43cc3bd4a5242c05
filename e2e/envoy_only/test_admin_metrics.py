"""Envoy: the plugin's metrics are exported by Envoy's admin /stats/prometheus.

Envoy puts proxy-wasm metrics in its `wasmcustom` stats namespace (`/stats` shows
`wasmcustom.headcount_active_users`); Prometheus output strips that namespace and adds no
`envoy_` prefix, so the exported names are exactly the plugin's.
"""

import requests

from helpers import TIMEOUT, login, summary, ua, wait_for, wait_stats

GAUGES = ["headcount_active_users", "headcount_active_sessions", "headcount_active_users_role_admin",
          "headcount_active_users_role_teacher", "headcount_active_users_role_student"]
COUNTERS = ["headcount_logins_total", "headcount_logouts_total", "headcount_expiries_total",
            "headcount_evictions_total", "headcount_unnamed_logins_total", "headcount_whoami_begun_total",
            "headcount_whoami_nobody_total", "headcount_whoami_throttled_total"]


def prometheus(admin_url: str) -> tuple[dict[str, float], dict[str, str]]:
    r = requests.get(admin_url + "/stats/prometheus", timeout=TIMEOUT)
    assert r.status_code == 200
    samples, types = {}, {}
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        elif line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name.split("{")[0]] = float(value)
    return samples, types


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
            "headcount_active_users_role_admin": 1, "headcount_active_users_role_teacher": 0,
            "headcount_active_users_role_student": 2, "headcount_logins_total": 4,
            "headcount_logouts_total": 0, "headcount_expiries_total": 0,
            "headcount_evictions_total": 0, "headcount_unnamed_logins_total": 0,
            "headcount_whoami_begun_total": 0, "headcount_whoami_nobody_total": 0,
            "headcount_whoami_throttled_total": 0}
    samples, types = wait_metrics(gateway.admin_url, want)
    headcount = {k: v for k, v in samples.items() if "headcount" in k and not k.startswith("envoy_")}
    assert headcount == want, headcount
    for name in GAUGES:
        assert types.get(name) == "gauge", (name, types.get(name))
    for name in COUNTERS:
        assert types.get(name) == "counter", (name, types.get(name))

    # A logout moves the gauges and the counter.
    assert sessions["student2"].post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    want.update({"headcount_active_users": 2, "headcount_active_sessions": 3,
                 "headcount_active_users_role_student": 1, "headcount_logouts_total": 1})
    samples, _ = wait_metrics(gateway.admin_url, want)
    assert {k: samples.get(k) for k in want} == want


def test_metrics_exist_before_any_traffic(gateway):
    samples, types = prometheus(gateway.admin_url)
    for name in GAUGES + COUNTERS:
        assert samples.get(name) == 0, (name, samples.get(name))
