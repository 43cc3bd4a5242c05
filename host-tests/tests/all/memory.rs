//! Memory stays bounded: after sessions log in and expire, neither the VM's linear memory
//! nor the shared data keeps growing.

use crate::common::*;
use serde_json::json;
use std::time::Duration;

const ROUNDS: usize = 8;
const PER_ROUND: usize = 1000;

#[test]
fn sessions_that_come_and_go_leave_no_growth() {
    let (host, vm) = start(json!({
        "active_window_seconds": 300,
        "idle_timeout_seconds": 600,
        "sweep_interval_seconds": 1,
    }));
    let baseline_shared = host.shared_data_bytes();
    let mut memory = Vec::new();
    let mut shared = Vec::new();
    let mut peak_shared = 0;
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            let cookie = format!("round{round}-session{i}-{}", "c".repeat(40));
            login(
                &vm,
                (round * PER_ROUND + i) as u64,
                &format!("user{i}"),
                "student",
                &cookie,
            );
            browse(&vm, &cookie);
        }
        // Gauges are refreshed by the sweep, at most once per sweep interval.
        host.advance(Duration::from_secs(1));
        flush(&vm);
        peak_shared = peak_shared.max(host.shared_data_bytes());
        assert_eq!(
            host.metric(&stat("headcount_logins_total")),
            Some(((round + 1) * PER_ROUND) as i64)
        );
        assert_eq!(
            host.metric(&stat("headcount_active_sessions")),
            Some(PER_ROUND as i64)
        );
        // Everyone goes idle past the timeout; the sweep ends them all.
        host.advance(Duration::from_secs(601));
        flush(&vm);
        assert_eq!(host.metric(&stat("headcount_active_sessions")), Some(0));
        assert_eq!(
            host.metric(&stat("headcount_expiries_total")),
            Some(((round + 1) * PER_ROUND) as i64)
        );
        memory.push(vm.memory_bytes());
        shared.push(host.shared_data_bytes());
    }
    println!(
        "linear memory per round: {memory:?}; shared data bytes per round: {shared:?} \
         (baseline {baseline_shared}, peak with {PER_ROUND} live sessions {peak_shared}); keys {}",
        host.shared_data_len()
    );
    assert_eq!(stats(&vm)["active_sessions"], 0);
    // Linear memory grows in 64 KiB pages and never shrinks. Allocator fragmentation (the
    // session ids and hash seeds are random) may cost a page or two once, but a leak of even
    // ~40 bytes per session would add 4 pages over the 7000 sessions after round 1.
    let slack = 4 * 65536;
    assert!(
        memory[ROUNDS - 1] <= memory[1] + slack,
        "linear memory kept growing: {memory:?}"
    );
    // The bound on the whole: about 2.9 MiB is the 1 MiB cookie-hash cache, the code's data
    // and 1000 live sessions' buffers; fragmentation may add a page pair in any round.
    assert!(
        memory[ROUNDS - 1] <= 7 << 19,
        "linear memory above 3.5 MiB: {memory:?}"
    );
    // Shared data is a fixed set of keys (session and cookie-index shards, the secret, the
    // traffic record, the sweep slot, the 2 KB of shard generations): after a sweep only empty
    // shards remain. A shard first
    // written in a later round adds its key once, so the size settles instead of growing with
    // the sessions ever seen (8000 here, ~190 bytes each while alive).
    // Every key carries the app's namespace (`<app>/`).
    let keys = host.shared_data_len();
    assert!(keys <= 1100, "keys: {keys}");
    let bound = 36 * 1024 + keys * (APP.len() + 1);
    for (round, bytes) in shared.iter().enumerate() {
        assert!(
            *bytes <= bound,
            "round {round}: {bytes} bytes of shared data after the sweep: {shared:?}"
        );
    }
    assert!(
        shared[ROUNDS - 1].abs_diff(shared[ROUNDS - 2]) <= 64,
        "shared data still growing: {shared:?}"
    );
    assert!(
        peak_shared - shared[0] >= PER_ROUND * 100,
        "the sweep frees at least 100 bytes per ended session: {shared:?} vs peak {peak_shared}"
    );
}

#[test]
fn a_flood_of_forged_cookies_is_bounded() {
    let (host, vm) = start(json!({}));
    let mut memory = Vec::new();
    let mut shared = Vec::new();
    for round in 0..6 {
        // 48,000 distinct cookies in all: more than the VM's cookie-hash cache holds
        // (32,768 slots), so it is filled and then evicts.
        for i in 0..8000 {
            vm.get("/")
                .cookie("session", &format!("forged-{round}-{i}"))
                .send()
                .unwrap();
        }
        // Unknown cookies are retried once, then dropped.
        flush(&vm);
        flush(&vm);
        memory.push(vm.memory_bytes());
        shared.push(host.shared_data_bytes());
    }
    println!("forged-cookie flood: linear memory {memory:?}, shared data {shared:?}");
    // Wasm memory never shrinks; allocator fragmentation may cost a page or two
    // once, but 32,000 more forged cookies (>= 512 KiB if kept) must not show.
    assert!(memory[5] <= memory[1] + 2 * 65536, "{memory:?}");
    assert!(shared[5].abs_diff(shared[1]) <= 64, "{shared:?}");
    let t = &stats(&vm)["traffic"];
    assert_eq!(t["anonymous_requests_today"], 48000, "{t:#}");
    assert_eq!(t["authenticated_requests_today"], 0);
}
