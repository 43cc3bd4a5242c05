//! The module itself: it loads, links against the host without stubs, and reports its
//! configuration.

use crate::common::*;
use host_tests::{Host, LogLevel};
use serde_json::json;
use std::time::Duration;

#[test]
fn the_filter_uses_only_implemented_host_calls() {
    let (_host, vm) = start(json!({}));
    assert!(
        vm.stubbed_imports().is_empty(),
        "unimplemented imports: {:?}",
        vm.stubbed_imports()
    );
    assert!(
        vm.logged(LogLevel::Info, "configured"),
        "{}",
        vm.logs_text()
    );
    // The default flush interval (1 s), spread over four ticks.
    assert_eq!(
        vm.tick_period(),
        Some(std::time::Duration::from_millis(250))
    );
}

#[test]
fn the_flush_is_spread_over_four_ticks_per_interval() {
    let host = Host::new();
    let cfg = config(json!({ "flush_interval_ms": 400, "sweep_interval_seconds": 3600 }));
    let (a, b) = (host.vm(&cfg).unwrap(), host.vm(&cfg).unwrap());
    assert_eq!(a.tick_period(), Some(Duration::from_millis(100)));
    // The first tick claims the hourly sweep; the ticks below only flush.
    flush(&a);
    for i in 0..200u64 {
        login(
            &a,
            i,
            &format!("user{i}"),
            "student",
            &format!("cookie-{i}"),
        );
    }
    host.advance(Duration::from_secs(30));
    for i in 0..200u64 {
        browse(&a, &format!("cookie-{i}"));
    }
    // Worker b sees a's activity as a's ticks write it: a share per tick, all of it
    // within one flush interval, and no tick does most of the work.
    let seen_by_b = || {
        stats(&b)["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["duration_seconds"] == 30 && s["last_activity"] != s["login_time"])
            .count()
    };
    let mut seen = vec![seen_by_b()];
    let mut fuel = Vec::new();
    for _ in 0..TICKS_PER_FLUSH {
        let before = a.fuel_consumed();
        assert!(a.tick().unwrap());
        fuel.push(a.fuel_consumed() - before);
        seen.push(seen_by_b());
    }
    assert_eq!(seen.first(), Some(&0), "{seen:?}");
    assert_eq!(seen.last(), Some(&200), "{seen:?}");
    for w in seen.windows(2) {
        let share = w[1] - w[0];
        assert!((20..=80).contains(&share), "per tick: {seen:?}");
    }
    let total: u64 = fuel.iter().sum();
    assert!(
        fuel.iter().all(|f| *f * 2 < total),
        "one tick did most of the flush: {fuel:?}"
    );
}

#[test]
fn a_corrupt_module_fails_loudly() {
    let mut bytes = std::fs::read(host_tests::default_module_path()).unwrap();
    let mid = bytes.len() / 2;
    bytes.truncate(mid);
    assert!(Host::with_module_bytes(&bytes).is_err());
}

#[test]
fn every_stream_runs_the_full_envoy_lifecycle() {
    let (_host, vm) = start(json!({}));
    let ex = vm
        .post("/api/v1/things")
        .body("{}")
        .respond(201, &[], "{}")
        .unwrap();
    let names: Vec<_> = ex.callbacks.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "proxy_on_request_headers",
            "proxy_on_request_body",
            "proxy_on_response_headers",
            "proxy_on_response_body",
            "proxy_on_log",
            "proxy_on_done",
            "proxy_on_delete"
        ]
    );
    assert!(
        ex.callbacks.iter().all(|(_, a)| a.is_continue()),
        "{:?}",
        ex.callbacks
    );
    assert!(!ex.done_deferred);
}

#[test]
fn the_session_cookie_is_found_in_any_of_several_cookie_headers() {
    // HTTP/2 clients may send one `cookie` header per cookie; the filter reads the whole
    // header map at once and joins them.
    let (host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "split");
    host.advance(std::time::Duration::from_secs(60));
    vm.get("/api/v1/courses")
        .header("cookie", "theme=dark")
        .header("cookie", "session=split")
        .respond(200, &[], "[]")
        .unwrap();
    let s = stats(&vm);
    assert_eq!(
        only_session(&s)["last_activity"],
        "2026-11-28T10:01:00.000Z",
        "{s:#}"
    );
    assert_eq!(s["traffic"]["authenticated_requests_today"], 2);
}

#[test]
fn trusted_identity_headers_sent_by_clients_never_reach_the_app() {
    let (_host, vm) =
        start(json!({ "username_header": "x-auth-user", "role_header": "x-auth-role" }));
    let ex = vm
        .get("/api/v1/courses")
        .header("x-auth-role", "admin")
        .header("X-Auth-User", "mallory")
        .header("x-other", "kept")
        .respond(200, &[], "[]")
        .unwrap();
    let up = &ex.upstream.as_ref().unwrap().headers;
    assert_eq!(up.get_bytes("x-auth-role"), None);
    assert_eq!(up.get_bytes("x-auth-user"), None);
    assert_eq!(up.get_bytes("x-other"), Some(&b"kept"[..]));
}
