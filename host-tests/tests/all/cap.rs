//! The hard cap on live sessions, far past it: numbers stay exact, memory bounded.

use crate::common::*;
use serde_json::json;

#[test]
fn ten_thousand_logins_over_the_cap_keep_the_numbers_exact() {
    const CAP: u64 = 1_000;
    const OVER: u64 = 10_000;
    let (host, vm) = start(json!({ "max_sessions": CAP }));
    for i in 0..CAP + OVER {
        // A millisecond apart, so "longest idle" names one session: with equal
        // times the eviction's tie-break (random session ids) decided, and the
        // check that user0 went first failed now and then.
        host.advance(std::time::Duration::from_millis(1));
        login(&vm, i, &format!("user{i}"), "student", &format!("c{i}"));
        if i == CAP {
            // Memory at the cap, for comparison with memory far past it.
            flush_all(&host);
        }
    }
    let at_cap = host.shared_data_bytes();
    // Traffic keeps flowing at the cap: the newest sessions are followed.
    browse(&vm, &format!("c{}", CAP + OVER - 1));
    anonymous(&vm);
    flush_all(&host);
    let s = stats(&vm);
    assert_eq!(s["active_sessions"], CAP, "{}", s["active_sessions"]);
    assert_eq!(s["active_users"], CAP);
    assert_eq!(s["by_role"]["student"], CAP);
    assert_eq!(
        host.metric(&stat("headcount_evictions_total")),
        Some(OVER as i64)
    );
    assert_eq!(
        host.metric(&stat("headcount_logins_total")),
        Some((CAP + OVER) as i64)
    );
    let t = &s["traffic"];
    assert_eq!(t["authenticated_requests_today"], CAP + OVER + 1, "{t:#}");
    assert_eq!(t["anonymous_requests_today"], 1, "{t:#}");
    // The longest idle went first: the very first sessions are gone, the last is there.
    let names = usernames(&stats_limit(&vm, CAP));
    assert!(names.contains(&format!("user{}", CAP + OVER - 1)));
    assert!(!names.contains(&"user0".to_string()));
    // Shared data stays bounded by the cap, not by the logins ever seen.
    let bytes = host.shared_data_bytes();
    assert!(
        bytes < 2 * at_cap.max(1) && bytes < 1_000 * CAP as usize,
        "{bytes} bytes of shared data after {} logins (cap {CAP}, {at_cap} bytes near the cap)",
        CAP + OVER
    );
}

fn stats_limit(vm: &host_tests::Vm, limit: u64) -> serde_json::Value {
    let ex = vm
        .get(&format!("{STATS}?limit={limit}"))
        .bearer(TOKEN)
        .send()
        .unwrap();
    assert_eq!(ex.status, 200);
    ex.json()
}
