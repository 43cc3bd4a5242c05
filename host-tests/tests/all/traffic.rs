//! Traffic figures: proxied requests only, split authenticated / anonymous, per UTC day.

use crate::common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn requests_are_split_into_authenticated_and_anonymous() {
    let (host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "a"); // the login itself is the session's first request
    browse(&vm, "a");
    browse(&vm, "a");
    anonymous(&vm);
    anonymous(&vm);
    anonymous(&vm);
    vm.get("/robots.txt")
        .user_agent("Bingbot/2.0 (crawler)")
        .cookie("session", "a")
        .send()
        .unwrap();
    vm.get("/")
        .cookie("session", "forged-value")
        .send()
        .unwrap();
    vm.get(STATS).bearer(TOKEN).send().unwrap(); // plugin route: not traffic
                                                 // A cookie that matches no session is held for one more flush (it may be a rotation
                                                 // another worker has not written yet), then counted as anonymous.
    flush(&vm);
    flush(&vm);
    host.advance(Duration::from_secs(1));
    let t = &stats(&vm)["traffic"];
    assert_eq!(t["requests_today"], 8, "{t:#}");
    assert_eq!(t["authenticated_requests_today"], 3, "{t:#}");
    assert_eq!(t["anonymous_requests_today"], 5, "{t:#}");
    assert_eq!(
        t["current_rps"], 0.8,
        "8 requests in the last 10 whole seconds: {t:#}"
    );

    host.advance(Duration::from_secs(10));
    assert_eq!(stats(&vm)["traffic"]["current_rps"], 0.0);
}

#[test]
fn response_time_is_time_to_the_upstream_headers() {
    let (host, vm) = start(json!({}));
    for ms in [40, 60, 80] {
        vm.get("/slow")
            .upstream_latency(Duration::from_millis(ms))
            .send()
            .unwrap();
    }
    host.advance(Duration::from_secs(1));
    let t = &stats(&vm)["traffic"];
    assert_eq!(t["avg_response_time_ms"], 60.0, "{t:#}");
    // Past the 60 s window it no longer counts.
    host.advance(Duration::from_secs(61));
    assert_eq!(stats(&vm)["traffic"]["avg_response_time_ms"], 0.0);
}

#[test]
fn counters_reset_at_utc_midnight() {
    let (host, vm) = start(json!({}));
    let midnight = std::time::UNIX_EPOCH + Duration::from_secs(1_795_910_400); // 2026-11-29T00:00:00Z
    host.set_time(midnight - Duration::from_secs(2));
    anonymous(&vm);
    anonymous(&vm);
    flush(&vm);
    assert_eq!(stats(&vm)["traffic"]["requests_today"], 2);
    host.set_time(midnight + Duration::from_millis(500));
    anonymous(&vm);
    let t = &stats(&vm)["traffic"];
    assert_eq!(t["requests_today"], 1, "{t:#}");
    assert_eq!(t["anonymous_requests_today"], 1, "{t:#}");
}

#[test]
fn every_workers_traffic_is_summed() {
    let host = host_tests::Host::new();
    let vms: Vec<_> = (0..3)
        .map(|_| host.vm(&config(json!({}))).unwrap())
        .collect();
    for (i, vm) in vms.iter().enumerate() {
        for _ in 0..=i {
            anonymous(vm);
        }
    }
    flush_all(&host);
    assert_eq!(stats(&vms[0])["traffic"]["requests_today"], 6);
}

#[test]
fn requests_made_with_a_live_session_are_authenticated_including_logout_and_rotation() {
    let (_host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "c1");
    // The request whose response rotates the cookie, and the logout itself, all carry the
    // cookie of a live session; all within one flush interval.
    vm.get("/x")
        .cookie("session", "c1")
        .respond(200, &[("set-cookie", &set_cookie("c2"))], "")
        .unwrap();
    browse(&vm, "c2");
    logout(&vm, "c2");
    flush(&vm);
    flush(&vm);
    let t = &stats(&vm)["traffic"];
    assert_eq!(t["requests_today"], 4, "{t:#}");
    assert_eq!(t["authenticated_requests_today"], 4, "{t:#}");
    assert_eq!(t["anonymous_requests_today"], 0, "{t:#}");
}

#[test]
fn a_late_request_with_the_previous_cookie_value_is_authenticated() {
    let (_host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "c1");
    vm.get("/x")
        .cookie("session", "c1")
        .respond(200, &[("set-cookie", &set_cookie("c2"))], "")
        .unwrap();
    // A request that left the browser before the rotation arrives after it (README: the old
    // value stays an alias of the session); then the user logs out before the next flush.
    browse(&vm, "c1");
    logout(&vm, "c2");
    flush(&vm);
    flush(&vm);
    let t = &stats(&vm)["traffic"];
    assert_eq!(t["requests_today"], 4, "{t:#}");
    assert_eq!(t["authenticated_requests_today"], 4, "{t:#}");
}
