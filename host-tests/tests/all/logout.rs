//! The logout route answered 2xx/3xx, or any response clearing the cookie, ends the session.

use crate::common::*;
use serde_json::json;

#[test]
fn the_logout_route_ends_the_session() {
    let (host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "c1");
    login(&vm, 2, "bob", "student", "c2");
    assert_eq!(stats(&vm)["active_users"], 2);

    let ex = vm
        .post(LOGOUT)
        .cookie("session", "c1")
        .respond(204, &[], "")
        .unwrap();
    assert!(ex.proxied());
    let s = stats(&vm);
    assert_eq!(usernames(&s), ["bob"]);
    assert_eq!(
        s["by_role"],
        json!({"admin": 0, "teacher": 0, "student": 1})
    );
    assert_eq!(host.metric(&stat("headcount_logouts_total")), Some(1));

    // The ended session's cookie opens nothing and counts nobody.
    browse(&vm, "c1");
    assert_eq!(usernames(&stats(&vm)), ["bob"]);
    let ex = vm.get(STATS).cookie("session", "c1").send().unwrap();
    assert_eq!(ex.status, 401, "{}", ex.text());
}

#[test]
fn a_refused_logout_keeps_the_session() {
    let (_host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "c1");
    vm.post(LOGOUT)
        .cookie("session", "c1")
        .respond(403, &[], r#"{"error":"csrf"}"#)
        .unwrap();
    vm.post(LOGOUT)
        .cookie("session", "c1")
        .respond(500, &[], "")
        .unwrap();
    assert_eq!(usernames(&stats(&vm)), ["ada"]);
}

#[test]
fn a_redirecting_logout_counts() {
    let (_host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "c1");
    vm.post(LOGOUT)
        .cookie("session", "c1")
        .respond(303, &[("location", "/")], "")
        .unwrap();
    assert_eq!(stats(&vm)["active_sessions"], 0);
}

#[test]
fn a_response_clearing_the_cookie_ends_the_session() {
    let (_host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "m1");
    login(&vm, 2, "bob", "admin", "m2");
    login(&vm, 3, "cy", "admin", "m3");
    // Max-Age=0 on an ordinary route (e.g. the app expired the session itself).
    vm.get("/account/delete")
        .cookie("session", "m1")
        .respond(
            200,
            &[("set-cookie", "session=deleted; Max-Age=0; Path=/")],
            "",
        )
        .unwrap();
    // An Expires date in the past.
    vm.get("/x")
        .cookie("session", "m2")
        .respond(
            200,
            &[(
                "set-cookie",
                "session=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/",
            )],
            "",
        )
        .unwrap();
    // Another cookie being cleared does not matter.
    vm.get("/y")
        .cookie("session", "m3")
        .respond(200, &[("set-cookie", "theme=; Max-Age=0")], "")
        .unwrap();
    assert_eq!(usernames(&stats(&vm)), ["cy"]);
}

#[test]
fn logging_out_without_a_session_is_harmless() {
    let (host, vm) = start(json!({}));
    let ex = vm.post(LOGOUT).respond(200, &[], "").unwrap();
    assert!(ex.proxied());
    let ex = vm
        .post(LOGOUT)
        .cookie("session", "never-logged-in")
        .respond(200, &[], "")
        .unwrap();
    assert!(ex.proxied());
    assert_eq!(host.metric(&stat("headcount_logouts_total")), Some(0));
}
