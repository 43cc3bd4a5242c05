"""The Worker: Durable Object requests per proxied authenticated request (printed; the Worker counts
its own DO fetches and reports them with HEADCOUNT_DEBUG=1), sharded state behaving like one shard,
and the bundle size."""

import gzip
import time

import helpers
from helpers import TIMEOUT, USERS, login, summary, ua, wait_stats
from hosts.worker import BUILD_DIR

REQUESTS_PER_USER = 40


def _browse(base, clients, n):
    paths = ("/api/v1/me", "/api/v1/courses")
    for i in range(n):
        for s in clients.values():
            r = s.get(base + paths[i % 2], timeout=TIMEOUT)
            assert r.status_code == 200, r.status_code
            assert r.cookies.get("session"), "the demo app rotates the cookie on every response"


def _measure(start_gateway, shards):
    # Default flush interval (1 s): what a deployment would run.
    config = {"admin_token": helpers.ADMIN_TOKEN, "active_window_seconds": 60}
    gw = start_gateway(config, shards=shards)
    base = gw.url
    clients = {name: login(base, name, user_agent=ua(name)) for name in USERS}
    wait_stats(base, lambda s: s["active_sessions"] == len(USERS), timeout=10)
    # Every stats request (the debug header comes with one) first writes what the isolate has
    # buffered, and its header gives the counters from before it. So d0 is taken after a stats read
    # that wrote the logins; d2 after d1's read wrote the last of the browsing: no waiting for the
    # background flusher, and d2 - d0 holds every DO request the browsing caused, plus d0's and
    # d1's own stats requests (a read per shard each), which are subtracted.
    d0 = helpers.debug(base)
    t0 = time.monotonic()
    _browse(base, clients, REQUESTS_PER_USER)
    elapsed = time.monotonic() - t0
    helpers.debug(base)  # d1: writes what is still buffered
    d2 = helpers.debug(base)
    authenticated = REQUESTS_PER_USER * len(USERS)
    assert d2["proxied"] - d0["proxied"] == authenticated, (d0, d2)
    assert d2["with_cookie"] - d0["with_cookie"] == authenticated, (d0, d2)
    stats_requests = 2 * shards
    do_requests = d2["do_requests"] - d0["do_requests"] - stats_requests
    ratio = do_requests / authenticated
    print(f"\n[scale] shards={shards}: {authenticated} authenticated requests (each rotating the cookie) "
          f"in {elapsed:.1f}s ({authenticated / elapsed:.0f}/s) -> {do_requests} Durable Object requests "
          f"in {d2['flushes'] - d0['flushes']} flushes = {ratio:.3f} DO requests per authenticated request")
    snap = helpers.stats(base)
    assert snap["active_sessions"] == len(USERS), summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == authenticated + len(USERS), summary(snap)
    assert snap["traffic"]["anonymous_requests_today"] == 0, summary(snap)
    return ratio, clients, gw


def test_durable_object_requests_per_authenticated_request(start_gateway):
    ratio, _, _ = _measure(start_gateway, shards=1)
    # Without coalescing this would be >= 1 (a write per rotation).
    assert ratio < 0.25, ratio


def test_sharded_state_counts_like_one_shard(start_gateway):
    ratio, clients, gw = _measure(start_gateway, shards=4)
    assert ratio < 1.0, ratio
    base = gw.url
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
    wasm = BUILD_DIR / "index_bg.wasm"
    js = BUILD_DIR / "index.js"
    assert wasm.is_file() and js.is_file()
    total = wasm.stat().st_size + js.stat().st_size
    gz = len(gzip.compress(wasm.read_bytes() + js.read_bytes(), 9))
    print(f"\n[bundle] index_bg.wasm {wasm.stat().st_size} B + index.js {js.stat().st_size} B "
          f"= {total} B ({gz} B gzipped; Workers free plan limit 3 MiB gzipped)")
    assert gz < 3 * 1024 * 1024
