//! Active = seen within `active_window_seconds`, inclusive. Idle timeout and maximum lifetime
//! end sessions at the sweep (a tick).

use crate::common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn the_active_window_is_inclusive_to_the_millisecond() {
    let (host, vm) = start(json!({ "active_window_seconds": 300 }));
    login(&vm, 1, "ada", "admin", "w");
    host.advance(Duration::from_secs(300));
    let s = stats(&vm);
    assert_eq!(
        s["active_users"], 1,
        "exactly at the window edge it still counts: {s:#}"
    );
    assert_eq!(only_session(&s)["duration_seconds"], 300);

    host.advance(Duration::from_millis(1));
    let s = stats(&vm);
    assert_eq!(s["active_users"], 0, "1 ms later it is gone: {s:#}");
    assert_eq!(s["active_sessions"], 0);
    assert_eq!(s["sessions"], json!([]));
    assert_eq!(
        s["by_role"],
        json!({"admin": 0, "teacher": 0, "student": 0})
    );

    // Not ended though: a request brings it back.
    browse(&vm, "w");
    let s = stats(&vm);
    assert_eq!(s["active_users"], 1);
    assert_eq!(
        only_session(&s)["last_activity"],
        "2026-11-28T10:05:00.001Z"
    );
}

#[test]
fn idle_sessions_end_at_the_sweep_after_the_timeout() {
    let (host, vm) = start(json!({
        "active_window_seconds": 300,
        "idle_timeout_seconds": 600,
        "sweep_interval_seconds": 1,
    }));
    login(&vm, 1, "idle", "student", "i1");
    login(&vm, 2, "busy", "student", "i2");

    host.advance(Duration::from_secs(600));
    browse(&vm, "i2");
    assert!(flush(&vm));
    assert_eq!(
        host.metric(&stat("headcount_expiries_total")),
        Some(0),
        "exactly at the timeout: alive"
    );

    host.advance(Duration::from_secs(1));
    flush(&vm);
    assert_eq!(host.metric(&stat("headcount_expiries_total")), Some(1));
    assert_eq!(host.metric(&stat("headcount_active_users")), Some(1));
    assert_eq!(host.metric(&stat("headcount_active_sessions")), Some(1));
    assert_eq!(
        host.metric(&stat("headcount_active_users_by_role.role.student")),
        Some(1)
    );

    // The ended session does not come back with its old cookie.
    browse(&vm, "i1");
    host.advance(Duration::from_secs(1));
    flush(&vm);
    let s = stats(&vm);
    assert_eq!(usernames(&s), ["busy"]);
    let ex = vm.get(STATS).cookie("session", "i1").send().unwrap();
    assert_eq!(ex.status, 401);
}

#[test]
fn the_maximum_lifetime_ends_even_a_busy_session() {
    let (host, vm) = start(json!({
        "active_window_seconds": 300,
        "idle_timeout_seconds": 1800,
        "max_lifetime_seconds": 900,
        "sweep_interval_seconds": 1,
    }));
    login(&vm, 1, "ada", "teacher", "m");
    for _ in 0..4 {
        host.advance(Duration::from_secs(200));
        browse(&vm, "m");
        flush(&vm);
    }
    host.advance(Duration::from_secs(100)); // T0 + 900 s
    browse(&vm, "m");
    flush(&vm);
    let s = stats(&vm);
    assert_eq!(
        s["active_users"], 1,
        "at exactly the lifetime it is alive: {s:#}"
    );
    assert_eq!(only_session(&s)["duration_seconds"], 900);

    host.advance(Duration::from_secs(1));
    flush(&vm);
    let s = stats(&vm);
    assert_eq!(s["active_users"], 0, "{s:#}");
    assert_eq!(host.metric(&stat("headcount_expiries_total")), Some(1));
    assert_eq!(
        host.metric(&stat("headcount_active_users_by_role.role.teacher")),
        Some(0)
    );
}

#[test]
fn gauges_follow_the_sweep() {
    let (host, vm) = start(json!({ "sweep_interval_seconds": 1 }));
    login(&vm, 1, "a", "admin", "g1");
    login(&vm, 2, "b", "student", "g2");
    login(&vm, 2, "b", "student", "g3"); // same user, second device
    flush(&vm);
    assert_eq!(host.metric(&stat("headcount_active_users")), Some(2));
    assert_eq!(host.metric(&stat("headcount_active_sessions")), Some(3));
    assert_eq!(
        host.metric(&stat("headcount_active_users_by_role.role.admin")),
        Some(1)
    );
    assert_eq!(
        host.metric(&stat("headcount_active_users_by_role.role.student")),
        Some(1)
    );
    assert_eq!(
        host.metric(&stat("headcount_active_users_by_role.role.teacher")),
        Some(0)
    );
    host.advance(Duration::from_secs(301));
    flush(&vm);
    assert_eq!(host.metric(&stat("headcount_active_users")), Some(0));
    assert_eq!(
        host.metric(&stat("headcount_expiries_total")),
        Some(0),
        "inactive is not ended"
    );
}
