"""The Worker: the live-session cap evicts exactly the longest idle session, with exact counts."""

from concurrent.futures import ThreadPoolExecutor

import helpers
from helpers import (PLUGIN_CONFIG, TIMEOUT, events_of, login, metric, metrics_of, stats, summary, ua,
                     wait_for_metric, wait_stats)


def test_the_cap_evicts_the_longest_idle_and_counts_stay_exact(start_gateway):
    """Exactly the longest idle session goes (the Durable Object sees every login in order; Envoy's
    threads do not, see envoy_only/test_cap.py)."""
    gw = start_gateway(dict(PLUGIN_CONFIG, max_sessions=20))
    base = gw.url
    early = [login(base, "student1", user_agent=ua(f"early-{i}")) for i in range(5)]
    # Keep the first two busy: the three idle ones are evicted first.
    for s in early[:2]:
        assert s.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    wait_stats(base, lambda x: x["active_sessions"] == 5 and x["traffic"]["authenticated_requests_today"] == 7)
    for i in range(16):
        login(base, "teacher1", user_agent=ua(f"fill-{i}"))
    snap = wait_stats(base, lambda x: x["active_sessions"] == 20)
    assert snap["active_sessions"] == 20, summary(snap)
    agents = {s["user_agent"] for s in snap["sessions"]}
    assert {ua(f"early-{i}") for i in range(5)} - agents == {ua("early-2")}, summary(snap)
    text = metrics_of(base)
    assert metric(text, "headcount_evictions_total") == 1, text
    [evicted] = [e for e in events_of(base)["events"] if e["kind"] == "eviction"]
    assert evicted["username"] == "student1", evicted

    # Many concurrent logins past the cap.
    with ThreadPoolExecutor(8) as pool:
        later = list(pool.map(lambda i: login(base, "student2", user_agent=ua(f"late-{i}")), range(60)))
    snap = wait_stats(base, lambda x: x["active_sessions"] == 20 and x["active_users"] == 1)
    assert snap["active_sessions"] == 20 and snap["active_users"] == 1, summary(snap)
    text = wait_for_metric(base, "headcount_logins_total", 81)
    assert metric(text, "headcount_logins_total") == 81, text
    assert metric(text, "headcount_evictions_total") == 61, text
    assert metric(text, "headcount_active_sessions") == 20, text
    feed = events_of(base)
    assert feed["next"] == 81 + 61, feed["next"]
    assert len(feed["events"]) == 100
    d = helpers.debug(base)
    assert d["stored_sessions"] == 20, d

    # Traffic keeps flowing for evicted and kept sessions alike; the evicted one is anonymous now.
    before = stats(base)["traffic"]
    r = early[4].get(base + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    r = later[-1].get(base + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    snap = wait_stats(base, lambda x: x["traffic"]["requests_today"] == before["requests_today"] + 2
                      and x["traffic"]["anonymous_requests_today"] == before["anonymous_requests_today"] + 1)
    assert snap["traffic"]["authenticated_requests_today"] == before["authenticated_requests_today"] + 1, summary(snap)
    assert snap["traffic"]["anonymous_requests_today"] == before["anonymous_requests_today"] + 1, summary(snap)
