//! `GET /__headcount/stats`: 401 without credentials, 403 with ones that don't grant access,
//! 200 with the admin token or a live admin-role session; never proxied, never counted.

use crate::common::*;
use serde_json::json;
use std::time::Duration;

fn assert_error(ex: &host_tests::Exchange, status: u16) {
    assert!(ex.answered_locally(), "{:?}", ex.outcome);
    assert!(ex.upstream.is_none());
    assert_eq!(ex.status, status, "{}", ex.text());
    assert_eq!(ex.header("cache-control").unwrap(), "no-store");
    let body = ex.json();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        ex.text()
    );
    assert!(
        !ex.text().contains("session_id"),
        "an error says nothing about sessions"
    );
}

#[test]
fn authorization() {
    let (host, vm) = start(json!({}));
    login(&vm, 1, "root", "admin", "admin-cookie");
    login(&vm, 2, "pupil", "student", "student-cookie");

    assert_error(&vm.get(STATS).send().unwrap(), 401);
    assert_error(
        &vm.get(STATS).cookie("session", "forged").send().unwrap(),
        401,
    );
    assert_error(
        &vm.get(STATS)
            .header("authorization", "Basic YTpi")
            .send()
            .unwrap(),
        401,
    );
    assert_error(&vm.get(STATS).bearer("wrong-token").send().unwrap(), 403);
    assert_error(
        &vm.get(STATS)
            .cookie("session", "student-cookie")
            .send()
            .unwrap(),
        403,
    );

    let ok = vm.get(STATS).bearer(TOKEN).send().unwrap();
    assert!(ok.answered_locally());
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("cache-control").unwrap(), "no-store");
    assert!(ok
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let ok = vm
        .get(STATS)
        .cookie("session", "admin-cookie")
        .send()
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["active_users"], 2);

    // Idle past the active window but not ended: still an admin session.
    host.advance(Duration::from_secs(301));
    let ex = vm
        .get(STATS)
        .cookie("session", "admin-cookie")
        .send()
        .unwrap();
    assert_eq!(ex.status, 200, "{}", ex.text());
    // Ended by the idle timeout: its cookie is nobody's.
    host.advance(Duration::from_secs(1500));
    let ex = vm
        .get(STATS)
        .cookie("session", "admin-cookie")
        .send()
        .unwrap();
    assert_error(&ex, 401);
}

#[test]
fn the_admin_token_is_optional_and_then_only_admin_sessions_get_in() {
    let host = host_tests::Host::new();
    let vm = host.vm("{}").unwrap();
    login(&vm, 1, "root", "admin", "a");
    assert_error(&vm.get(STATS).bearer(TOKEN).send().unwrap(), 403);
    assert_eq!(
        vm.get(STATS).cookie("session", "a").send().unwrap().status,
        200
    );
}

#[test]
fn other_plugin_routes() {
    let (_host, vm) = start(json!({}));
    let ex = vm.post(STATS).bearer(TOKEN).send().unwrap();
    assert!(ex.answered_locally());
    assert_eq!(ex.status, 405);
    let ex = vm
        .get("/__headcount/elsewhere")
        .bearer(TOKEN)
        .send()
        .unwrap();
    assert!(ex.answered_locally());
    assert_eq!(ex.status, 404);
    let ex = vm.get("/__headcount").send().unwrap();
    assert!(ex.answered_locally());
    // A path that merely starts like the prefix belongs to the app.
    let ex = vm.get("/__headcountish").send().unwrap();
    assert!(ex.proxied());
    // A query string does not hide the route.
    let ex = vm
        .get("/__headcount/stats?x=1")
        .bearer(TOKEN)
        .send()
        .unwrap();
    assert_eq!(ex.status, 200);
}

#[test]
fn a_custom_route_prefix() {
    let (_host, vm) = start(json!({ "route_prefix": "/ops/hc" }));
    assert!(vm.get(STATS).bearer(TOKEN).send().unwrap().proxied());
    let ex = vm.get("/ops/hc/stats").bearer(TOKEN).send().unwrap();
    assert_eq!(ex.status, 200);
}

#[test]
fn reading_stats_is_not_activity_nor_traffic() {
    let (host, vm) = start(json!({}));
    login(&vm, 1, "root", "admin", "a");
    host.advance(Duration::from_secs(200));
    for _ in 0..5 {
        vm.get(STATS).cookie("session", "a").send().unwrap();
    }
    let s = stats(&vm);
    assert_eq!(
        only_session(&s)["last_activity"],
        "2026-11-28T10:00:00.000Z"
    );
    assert_eq!(s["traffic"]["requests_today"], 1, "only the login: {s:#}");
}

#[test]
fn by_role_lists_every_configured_role_with_zeros() {
    let (_host, vm) = start(json!({ "roles": ["admin", "teacher", "student", "parent"] }));
    let s = stats(&vm);
    assert_eq!(
        s["by_role"],
        json!({"admin": 0, "teacher": 0, "student": 0, "parent": 0})
    );
    login(&vm, 10, "t", "teacher", "t");
    login(&vm, 11, "x", "ta", "x"); // a role nobody configured still shows up
    let s = stats(&vm);
    assert_eq!(
        s["by_role"],
        json!({"admin": 0, "teacher": 1, "student": 0, "parent": 0, "ta": 1})
    );
}

#[test]
fn distinct_users_versus_sessions() {
    let (_host, vm) = start(json!({}));
    login_from(&vm, "10.0.0.1", 1, "ada", "admin", "laptop");
    login_from(&vm, "10.0.0.2", 1, "ada", "admin", "phone");
    login_from(&vm, "10.0.0.3", 2, "bob", "student", "bob");
    login_from(&vm, "10.0.0.4", 3, "cy", "student", "cy-1");
    login_from(&vm, "10.0.0.4", 3, "cy", "student", "cy-2");
    login_from(&vm, "10.0.0.4", 3, "cy", "student", "cy-3");
    let s = stats(&vm);
    assert_eq!(s["active_users"], 3);
    assert_eq!(s["active_sessions"], 6);
    assert_eq!(
        s["by_role"],
        json!({"admin": 1, "teacher": 0, "student": 2})
    );
    let ids: std::collections::BTreeSet<_> = s["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["session_id"].to_string())
        .collect();
    assert_eq!(ids.len(), 6, "every session has its own id");
}

#[test]
fn the_document_has_every_field_of_the_contract() {
    let (host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "a");
    host.advance(Duration::from_millis(1500));
    let s = stats(&vm);
    assert_eq!(s["app"], APP);
    for key in [
        "app",
        "active_users",
        "active_sessions",
        "window_seconds",
        "by_role",
        "sessions",
        "traffic",
        "generated_at",
    ] {
        assert!(s.get(key).is_some(), "missing {key}: {s:#}");
    }
    for key in [
        "session_id",
        "user_id",
        "username",
        "role",
        "ip",
        "user_agent",
        "login_time",
        "last_activity",
        "duration_seconds",
    ] {
        assert!(
            only_session(&s).get(key).is_some(),
            "missing sessions[].{key}: {s:#}"
        );
    }
    for key in [
        "current_rps",
        "avg_response_time_ms",
        "requests_today",
        "authenticated_requests_today",
        "anonymous_requests_today",
    ] {
        assert!(
            s["traffic"].get(key).is_some(),
            "missing traffic.{key}: {s:#}"
        );
    }
    assert_eq!(s["generated_at"], "2026-11-28T10:00:01.500Z");
    assert_eq!(only_session(&s)["duration_seconds"], 1);
}

#[test]
fn a_revocation_event_names_who_revoked() {
    let (_host, vm) = start(json!({}));
    login(&vm, 1, "root", "admin", "admin-cookie");
    login(&vm, 2, "pupil", "student", "pupil-cookie");
    login(&vm, 3, "other", "student", "other-cookie");
    let s = stats(&vm);
    let id_of = |name: &str| {
        s["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["username"] == name)
            .map(|x| x["session_id"].as_str().unwrap().to_string())
            .unwrap()
    };
    let revoke = |name: &str| vm.post(&format!("/__headcount/sessions/{}/revoke", id_of(name)));
    // The admin's own session, from the dashboard (same-origin marker).
    let ex = revoke("pupil")
        .cookie("session", "admin-cookie")
        .header("x-headcount-request", "1")
        .send()
        .unwrap();
    assert_eq!(ex.status, 200, "{}", ex.text());
    let ex = revoke("other").bearer(TOKEN).send().unwrap();
    assert_eq!(ex.status, 200, "{}", ex.text());
    let ex = vm.get("/__headcount/events").bearer(TOKEN).send().unwrap();
    assert_eq!(ex.status, 200, "{}", ex.text());
    let events = ex.json()["events"].as_array().unwrap().clone();
    let by = |name: &str| {
        let e = events
            .iter()
            .find(|e| e["kind"] == "revocation" && e["username"] == name)
            .unwrap_or_else(|| panic!("no revocation of {name}: {events:#?}"));
        e["by"].clone()
    };
    assert_eq!(
        by("pupil"),
        json!({"via": "admin_session", "username": "root", "session_id": id_of("root")})
    );
    assert_eq!(by("other"), json!({"via": "admin_token"}));
    assert!(
        events
            .iter()
            .filter(|e| e["kind"] == "login")
            .all(|e| e.get("by").is_none()),
        "{events:#?}"
    );
}
