"""Envoy: Headcount's main-thread singleton (envoy.yaml's `bootstrap_extensions`, root_id
`headcount_singleton`) and the fallback without it.

With the singleton, worker threads hand their activity over and the singleton writes it, sweeps,
counts, sets the gauges and keeps the dashboard's stats snapshot (`/stats?snapshot=1`, renewed
once a second while read); a plain `/stats` stays exact. Without it, as under Istio's WasmPlugin,
the workers do all of that themselves and `?snapshot=1` is answered exactly.
"""

import time

import requests

from helpers import (PLUGIN_CONFIG, STATS_PATH, TIMEOUT, bearer, login, metric, metrics_of, summary, ua,
                     wait_for, wait_stats)

SHORT = dict(PLUGIN_CONFIG, active_window_seconds=2, idle_timeout_seconds=3, sweep_interval_seconds=1)


def stats_at(base: str, query: str) -> dict:
    r = requests.get(base + STATS_PATH + query, headers=bearer(), timeout=TIMEOUT)
    assert r.status_code == 200, r.text[:300]
    return r.json()


def generated(base: str, n: int = 5) -> list[str]:
    """`generated_at` of `n` snapshot reads, 30 ms apart (an exact report's moves each time)."""
    out = []
    for _ in range(n):
        out.append(stats_at(base, "?snapshot=1")["generated_at"])
        time.sleep(0.03)  # spacing between reads, not a wait for an outcome
    return out


def test_the_singleton_follows_the_app_and_serves_the_dashboard_a_snapshot(start_gateway):
    gw = start_gateway(PLUGIN_CONFIG)
    gw.wait_log("singleton: following app `headcount`")
    base = gw.url
    login(base, "admin_user", user_agent=ua("a"))
    # The first read asks for a snapshot; once the singleton has made one, reads within a second
    # share it (the same generated_at), while a plain /stats is exact.
    reads = wait_for(lambda: generated(base), lambda g: len(set(g)) < len(g), timeout=10)
    assert len(set(reads)) < len(reads), reads
    snap = stats_at(base, "?snapshot=1")
    assert snap["active_users"] == 1, summary(snap)
    login(base, "student1", user_agent=ua("b"))
    assert stats_at(base, "")["active_users"] == 2
    wait_for(lambda: stats_at(base, "?snapshot=1"), lambda s: s["active_users"] == 2, timeout=5)


def test_the_singleton_sweeps_and_publishes(start_gateway):
    gw = start_gateway(SHORT)
    gw.wait_log("singleton: following app `headcount`")
    base = gw.url
    s = login(base, "student1", user_agent=ua("a"))
    s.get(base + "/api/v1/me", timeout=TIMEOUT)
    wait_stats(base, lambda x: x["active_sessions"] == 1)
    snap = wait_stats(base, lambda x: x["active_sessions"] == 0, timeout=10)
    assert snap["active_users"] == 0, summary(snap)
    text = wait_for(lambda: metrics_of(base), lambda m: metric(m, "headcount_expiries_total") == 1, timeout=5)
    assert metric(text, "headcount_expiries_total") == 1
    # The request counted as authenticated: the singleton settled the worker's handoff.
    traffic = stats_at(base, "")["traffic"]
    assert traffic["authenticated_requests_today"] == 2, traffic


def test_without_the_singleton_workers_do_the_work_and_stats_stay_exact(start_gateway):
    gw = start_gateway(SHORT, singleton=False)
    base = gw.url
    login(base, "student1", user_agent=ua("a"))
    reads = generated(base)
    assert len(set(reads)) == len(reads), f"a snapshot was served without a singleton: {reads}"
    snap = wait_stats(base, lambda x: x["active_sessions"] == 0, timeout=10)
    assert snap["active_users"] == 0, summary(snap)
    text = wait_for(lambda: metrics_of(base), lambda m: metric(m, "headcount_expiries_total") == 1, timeout=5)
    assert metric(text, "headcount_expiries_total") == 1
    assert "singleton" not in gw.log_text()
