"""Durable Object requests per proxied authenticated request (printed; the Worker counts its own
DO fetches and reports them with HEADCOUNT_DEBUG=1), sharded state behaving like one shard, and
the bundle size."""

import time
from pathlib import Path

import helpers
from helpers import TIMEOUT, USERS, login, summary, ua, wait_stats

WORKERS = Path(__file__).resolve().parents[1]
REQUESTS_PER_USER = 40


def _browse(base, clients, n):
    paths = ("/api/v1/me", "/api/v1/courses")
    for i in range(n):
        for s in clients.values():
            r = s.get(base + paths[i % 2], timeout=TIMEOUT)
            assert r.status_code == 200, r.status_code
            assert r.cookies.get("session"), "the demo app rotates the cookie on every response"


def _measure(start_worker, shards):
    # Default flush interval (1 s): what a deployment would run.
    config = {"admin_token": helpers.ADMIN_TOKEN, "active_window_seconds": 60}
    wp = start_worker(config, shards=shards)
    base = wp.url
    clients = {name: login(base, name, user_agent=ua(name)) for name in USERS}
    wait_stats(base, lambda s: s["active_sessions"] == len(USERS), timeout=10)
    time.sleep(1.5)
    d0 = helpers.debug(base)
    t0 = time.monotonic()
    _browse(base, clients, REQUESTS_PER_USER)
    elapsed = time.monotonic() - t0
    time.sleep(2.5)  # let the background flusher write the rest
    d1 = helpers.debug(base)
    authenticated = REQUESTS_PER_USER * len(USERS)
    assert d1["proxied"] - d0["proxied"] == authenticated, (d0, d1)
    assert d1["with_cookie"] - d0["with_cookie"] == authenticated, (d0, d1)
    # d0's own stats request made DO requests too (a flush and one read per shard).
    stats_requests = shards
    do_requests = d1["do_requests"] - d0["do_requests"] - stats_requests
    ratio = do_requests / authenticated
    print(f"\n[scale] shards={shards}: {authenticated} authenticated requests (each rotating the cookie) "
          f"in {elapsed:.1f}s ({authenticated / elapsed:.0f}/s) -> {do_requests} Durable Object requests "
          f"in {d1['flushes'] - d0['flushes']} flushes = {ratio:.3f} DO requests per authenticated request")
    snap = helpers.stats(base)
    assert snap["active_sessions"] == len(USERS), summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == authenticated + len(USERS), summary(snap)
    assert snap["traffic"]["anonymous_requests_today"] == 0, summary(snap)
    return ratio, clients, wp


def test_durable_object_requests_per_authenticated_request(start_worker):
    ratio, _, _ = _measure(start_worker, shards=1)
    # Without coalescing this would be >= 1 (a write per rotation).
    assert ratio < 0.25, ratio


def test_sharded_state_counts_like_one_shard(start_worker):
    ratio, clients, wp = _measure(start_worker, shards=4)
    assert ratio < 1.0, ratio
    base = wp.url
    d = helpers.debug(base)
    assert d["shards"] == 4 and d["stored_sessions"] == len(USERS), d
    # An admin session on any shard may read the merged stats; logout reaches the right shard.
    r = clients["admin_user"].get(base + helpers.STATS_PATH, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["active_users"] == len(USERS), r.text[:300]
    r = clients["student1"].get(base + helpers.STATS_PATH, timeout=TIMEOUT)
    assert r.status_code == 403, r.status_code
    for name in ("teacher1", "student2"):
        assert clients[name].post(base + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda s: s["active_sessions"] == 3)
    assert snap["by_role"] == {"admin": 1, "teacher": 0, "student": 2}, summary(snap)
    assert helpers.debug(base)["stored_sessions"] == 3


def test_bundle_size():
    wasm = WORKERS / "build" / "index_bg.wasm"
    js = WORKERS / "build" / "index.js"
    assert wasm.is_file() and js.is_file()
    total = wasm.stat().st_size + js.stat().st_size
    import gzip
    gz = len(gzip.compress(wasm.read_bytes() + js.read_bytes(), 9))
    print(f"\n[bundle] index_bg.wasm {wasm.stat().st_size} B + index.js {js.stat().st_size} B "
          f"= {total} B ({gz} B gzipped; Workers free plan limit 3 MiB gzipped)")
    assert gz < 3 * 1024 * 1024
