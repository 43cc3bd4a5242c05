//! The table's layout: a flush rewrites only the small fixed-width activity records, and a
//! worker's cached decoding of session details never shows stale data.

use crate::common::*;
use host_tests::{Host, Vm};
use serde_json::json;
use std::time::Duration;

fn details(host: &Host) -> Vec<(String, Vec<u8>)> {
    let mut keys: Vec<String> = host
        .shared_data_keys()
        .into_iter()
        .filter(|k| {
            k.starts_with(&key("headcount.v2.sessions."))
                || k.starts_with(&key("headcount.v2.cookies."))
        })
        .collect();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let v = host.shared_data(&k).map(|(v, _)| v).unwrap_or_default();
            (k, v)
        })
        .collect()
}

#[test]
fn flushes_touch_only_activity_records_and_stay_exact_across_three_workers() {
    let host = Host::new();
    let vms: Vec<Vm> = (0..3)
        .map(|_| host.vm(&config(json!({}))).unwrap())
        .collect();
    for i in 0..90u64 {
        login(
            &vms[i as usize % 3],
            i,
            &format!("user{i:02}"),
            "student",
            &format!("c{i}"),
        );
    }
    let before = details(&host);
    host.advance(Duration::from_secs(100));
    // Every session browses on every worker, at different times.
    for round in 0..3u64 {
        host.advance(Duration::from_millis(10));
        for i in 0..90u64 {
            browse(&vms[(i + round) as usize % 3], &format!("c{i}"));
        }
    }
    // The workers flush in turn, each losing CAS races on the activity shards.
    for vm in &vms {
        let pending = host.pending_forced_mismatches();
        host.force_cas_mismatches(&key("headcount.v2.seen."), 20u32.saturating_sub(pending));
        assert!(flush(vm));
    }
    assert_eq!(
        details(&host),
        before,
        "a flush rewrote session details or cookies"
    );
    assert!(host.shared_data_stats().forced_mismatches >= 20);
    let s = stats(&vms[0]);
    assert_eq!(s["active_sessions"], 90);
    assert_eq!(s["traffic"]["authenticated_requests_today"], 90 + 270);
    let sessions = s["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 90);
    assert!(
        sessions
            .iter()
            .all(|x| x["last_activity"] == "2026-11-28T10:01:40.030Z"),
        "the latest activity of every worker landed: {s:#}"
    );
}

#[test]
fn cached_details_never_hide_a_login_logout_rotation_or_touch() {
    let host = Host::new();
    let (a, b) = (
        host.vm(&config(json!({}))).unwrap(),
        host.vm(&config(json!({}))).unwrap(),
    );
    for i in 0..40u64 {
        login(&b, i, &format!("user{i:02}"), "student", &format!("c{i}"));
    }
    // Worker a reads (and caches) the table; every later change is made by worker b.
    assert_eq!(stats(&a)["active_sessions"], 40);
    login(&b, 100, "newcomer", "teacher", "fresh");
    let s = stats(&a);
    assert_eq!(s["active_sessions"], 41);
    assert_eq!(s["by_role"]["teacher"], 1);
    logout(&b, "c7");
    let s = stats(&a);
    assert_eq!(s["active_sessions"], 40);
    assert!(!usernames(&s).contains(&"user07".to_string()));
    // A rotation: the session keeps its identity and its new cookie works on a.
    host.advance(Duration::from_secs(5));
    b.get("/x")
        .cookie("session", "c3")
        .respond(200, &[("set-cookie", &set_cookie("c3-rotated"))], "")
        .unwrap();
    host.advance(Duration::from_secs(5));
    browse(&a, "c3-rotated");
    let s = stats(&a);
    let user03 = s["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["username"] == "user03")
        .unwrap();
    assert_eq!(user03["last_activity"], "2026-11-28T10:00:10.000Z");
    // A touch flushed by b shows on a, and idle sessions leave the count.
    host.advance(Duration::from_secs(301));
    browse(&b, "c5");
    flush(&b);
    let s = stats(&a);
    assert_eq!(s["active_sessions"], 1, "{s:#}");
    assert_eq!(usernames(&s), ["user05"]);
    assert_eq!(s["sessions"][0]["device"], "Safari on macOS");
    assert_eq!(s["sessions"][0]["user_agent"], UA);
}
