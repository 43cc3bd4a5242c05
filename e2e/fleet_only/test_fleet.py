"""A fleet: two Envoy nodes (2 workers each) in fleet mode, two collectors, Redis, a round-robin
front Envoy (hosts/fleet.py). One exact count whichever node a request goes through, and nothing
lost when a part fails: a collector killed mid-run, an Envoy node restarted, Redis stopped and
started again from its append-only file, or a Redis Cluster of three primaries as the store."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from demo_app import running_demo_app
from helpers import (PLUGIN_CONFIG, STATS_PATH, TIMEOUT, bearer, login, metric, metrics_of, stats, summary, ua,
                     wait_for, wait_for_metric, wait_stats)
from hosts import fleet

CROWD = 400


def every_session(url: str) -> dict[str, Any]:
    """The stats with every session listed (not only the default first ones)."""
    r = requests.get(url + STATS_PATH + "?limit=1000", headers=bearer(), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def same_answer(snap: dict[str, Any]) -> dict[str, Any]:
    """What two nodes asked at the same moment must agree on (not the clock or the rates)."""
    return {
        "counts": (snap["active_users"], snap["active_sessions"], snap["by_role"]),
        "sessions": sorted((x["session_id"], x["username"], x["role"], x["login_time"]) for x in snap["sessions"]),
        "traffic": {k: v for k, v in snap["traffic"].items() if k.endswith("_today")},
    }


def test_a_user_logs_in_on_one_node_and_browses_rotates_and_logs_out_on_the_other(start_context):
    gw = fleet.start(start_context, PLUGIN_CONFIG)
    a, b = gw.node_url(0), gw.node_url(1)
    s = login(a, "teacher1", user_agent=ua("fleet"))
    first = s.cookies.get("session")
    for _ in range(3):
        assert s.get(b + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    assert s.cookies.get("session") != first, "the demo app rotates its cookie: node b followed a rotation"

    def settled(x: dict[str, Any]) -> bool:
        return x["active_sessions"] == 1 and x["traffic"]["authenticated_requests_today"] == 4

    snaps = [wait_stats(url, settled) for url in (a, b)]
    for snap in snaps:
        assert snap["active_users"] == 1, summary(snap)
        assert snap["by_role"] == {"admin": 0, "teacher": 1, "student": 0}, summary(snap)
        assert [x["username"] for x in snap["sessions"]] == ["teacher1"], summary(snap)
        assert snap["traffic"]["authenticated_requests_today"] == 4, summary(snap)
        assert snap["traffic"]["anonymous_requests_today"] == 0, summary(snap)
    assert same_answer(snaps[0]) == same_answer(snaps[1])

    assert s.post(b + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    for url in (a, b):
        snap = wait_stats(url, lambda x: x["active_sessions"] == 0)
        assert snap["active_users"] == 0 and snap["by_role"]["teacher"] == 0, summary(snap)
        text = metrics_of(url)
        assert (metric(text, "headcount_logins_total"), metric(text, "headcount_logouts_total")) == (1, 1), text


@pytest.fixture(scope="module")
def crowd_app(tmp_path_factory):
    with running_demo_app(tmp_path_factory.mktemp("crowd"), crowd=CROWD) as app:
        yield app


def crowd_roles(names: list[str]) -> dict[str, int]:
    roles = {"admin": 0, "teacher": 0, "student": 0}
    for name in names:
        roles[("student", "teacher", "admin")[int(name.removeprefix("member")) % 3]] += 1
    return roles


def test_400_users_from_32_threads_through_both_nodes_half_logging_out_leave_the_exact_rest(
        start_context, crowd_app):
    """Every user logs in and browses through the front (so over both nodes, each request on a new
    connection), and every other one logs out: exactly the others stay, with their roles."""
    gw = fleet.start(start_context, PLUGIN_CONFIG, app=crowd_app)
    names = [f"member{i}" for i in range(1, CROWD + 1)]
    leaving = set(names[::2])

    def one(name: str) -> int:
        s = login(gw.url, name, user_agent=ua(name))
        for path in ("/api/v1/me", "/api/v1/courses"):
            with requests.Session() as fresh:
                fresh.headers["User-Agent"] = ua(name)
                fresh.cookies.update(s.cookies)
                assert fresh.get(gw.url + path, timeout=TIMEOUT).status_code == 200
                s.cookies.update(fresh.cookies)
        if name in leaving:
            assert s.post(gw.url + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
            return 4
        return 3

    with ThreadPoolExecutor(32) as pool:
        requests_made = sum(pool.map(one, names))
    staying = [n for n in names if n not in leaving]
    want = crowd_roles(staying)

    def exact(x: dict[str, Any]) -> bool:
        return x["active_sessions"] == len(staying) and x["traffic"]["requests_today"] == requests_made

    for url in (gw.node_url(0), gw.node_url(1)):
        snap = wait_for(lambda u=url: every_session(u), exact, timeout=15)
        assert snap["active_users"] == len(staying), summary(snap)
        assert snap["by_role"] == want, summary(snap)
        assert sorted(x["username"] for x in snap["sessions"]) == sorted(staying)
        # Every request counted once. (Which of them count as authenticated is not asserted: a
        # request whose activity reaches the ledger after its session's logout on another node
        # counts as anonymous, as one on another worker of a single Envoy does.)
        assert snap["traffic"]["requests_today"] == requests_made, snap["traffic"]


def test_a_collector_killed_mid_run_loses_nothing(start_context):
    """Logins keep coming while one collector is killed (SIGKILL, as a crash): the nodes retry the
    other; a batch the dead one applied but never answered counts once."""
    gw = fleet.start(start_context, PLUGIN_CONFIG)
    users = ["admin_user", "teacher1", "student1", "student2", "student3"]
    done = threading.Event()
    sessions: list[requests.Session] = []

    def logins():
        for i in range(40):
            sessions.append(login(gw.url, users[i % 5], user_agent=ua(f"device{i}")))
            if i == 10:
                gw.collectors[0].kill()
        done.set()

    worker = threading.Thread(target=logins)
    worker.start()
    worker.join(120)
    assert done.is_set()
    snap = wait_stats(gw.url, lambda x: x["active_sessions"] == 40, timeout=20)
    logs = "\n".join(line for n in gw.nodes for line in n.log_text().splitlines() if "fleet:" in line)
    assert snap["active_sessions"] == 40 and snap["active_users"] == 5, f"{summary(snap)}\n{logs}"
    assert snap["by_role"] == {"admin": 1, "teacher": 1, "student": 3}, summary(snap)
    # While a replica is down a login may go on before its event landed (nothing is lost).
    text = wait_for_metric(gw.url, "headcount_logins_total", 40, timeout=20)
    assert metric(text, "headcount_logins_total") == 40, text


def test_an_envoy_node_restarted_forgets_nobody(start_context):
    """Today a restarted Envoy forgets every session (its table was in its shared data); a fleet
    node keeps none, so after a restart its users are still counted and still followed."""
    gw = fleet.start(start_context, PLUGIN_CONFIG)
    a = gw.node_url(0)
    clients = {name: login(a, name, user_agent=ua(name)) for name in ("admin_user", "student1", "student2")}
    # Sessions land at once; a node's requests go with its next flush. A restart loses at most
    # the requests of its last flush interval, never a session: wait for them before it.
    wait_stats(a, lambda x: x["active_sessions"] == 3 and x["traffic"]["authenticated_requests_today"] == 3)
    gw.restart_node(0)
    snap = stats(a)
    assert snap["active_sessions"] == 3 and snap["active_users"] == 3, summary(snap)
    for s in clients.values():
        assert s.get(a + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(a, lambda x: x["traffic"]["authenticated_requests_today"] == 6)
    assert snap["traffic"]["authenticated_requests_today"] == 6, summary(snap)
    assert snap["traffic"]["anonymous_requests_today"] == 0, summary(snap)
    assert clients["student1"].post(a + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(a, lambda x: x["active_sessions"] == 2)
    assert snap["by_role"] == {"admin": 1, "teacher": 0, "student": 1}, summary(snap)


def test_redis_stopped_then_restarted_from_its_aof_keeps_every_session_and_traffic_flows_meanwhile(
        start_context):
    gw = fleet.start(start_context, PLUGIN_CONFIG, appendonly=True)
    before = {name: login(gw.url, name, user_agent=ua(name)) for name in ("admin_user", "teacher1")}
    wait_stats(gw.url, lambda x: x["active_sessions"] == 2)
    gw.redis[0].stop()
    # The app is still served at once (fail open); the data routes say why they cannot answer.
    during = login(gw.url, "student1", user_agent=ua("while-redis-is-down"))
    assert during.get(gw.url + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    r = requests.get(gw.url + STATS_PATH, headers=bearer(), timeout=TIMEOUT)
    assert r.status_code == 503, r.text
    assert "ledger unavailable" in r.json()["error"], r.text
    gw.redis[0].start()
    # Every session from before, and the login made while Redis was away, once it is delivered.
    snap = wait_stats(gw.url, lambda x: x["active_sessions"] == 3, timeout=20)
    assert sorted(x["username"] for x in snap["sessions"]) == ["admin_user", "student1", "teacher1"], summary(snap)
    for s in before.values():
        assert s.get(gw.url + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(gw.url, lambda x: x["traffic"]["authenticated_requests_today"] == 6, timeout=10)
    assert snap["traffic"]["authenticated_requests_today"] == 6, summary(snap)
    text = metrics_of(gw.url)
    assert metric(text, "headcount_logins_total") == 3, text


def test_a_redis_cluster_of_three_primaries_keeps_the_exact_count(start_context):
    gw = fleet.start(start_context, PLUGIN_CONFIG, redis_cluster=True, shards=16)
    clients = {name: login(gw.url, name, user_agent=ua(name))
               for name in ("admin_user", "teacher1", "student1", "student2", "student3")}
    for s in clients.values():
        assert s.get(gw.url + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    assert clients["student3"].post(gw.url + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(gw.url, lambda x: x["active_sessions"] == 4
                      and x["traffic"]["authenticated_requests_today"] == 11)
    assert snap["active_users"] == 4, summary(snap)
    assert snap["by_role"] == {"admin": 1, "teacher": 1, "student": 2}, summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == 11, summary(snap)
    # The shards are spread over the primaries (which shard lands where is fixed by the hash
    # slot of its tag: with 16 shards one primary may get none).
    keys = [int(fleet.redis_cli(r.port, "dbsize")) for r in gw.redis]
    assert sum(k > 0 for k in keys) >= 2, keys
