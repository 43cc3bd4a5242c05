//! A login is the configured route, answered 2xx/3xx by the app with the session cookie set.
//! Identity: login response JSON, else trusted response headers, else the username typed.

use crate::common::*;
use host_tests::LogLevel;
use serde_json::json;

#[test]
fn a_successful_login_is_one_active_user_with_its_details() {
    let (host, vm) = start(json!({}));
    let ex = login_from(&vm, "10.1.2.3", 1, "admin_user", "admin", "abc123");

    // The login went through untouched, body and cookie included.
    let up = ex.upstream.as_ref().unwrap();
    assert_eq!(up.headers.get(":path").unwrap(), LOGIN);
    assert!(String::from_utf8_lossy(&up.body).contains("correct horse"));
    assert_eq!(ex.status, 200);
    assert_eq!(ex.header("set-cookie").unwrap(), set_cookie("abc123"));
    assert!(ex.text().contains("admin_user"));
    assert_eq!(host.metric(&stat("headcount_logins_total")), Some(1));

    let s = stats(&vm);
    assert_eq!(s["active_users"], 1);
    assert_eq!(s["active_sessions"], 1);
    assert_eq!(s["window_seconds"], 300);
    assert_eq!(
        s["by_role"],
        json!({"admin": 1, "teacher": 0, "student": 0})
    );
    let session = only_session(&s);
    assert_eq!(session["user_id"], "1");
    assert_eq!(session["username"], "admin_user");
    assert_eq!(session["role"], "admin");
    assert_eq!(session["ip"], "10.1.2.3");
    assert_eq!(session["user_agent"], UA);
    assert_eq!(session["login_time"], "2026-11-28T10:00:00.000Z");
    assert_eq!(session["last_activity"], "2026-11-28T10:00:00.000Z");
    assert_eq!(session["duration_seconds"], 0);
    let id = session["session_id"].as_str().unwrap();
    assert_eq!(id.len(), 36, "uuid: {id}");
    assert_eq!(&id[14..15], "4", "a v4 uuid: {id}");
    assert_eq!(s["generated_at"], "2026-11-28T10:00:00.000Z");
    assert!(
        vm.logged(LogLevel::Info, "login admin_user as admin"),
        "{}",
        vm.logs_text()
    );
}

#[test]
fn a_redirecting_form_login_counts() {
    let (_host, vm) = start(json!({}));
    let ex = vm
        .post(LOGIN)
        .form(&[("username", "grace"), ("password", "pw")])
        .respond(
            302,
            &[
                ("location", "/dashboard"),
                ("set-cookie", &set_cookie("form-cookie")),
            ],
            "",
        )
        .unwrap();
    assert!(ex.proxied());
    assert_eq!(ex.status, 302);
    let s = stats(&vm);
    let session = only_session(&s);
    // Nobody in the (empty) response: the typed username, the default role.
    assert_eq!(session["username"], "grace");
    assert_eq!(session["role"], "unknown");
    assert_eq!(s["by_role"]["unknown"], 1);
}

#[test]
fn failed_logins_count_nobody() {
    let (host, vm) = start(json!({}));
    // Wrong password: 401, even if the app sets a cookie.
    let ex = vm
        .post(LOGIN)
        .json(&json!({"username": "ada", "password": "wrong"}))
        .respond(
            401,
            &[("set-cookie", &set_cookie("nope"))],
            r#"{"error":"bad credentials"}"#,
        )
        .unwrap();
    assert_eq!(ex.status, 401);
    // Success without a session cookie.
    vm.post(LOGIN)
        .json(&json!({"username": "ada", "password": "pw"}))
        .respond(
            200,
            &[("set-cookie", "other=1; Path=/")],
            user_body(1, "ada", "admin"),
        )
        .unwrap();
    // The right cookie on another route is not a login.
    vm.post("/api/v1/auth/signup")
        .json(&json!({"username": "ada"}))
        .respond(
            200,
            &[("set-cookie", &set_cookie("signup"))],
            user_body(1, "ada", "admin"),
        )
        .unwrap();
    // The login path with another method.
    vm.get(LOGIN)
        .respond(
            200,
            &[("set-cookie", &set_cookie("get"))],
            user_body(1, "ada", "admin"),
        )
        .unwrap();
    let s = stats(&vm);
    assert_eq!(s["active_users"], 0);
    assert_eq!(s["sessions"], json!([]));
    assert_eq!(host.metric(&stat("headcount_logins_total")), Some(0));
}

#[test]
fn a_query_string_on_the_login_path_is_ignored() {
    let (_host, vm) = start(json!({}));
    vm.post("/api/v1/auth/login?next=%2Fhome")
        .json(&json!({"username": "ada", "password": "pw"}))
        .respond(
            200,
            &[("set-cookie", &set_cookie("q"))],
            user_body(7, "ada", "student"),
        )
        .unwrap();
    assert_eq!(usernames(&stats(&vm)), ["ada"]);
}

#[test]
fn identity_from_trusted_headers_then_from_the_typed_username() {
    let (_host, vm) = start(json!({
        "user_id_header": "x-auth-user-id",
        "username_header": "x-auth-user",
        "role_header": "x-auth-role",
    }));
    // The body names nobody; the trusted response headers do.
    vm.post(LOGIN)
        .json(&json!({"username": "typed-name", "password": "pw"}))
        .respond(
            200,
            &[
                ("set-cookie", &set_cookie("h1")),
                ("x-auth-user-id", "42"),
                ("x-auth-user", "header_user"),
                ("x-auth-role", "teacher"),
            ],
            "OK",
        )
        .unwrap();
    // Neither body nor headers name anyone: the username typed into the JSON login form.
    vm.post(LOGIN)
        .json(&json!({"username": "typed-name", "password": "pw"}))
        .respond(200, &[("set-cookie", &set_cookie("h2"))], "OK")
        .unwrap();
    let s = stats(&vm);
    assert_eq!(usernames(&s), ["header_user", "typed-name"]);
    let sessions = s["sessions"].as_array().unwrap();
    let by_name = |n: &str| sessions.iter().find(|x| x["username"] == n).unwrap();
    assert_eq!(by_name("header_user")["user_id"], "42");
    assert_eq!(by_name("header_user")["role"], "teacher");
    assert_eq!(by_name("typed-name")["role"], "unknown");
    assert_eq!(
        s["by_role"],
        json!({"admin": 0, "teacher": 1, "student": 0, "unknown": 1})
    );
}

#[test]
fn the_response_body_wins_over_what_was_typed() {
    let (_host, vm) = start(json!({}));
    vm.post(LOGIN)
        .json(&json!({"username": "ADMIN", "password": "pw"}))
        .respond(
            200,
            &[("set-cookie", &set_cookie("b"))],
            user_body(3, "real_name", "student"),
        )
        .unwrap();
    let s = stats(&vm);
    assert_eq!(only_session(&s)["username"], "real_name");
}

#[test]
fn clients_cannot_send_trusted_identity_headers() {
    let (_host, vm) =
        start(json!({ "username_header": "x-auth-user", "role_header": "x-auth-role" }));
    let ex = vm
        .get("/api/v1/courses")
        .header("x-auth-user", "mallory")
        .header("X-Auth-Role", "admin")
        .header("x-other", "kept")
        .send()
        .unwrap();
    assert!(ex.proxied());
    assert_eq!(ex.upstream_header("x-auth-user"), None);
    assert_eq!(ex.upstream_header("x-auth-role"), None);
    assert_eq!(ex.upstream_header("x-other").unwrap(), "kept");
}

#[test]
fn bots_logging_in_count_nobody_but_are_proxied() {
    let (_host, vm) = start(json!({}));
    let ex = vm
        .post(LOGIN)
        .json(&json!({"username": "crawly", "password": "pw"}))
        .user_agent("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)")
        .respond(
            200,
            &[("set-cookie", &set_cookie("bot"))],
            user_body(9, "crawly", "student"),
        )
        .unwrap();
    assert!(ex.proxied());
    assert_eq!(stats(&vm)["active_users"], 0);
}

#[test]
fn the_client_ip_comes_from_the_trusted_forwarding_header_when_configured() {
    let (_host, vm) = start(json!({ "client_ip_header": "x-forwarded-for", "trusted_hops": 1 }));
    vm.post(LOGIN)
        .json(&json!({"username": "ada", "password": "pw"}))
        .header("x-forwarded-for", "203.0.113.9, 198.51.100.7")
        .from_ip("127.0.0.1")
        .respond(
            200,
            &[("set-cookie", &set_cookie("ip"))],
            user_body(1, "ada", "admin"),
        )
        .unwrap();
    let s = stats(&vm);
    assert_eq!(only_session(&s)["ip"], "198.51.100.7");
}

#[test]
fn a_login_over_an_existing_session_replaces_it() {
    let (_host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "first");
    // Logging in again from the same browser (it sends the old cookie) as someone else.
    vm.post(LOGIN)
        .cookie("session", "first")
        .json(&json!({"username": "bob", "password": "pw"}))
        .respond(
            200,
            &[("set-cookie", &set_cookie("second"))],
            user_body(2, "bob", "student"),
        )
        .unwrap();
    let s = stats(&vm);
    assert_eq!(usernames(&s), ["bob"]);
}

#[test]
fn a_login_that_keeps_the_request_cookie_starts_the_session_under_it() {
    let (_host, vm) = start(json!({}));
    // The app set its cookie on an earlier page and sets none at the login.
    let ex = vm
        .post(LOGIN)
        .cookie("session", "kept-1")
        .form(&[("username", "kim"), ("password", "pw")])
        .respond(302, &[("location", "/dashboard")], "")
        .unwrap();
    assert!(ex.proxied());
    assert_eq!(only_session(&stats(&vm))["username"], "kim");
    browse(&vm, "kept-1");
    flush(&vm);
    let s = stats(&vm);
    assert_eq!(s["traffic"]["authenticated_requests_today"], 2, "{s}");
    // Logging in again on the same cookie replaces the session.
    let first = only_session(&s)["session_id"].clone();
    vm.post(LOGIN)
        .cookie("session", "kept-1")
        .form(&[("username", "lee"), ("password", "pw")])
        .respond(302, &[("location", "/dashboard")], "")
        .unwrap();
    let s = stats(&vm);
    let session = only_session(&s);
    assert_eq!(session["username"], "lee");
    assert_ne!(session["session_id"], first);
}

#[test]
fn a_repeated_typed_username_names_nobody_and_is_counted() {
    let (host, vm) = start(json!({}));
    vm.post(LOGIN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=alice&username=bob&password=pw")
        .respond(302, &[("set-cookie", &set_cookie("rep"))], "")
        .unwrap();
    let s = stats(&vm);
    let session = only_session(&s);
    assert_eq!(session["username"], "");
    assert!(session["user_id"]
        .as_str()
        .is_some_and(|u| u.starts_with("unnamed:")));
    assert_eq!(
        host.metric(&stat("headcount_unnamed_logins_total")),
        Some(1)
    );
    assert!(
        vm.logged(LogLevel::Warn, "ambiguous (repeated_field)"),
        "{}",
        vm.logs_text()
    );
}

#[test]
fn a_whoami_call_that_cannot_be_sent_falls_back_to_what_was_typed() {
    // The harness has no upstream clusters: every dispatch_http_call is refused.
    let (_host, vm) = start(json!({"whoami": {"path": "/me"}}));
    vm.post(LOGIN)
        .form(&[("username", "grace"), ("password", "pw")])
        .respond(302, &[("set-cookie", &set_cookie("w1"))], "")
        .unwrap();
    // Unnamed until the root context's tick asks the app.
    assert_eq!(only_session(&stats(&vm))["username"], "");
    flush(&vm);
    let s = stats(&vm);
    assert_eq!(only_session(&s)["username"], "grace", "{s}");
    assert!(
        vm.logged(LogLevel::Warn, "whoami call to cluster `app` not sent"),
        "{}",
        vm.logs_text()
    );
}
