//! Several workers (VMs) share one store. Every write is a CAS read-modify-write, so lost
//! races are retried and counts stay exact.

use crate::common::*;
use host_tests::{Host, Vm};
use serde_json::json;
use std::time::Duration;

fn workers(n: usize) -> (Host, Vec<Vm>) {
    let host = Host::new();
    let vms = (0..n)
        .map(|_| host.vm(&config(json!({}))).unwrap())
        .collect();
    (host, vms)
}

#[test]
fn three_workers_losing_cas_races_still_count_exactly() {
    let (host, vms) = workers(3);
    for i in 0..60u64 {
        // Other workers win the next three races on the session shards. (Forced mismatches
        // only hit keys that exist, so top up rather than pile up: a pile of 64 in a row
        // would exhaust the filter's retries, which is a different test.)
        let pending = host.pending_forced_mismatches();
        host.force_cas_mismatches(&key("headcount.v2.sessions."), 3u32.saturating_sub(pending));
        let vm = &vms[i as usize % 3];
        let role = ["admin", "teacher", "student"][i as usize % 3];
        login(vm, i, &format!("user{i:02}"), role, &format!("cookie-{i}"));
    }
    assert_eq!(host.metric(&stat("headcount_logins_total")), Some(60));

    // Half of them get their cookie rotated, and ten log out, each on yet another worker,
    // again losing races.
    for i in 0..60u64 {
        let pending = host.pending_forced_mismatches();
        host.force_cas_mismatches(&key("headcount.v2.sessions."), 3u32.saturating_sub(pending));
        let vm = &vms[(i as usize + 2) % 3];
        if i % 2 == 0 {
            vm.get("/x")
                .cookie("session", &format!("cookie-{i}"))
                .respond(
                    200,
                    &[("set-cookie", &set_cookie(&format!("rotated-{i}")))],
                    "",
                )
                .unwrap();
        }
    }
    let cookie = |i: u64| {
        if i % 2 == 0 {
            format!("rotated-{i}")
        } else {
            format!("cookie-{i}")
        }
    };
    for i in 50..60u64 {
        host.force_cas_mismatches(&key("headcount.v2.sessions."), 2);
        logout(&vms[i as usize % 3], &cookie(i));
    }
    assert_eq!(host.metric(&stat("headcount_logouts_total")), Some(10));

    // Everyone browses on another worker than the one they logged in on.
    host.advance(Duration::from_secs(30));
    for i in 0..50u64 {
        browse(&vms[(i as usize + 1) % 3], &cookie(i));
    }
    let pending = host.pending_forced_mismatches();
    host.force_cas_mismatches(&key("headcount.v"), 10u32.saturating_sub(pending));
    flush_all(&host);
    // A cookie unknown at a flush (the logged-out ones) is held for one more flush.
    flush_all(&host);

    let s = stats(&vms[2]);
    assert_eq!(s["active_users"], 50);
    assert_eq!(s["active_sessions"], 50);
    // Users 50..60 (logged out) were 3 admins, 3 teachers and 4 students.
    assert_eq!(
        s["by_role"],
        json!({"admin": 17, "teacher": 17, "student": 16})
    );
    let sessions = s["sessions"].as_array().unwrap();
    assert!(
        sessions
            .iter()
            .all(|x| x["last_activity"] == "2026-11-28T10:00:30.000Z"),
        "every worker's activity was flushed: {s:#}"
    );
    // 60 logins + 30 rotating requests + 10 logouts + 50 browses, each counted once.
    // (How requests of sessions that ended are classified is checked in traffic.rs.)
    let t = &s["traffic"];
    assert_eq!(t["requests_today"], 150, "{s:#}");
    assert_eq!(
        t["authenticated_requests_today"].as_u64().unwrap()
            + t["anonymous_requests_today"].as_u64().unwrap(),
        150
    );
    let data = host.shared_data_stats();
    assert!(data.forced_mismatches >= 60, "{data:?}");
    assert_eq!(
        data.cas_mismatches, data.forced_mismatches,
        "no other race in a serial run"
    );
}

#[test]
fn workers_on_real_threads_lose_no_update() {
    let (host, vms) = workers(3);
    std::thread::scope(|scope| {
        for (w, vm) in vms.iter().enumerate() {
            scope.spawn(move || {
                for i in 0..40 {
                    let cookie = format!("w{w}-{i}");
                    login(
                        vm,
                        (w * 100 + i) as u64,
                        &format!("u{w}-{i}"),
                        "student",
                        &cookie,
                    );
                    browse(vm, &cookie);
                }
                flush(vm);
            });
        }
    });
    flush_all(&host);
    let s = stats(&vms[0]);
    assert_eq!(s["active_sessions"], 120, "{:?}", host.shared_data_stats());
    assert_eq!(s["active_users"], 120);
    assert_eq!(s["traffic"]["requests_today"], 240);
    assert_eq!(host.metric(&stat("headcount_logins_total")), Some(120));
}

#[test]
fn activity_reaches_other_workers_at_the_next_flush() {
    let (host, vms) = workers(2);
    let (a, b) = (&vms[0], &vms[1]);
    login(a, 1, "ada", "admin", "c");
    host.advance(Duration::from_secs(60));
    let writes = host.shared_data_stats().sets;
    for _ in 0..10 {
        browse(b, "c");
    }
    assert_eq!(
        host.shared_data_stats().sets,
        writes,
        "the request path writes no shared data"
    );
    assert_eq!(
        only_session(&stats(a))["last_activity"],
        "2026-11-28T10:00:00.000Z"
    );
    assert!(flush(b));
    assert_eq!(
        only_session(&stats(a))["last_activity"],
        "2026-11-28T10:01:00.000Z"
    );
    // The worker answering the stats flushes itself first.
    host.advance(Duration::from_secs(60));
    browse(a, "c");
    assert_eq!(
        only_session(&stats(a))["last_activity"],
        "2026-11-28T10:02:00.000Z"
    );
}

#[test]
fn all_workers_share_the_cookie_hash_secret() {
    let (_host, vms) = workers(3);
    login(&vms[0], 1, "ada", "admin", "shared-secret-cookie");
    let ex = vms[2]
        .get(STATS)
        .cookie("session", "shared-secret-cookie")
        .send()
        .unwrap();
    assert_eq!(
        ex.status,
        200,
        "worker 3 recognises worker 1's session: {}",
        ex.text()
    );
    logout(&vms[1], "shared-secret-cookie");
    assert_eq!(stats(&vms[2])["active_sessions"], 0);
}
