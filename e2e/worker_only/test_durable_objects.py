"""The Worker's Durable Objects: revocations, events, counters and history survive a restart and
the alarm forgets a revocation at the session's deadline; four shards apply the same rules; known
tokens cost no Durable Object request per request."""

import requests

import helpers
from helpers import (PLUGIN_CONFIG, SHORT_WINDOWS, TIMEOUT, bearer, browse, debug, events_of, history_of, login,
                     metric, metrics_of, refused, revoke, session_of, summary, ua, wait_debug, wait_for_history,
                     wait_stats)
from jwt_tokens import DEFAULT_JWT_SECRET, api_call as call, app_token

JWT_CONFIG = dict(PLUGIN_CONFIG, jwt={"hs256_secret": DEFAULT_JWT_SECRET})


def test_revocation_survives_a_restart_and_the_alarm_forgets_it(start_gateway, tmp_path):
    lifetime = 25  # long enough to restart wrangler dev before it runs out
    config = dict(SHORT_WINDOWS, enforce_revocation=True, idle_timeout_seconds=lifetime,
                  max_lifetime_seconds=lifetime)
    state = tmp_path / "persisted"
    first = start_gateway(config, state_dir=state)
    victim = login(first.url, "student1", user_agent=ua("victim"))
    values = browse(victim, first.url, 2)
    sid = session_of(first.url, "student1")["session_id"]
    bystander = login(first.url, "teacher1", user_agent=ua("bystander"))
    hist = wait_for_history(first.url, 2)
    assert max(m["active_users"] for m in hist) == 2, hist
    r = revoke(first.url, sid, headers=bearer())
    assert r.status_code == 200, r.text
    refused(first.url, values[-1])
    feed_before = events_of(first.url)
    assert [e["kind"] for e in feed_before["events"]] == ["revocation", "login", "login"], feed_before
    first.stop()

    second = start_gateway(config, state_dir=state)
    # A new isolate knows the revocation before it lets the first cookie through.
    for value in reversed(values):
        refused(second.url, value)
    r = bystander.get(second.url + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    assert helpers.debug(second.url)["stored_revoked"] == 3
    # Events, counters and the history peak were kept.
    assert events_of(second.url) == feed_before
    text = metrics_of(second.url)
    assert (metric(text, "headcount_logins_total"), metric(text, "headcount_revocations_total")) == (2, 1), text
    hist = history_of(second.url)
    assert max(m["active_users"] for m in hist) == 2, hist

    # Once the session would have ended anyway, the alarm forgets the revocation and the values
    # are just unknown cookies again (the app answers, nobody is counted).
    d = wait_debug(second.url, lambda d: d["stored_revoked"] == 0, timeout=lifetime + 6)
    assert d["stored_revoked"] == 0, d
    r = requests.get(second.url + "/api/v1/me", cookies={"session": values[-1]}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"


def test_four_shards_apply_the_same_rules(start_gateway):
    """Events, the per-user limit and revocations cross shards (the feed on shard 0, users on their
    user's shard, revocations on every shard)."""
    gw = start_gateway(dict(PLUGIN_CONFIG, enforce_revocation=True, max_sessions_per_user=1), shards=4)
    base = gw.url
    first = login(base, "student1", user_agent=ua("first"))
    second = login(base, "student1", user_agent=ua("second"))
    others = [login(base, name, user_agent=ua(name)) for name in ("teacher1", "student2", "student3")]
    snap = wait_stats(base, lambda x: x["active_sessions"] == 4)
    assert sorted(s["user_agent"] for s in snap["sessions"] if s["username"] == "student1") == [ua("second")]
    values = browse(second, base, 2)
    sid = session_of(base, "student1")["session_id"]
    assert revoke(base, sid, headers=bearer()).status_code == 200
    for value in values:
        refused(base, value)
    r = first.get(base + "/api/v1/me", timeout=TIMEOUT)  # evicted earlier, not revoked
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1"
    for s in others:
        assert s.get(base + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    text = metrics_of(base)
    assert [metric(text, f"headcount_{n}_total") for n in ("logins", "evictions", "revocations")] == [5, 1, 1], text
    assert metric(text, "headcount_active_sessions") == 3, text
    kinds = [e["kind"] for e in events_of(base)["events"]]
    assert sorted(kinds) == ["eviction", "login", "login", "login", "login", "login", "revocation"], kinds
    assert kinds[0] == "revocation", kinds
    assert helpers.debug(base)["stored_revoked"] == 3


def test_known_tokens_cost_no_durable_object_request_per_request(start_gateway):
    gw = start_gateway(JWT_CONFIG)
    base = gw.url
    token = app_token(base, "student1")
    assert call(base, token).status_code == 200
    wait_stats(base, lambda x: x["active_sessions"] == 1)
    before = debug(base)
    n = 40
    for _ in range(n):
        assert call(base, token, "/api/v1/courses").status_code == 200
    snap = wait_stats(base, lambda x: x["traffic"]["authenticated_requests_today"] == n + 1)
    assert snap["traffic"]["authenticated_requests_today"] == n + 1, summary(snap)
    after = debug(base)
    do, flushes = after["do_requests"] - before["do_requests"], after["flushes"] - before["flushes"]
    # Only flushes (one batch each with one shard) and the stats reads' own requests: never one per request.
    assert do <= flushes + 2 and do < n // 2, (do, flushes, before, after)
    assert after["proxied"] - before["proxied"] == n
