"""Envoy: the live-session cap with exact counts under concurrent logins."""

from concurrent.futures import ThreadPoolExecutor

from helpers import PLUGIN_CONFIG, TIMEOUT, login, metric, metrics_of, summary, ua, wait_stats


def test_the_cap_evicts_the_longest_idle_and_counts_stay_exact(start_gateway):
    """Envoy: which sessions go when logins come faster than the threads flush is not exactly the
    longest idle (each thread decides on what it has seen), so the count is exact and the kept
    users are at most two; the Worker's test (worker_only/test_cap.py) checks the order too."""
    gw = start_gateway(dict(PLUGIN_CONFIG, max_sessions=20))
    base = gw.url
    early = [login(base, "student1", user_agent=ua(f"early-{i}")) for i in range(5)]
    # Keep the first two busy so they are not the longest idle.
    for s in early[:2]:
        s.get(base + "/api/v1/me", timeout=TIMEOUT)
    wait_stats(base, lambda x: x["active_sessions"] == 5)
    with ThreadPoolExecutor(8) as pool:
        later = list(pool.map(lambda i: login(base, "student2", user_agent=ua(f"late-{i}")), range(60)))
    snap = wait_stats(base, lambda x: x["active_sessions"] == 20)
    assert snap["active_sessions"] == 20 and snap["active_users"] <= 2, summary(snap)
    metrics = metrics_of(base)
    assert metric(metrics, "headcount_evictions_total") == 45, metrics
    assert metric(metrics, "headcount_logins_total") == 65, metrics
    # Traffic keeps flowing for evicted and kept sessions alike.
    assert early[4].get(base + "/healthz", timeout=TIMEOUT).status_code == 200
    assert later[-1].get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
