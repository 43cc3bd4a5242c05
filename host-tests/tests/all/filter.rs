//! The module itself: it loads, links against the host without stubs, and reports its
//! configuration.

use crate::common::*;
use host_tests::{Host, LogLevel};
use serde_json::json;

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
    assert_eq!(vm.tick_period(), Some(std::time::Duration::from_secs(1)));
}

#[test]
fn the_flush_interval_is_the_tick_period() {
    let (_host, vm) = start(json!({ "flush_interval_ms": 250 }));
    assert_eq!(
        vm.tick_period(),
        Some(std::time::Duration::from_millis(250))
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
