//! A response that re-sets the session cookie with a new value moves the session to it.

use crate::common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn a_rotated_cookie_keeps_the_same_session() {
    let (host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "v1");
    let before = stats(&vm);
    let id = only_session(&before)["session_id"].clone();

    host.advance(Duration::from_secs(60));
    // The app re-issues the cookie (e.g. Flask's permanent session refresh).
    let ex = vm
        .get("/api/v1/profile")
        .cookie("session", "v1")
        .respond(200, &[("set-cookie", &set_cookie("v2"))], "{}")
        .unwrap();
    assert!(ex.proxied());
    assert_eq!(ex.header("set-cookie").unwrap(), set_cookie("v2"));

    host.advance(Duration::from_secs(60));
    browse(&vm, "v2");
    let s = stats(&vm);
    assert_eq!(s["active_users"], 1);
    assert_eq!(s["active_sessions"], 1, "one session, not two: {s:#}");
    let session = only_session(&s);
    assert_eq!(session["session_id"], id);
    assert_eq!(session["login_time"], "2026-11-28T10:00:00.000Z");
    assert_eq!(session["last_activity"], "2026-11-28T10:02:00.000Z");
    assert_eq!(session["duration_seconds"], 120);
    assert_eq!(host.metric(&stat("headcount_logins_total")), Some(1));

    // The new cookie is the admin's cookie now: it opens the stats route.
    let by_cookie = vm.get(STATS).cookie("session", "v2").send().unwrap();
    assert_eq!(by_cookie.status, 200, "{}", by_cookie.text());
}

#[test]
fn rotation_then_logout_with_the_new_cookie_ends_the_session() {
    let (_host, vm) = start(json!({}));
    login(&vm, 1, "ada", "student", "r1");
    vm.get("/x")
        .cookie("session", "r1")
        .respond(200, &[("set-cookie", &set_cookie("r2"))], "")
        .unwrap();
    logout(&vm, "r2");
    let s = stats(&vm);
    assert_eq!(s["active_sessions"], 0, "{s:#}");
}

#[test]
fn the_same_value_set_again_is_not_a_rotation() {
    let (_host, vm) = start(json!({}));
    login(&vm, 1, "ada", "student", "same");
    vm.get("/x")
        .cookie("session", "same")
        .respond(200, &[("set-cookie", &set_cookie("same"))], "")
        .unwrap();
    browse(&vm, "same");
    let s = stats(&vm);
    assert_eq!(s["active_sessions"], 1);
}

#[test]
fn a_rotation_seen_by_one_worker_is_followed_by_another() {
    let host = host_tests::Host::new();
    let a = host.vm(&config(json!({}))).unwrap();
    let b = host.vm(&config(json!({}))).unwrap();
    login(&a, 5, "eve", "teacher", "w1");
    a.get("/x")
        .cookie("session", "w1")
        .respond(200, &[("set-cookie", &set_cookie("w2"))], "")
        .unwrap();
    host.advance(Duration::from_secs(30));
    browse(&b, "w2");
    flush(&b);
    let s = stats(&a);
    assert_eq!(s["active_sessions"], 1);
    assert_eq!(
        only_session(&s)["last_activity"],
        "2026-11-28T10:00:30.000Z"
    );
}

#[test]
fn the_session_cookie_is_found_among_other_set_cookies() {
    let (host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "v1");
    // Responses without any Set-Cookie skip the map read; these have several, the
    // session's not first, so the whole map is still read and followed.
    host.advance(Duration::from_secs(10));
    vm.get("/api/v1/profile")
        .cookie("session", "v1")
        .respond(
            200,
            &[
                ("set-cookie", "csrf=abc; Path=/"),
                ("set-cookie", &set_cookie("v2")),
                ("set-cookie", "theme=dark; Path=/"),
            ],
            "{}",
        )
        .unwrap();
    browse(&vm, "v2");
    let s = stats(&vm);
    assert_eq!(s["active_sessions"], 1, "{s:#}");
    assert_eq!(
        only_session(&s)["last_activity"],
        "2026-11-28T10:00:10.000Z"
    );
    // Cleared the same way, behind another cookie: a logout.
    vm.get("/api/v1/anything")
        .cookie("session", "v2")
        .respond(
            200,
            &[
                ("set-cookie", "csrf=def; Path=/"),
                ("set-cookie", "session=; Path=/; Max-Age=0"),
            ],
            "{}",
        )
        .unwrap();
    assert_eq!(stats(&vm)["active_sessions"], 0);
    assert_eq!(host.metric(&stat("headcount_logouts_total")), Some(1));
}
