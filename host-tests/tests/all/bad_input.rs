//! Hostile or broken input never traps the filter: the request is still proxied and, where
//! something was refused, the log says why.

use crate::common::*;
use host_tests::{Error, Host, LogLevel, UpstreamResponse, BUFFER_LIMIT};
use serde_json::json;

fn assert_alive(vm: &host_tests::Vm) {
    assert_eq!(vm.failure(), None, "{}", vm.logs_text());
}

#[test]
fn malformed_huge_and_non_utf8_headers_and_cookies() {
    let (_host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "good");
    let huge = "x".repeat(60 * 1024);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "cookie",
            b"\xff\xfe\xfd; session=\xc3\x28\xa0; \x80=\x80".to_vec(),
        ),
        (
            "cookie",
            b";;; =; session; session=; ==; session==x".to_vec(),
        ),
        ("cookie", format!("session={huge}").into_bytes()),
        (
            "cookie",
            format!("a=1; {}", "b=2; ".repeat(5000)).into_bytes(),
        ),
        ("cookie", b"session=good\x00evil".to_vec()),
        ("user-agent", b"\xf0\x28\x8c\x28 Mozilla".to_vec()),
        ("user-agent", huge.clone().into_bytes()),
        ("authorization", b"Bearer \xff\xfe".to_vec()),
        ("x-forwarded-for", b"\xff, 999.1.1.1, ::::".to_vec()),
        ("content-type", b"\xffapplication/json".to_vec()),
    ];
    for (name, value) in cases {
        let ex = vm
            .get("/api/v1/courses")
            .header(name, &value)
            .respond(200, &[], "ok")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(ex.proxied(), "{name}: {:?}", ex.outcome);
        assert_eq!(
            ex.upstream.as_ref().unwrap().headers.get_bytes(name),
            Some(&value[..])
        );
        assert_eq!(ex.text(), "ok");
    }
    // Many headers at once.
    let mut req = vm.get("/many");
    for i in 0..300 {
        req = req.header(&format!("x-h{i}"), "v".repeat(100));
    }
    assert!(req.send().unwrap().proxied());
    // Odd paths.
    for path in [
        "*",
        "/%ff%fe/../..?a=%zz#frag",
        "//api/v1/auth/login",
        "/api/v1/auth/login/../login",
    ] {
        assert!(vm.post(path).send().unwrap().proxied(), "{path}");
    }
    // Hostile stats credentials are refused, not fatal.
    let ex = vm
        .get(STATS)
        .header("authorization", b"Bearer \xff\xfe\x00")
        .send()
        .unwrap();
    assert_eq!(ex.status, 403);
    assert_alive(&vm);
    assert_eq!(usernames(&stats(&vm)), ["ada"]);
}

#[test]
fn malformed_set_cookie_headers_in_responses() {
    let (_host, vm) = start(json!({}));
    login(&vm, 1, "ada", "admin", "s");
    for value in [
        &b"session"[..],
        b"session=; Max-Age=banana",
        b"session=\xff\xfe; Path=/",
        b"=session; Path=/",
        b"session=x; Expires=not a date",
        b"\xff\xfe\xfd",
    ] {
        let mut up = UpstreamResponse::new(200, &[], "");
        up.headers.push(("set-cookie".into(), value.to_vec()));
        let ex = vm
            .get("/x")
            .cookie("session", "s")
            .respond_with(up)
            .unwrap();
        assert!(ex.proxied(), "{:?}", String::from_utf8_lossy(value));
    }
    // A junk login cookie header does not invent a session.
    let mut up = UpstreamResponse::new(200, &[], user_body(2, "bob", "student"));
    up.headers
        .push(("set-cookie".into(), b"\xff=\xff".to_vec()));
    let ex = vm
        .post(LOGIN)
        .json(&json!({"username": "bob"}))
        .respond_with(up)
        .unwrap();
    assert!(ex.proxied());
    assert_alive(&vm);
}

#[test]
fn a_broken_login_response_falls_back_to_the_typed_username() {
    let (_host, vm) = start(json!({}));
    let ex = vm
        .post(LOGIN)
        .json(&json!({"username": "typed", "password": "pw"}))
        .respond(
            200,
            &[
                ("set-cookie", &set_cookie("b1")),
                ("content-type", "application/json"),
            ],
            "{\"user\": {\"id\": 1, \"usern",
        )
        .unwrap();
    assert!(ex.proxied());
    assert_eq!(
        ex.text(),
        "{\"user\": {\"id\": 1, \"usern",
        "the client gets the body untouched"
    );
    let s = stats(&vm);
    assert_eq!(only_session(&s)["username"], "typed");
    assert_alive(&vm);
}

#[test]
fn a_login_naming_nobody_is_followed_unnamed_and_says_so() {
    let (_host, vm) = start(json!({}));
    let ex = vm
        .post(LOGIN)
        .header("content-type", "application/json")
        .body(b"{\"username\": \xff\xfe broken")
        .respond(
            200,
            &[("set-cookie", &set_cookie("n1"))],
            b"\xff\xfe\x00not json at all",
        )
        .unwrap();
    assert!(ex.proxied());
    let s = stats(&vm);
    assert_eq!(s["active_sessions"], 1);
    let session = only_session(&s);
    assert_eq!(session["username"], "");
    let id = session["session_id"].as_str().unwrap_or_default();
    assert_eq!(session["user_id"], format!("unnamed:{id}"));
    assert!(
        vm.logged(LogLevel::Warn, "login names nobody; followed unnamed"),
        "{}",
        vm.logs_text()
    );
    assert_alive(&vm);
}

#[test]
fn huge_login_bodies_pass_through_whole() {
    let (_host, vm) = start(json!({}));
    // 1 MiB request body in 64 KiB chunks, 1 MiB response body: far above what the filter reads.
    let big = format!(
        "{{\"username\":\"big\",\"password\":\"{}\"}}",
        "p".repeat(1 << 20)
    );
    let chunks: Vec<Vec<u8>> = big
        .as_bytes()
        .chunks(64 * 1024)
        .map(<[u8]>::to_vec)
        .collect();
    let response = format!(
        "{{\"user\":{{\"id\":5,\"username\":\"big\",\"role\":\"student\"}},\"pad\":\"{}\"}}",
        "z".repeat(1 << 20)
    );
    let ex = vm
        .post(LOGIN)
        .header("content-type", "application/json")
        .chunks(chunks)
        .respond_with(UpstreamResponse {
            status: 200,
            headers: vec![("set-cookie".into(), set_cookie("big").into_bytes())],
            body: response
                .as_bytes()
                .chunks(16 * 1024)
                .map(<[u8]>::to_vec)
                .collect(),
            latency: std::time::Duration::ZERO,
        })
        .unwrap();
    assert!(ex.proxied(), "{:?}", ex.outcome);
    assert_eq!(
        ex.upstream.as_ref().unwrap().body.len(),
        big.len(),
        "the upstream got every byte"
    );
    assert_eq!(ex.body.len(), response.len(), "the client got every byte");
    assert_alive(&vm);
}

/// How a body splits into chunks is the network's choice. A small first chunk and
/// then a large one used to get a paused login body past Envoy's buffer limit (413).
#[test]
fn a_login_body_that_arrives_small_then_large_is_never_held_back() {
    let (_host, vm) = start(json!({}));
    let body = format!(
        "{{\"username\":\"split\",\"password\":\"pw\",\"pad\":\"{}\"}}",
        "p".repeat(2 * BUFFER_LIMIT)
    );
    let (head, rest) = body.as_bytes().split_at(100);
    let response = format!(
        "{{\"user\":{{\"id\":7,\"username\":\"split\",\"role\":\"teacher\"}},\"pad\":\"{}\"}}",
        "z".repeat(2 * BUFFER_LIMIT)
    );
    let (rhead, rrest) = response.as_bytes().split_at(50);
    let ex = vm
        .post(LOGIN)
        .header("content-type", "application/json")
        .chunks([head, rest])
        .respond_with(UpstreamResponse {
            status: 200,
            headers: vec![("set-cookie".into(), set_cookie("split").into_bytes())],
            body: vec![rhead.to_vec(), rrest.to_vec()],
            latency: std::time::Duration::ZERO,
        })
        .unwrap();
    assert!(ex.proxied(), "{:?}", ex.outcome);
    assert_eq!(ex.upstream.as_ref().unwrap().body, body.as_bytes());
    assert_eq!(ex.body, response.as_bytes());
    // Both bodies were too large to read, so the login names nobody (an unnamed
    // session); it is still proxied whole, and a later login is counted as usual.
    let unnamed = only_session(&stats(&vm))["session_id"].clone();
    let ex = vm
        .post(LOGIN)
        .header("content-type", "application/json")
        .chunks([
            &b"{\"username\":"[..],
            b"\"ty",
            b"ped\",\"password\":\"pw\"}",
        ])
        .respond_with(UpstreamResponse {
            status: 200,
            headers: vec![("set-cookie".into(), set_cookie("typed").into_bytes())],
            body: vec![b"{\"user\":".to_vec(), b"{\"id\":8}}".to_vec()],
            latency: std::time::Duration::ZERO,
        })
        .unwrap();
    assert!(ex.proxied(), "{:?}", ex.outcome);
    let s = stats(&vm);
    let sessions = s["sessions"].as_array().cloned().unwrap_or_default();
    let typed: Vec<_> = sessions
        .iter()
        .filter(|x| x["session_id"] != unnamed)
        .collect();
    assert_eq!(sessions.len(), 2, "{s}");
    assert_eq!(
        typed[0]["username"], "typed",
        "the typed username is read across chunks: {s}"
    );
    assert_alive(&vm);
}

#[test]
fn bad_configurations_are_refused_with_the_field_named() {
    let host = Host::new();
    let cases = [
        (r#"{"no_such_key": 1}"#, "no_such_key"),
        (
            r#"{"active_window_seconds": "300"}"#,
            "active_window_seconds",
        ),
        (r#"{"active_window_seconds": 0}"#, "active_window_seconds"),
        (
            r#"{"active_window_seconds": 600, "idle_timeout_seconds": 300}"#,
            "idle_timeout_seconds",
        ),
        (r#"{"max_lifetime_seconds": 10}"#, "max_lifetime_seconds"),
        (r#"{"flush_interval_ms": 50}"#, "flush_interval_ms"),
        (r#"{"roles": "admin"}"#, "roles"),
        (r#"{"session_cookie": ""}"#, "session_cookie"),
        (r#"{"route_prefix": "/"}"#, "route_prefix"),
        (r#"{"trusted_hops": 0}"#, "trusted_hops"),
        // A fleet node needs the fleet's cookie hash key.
        (
            r#"{"fleet": {"cluster": "collectors", "token": "0123456789abcdef"}}"#,
            "cookie_hash_secret",
        ),
        (r#"[1, 2]"#, "config"),
        (r#"{"admin_token": "#, "config"),
        ("\u{feff}\u{0}", "config"),
    ];
    for (cfg, field) in cases {
        match host.vm(cfg) {
            Err(e @ Error::ConfigureRefused { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(field),
                    "{cfg}: the log should name `{field}`:\n{text}"
                );
                assert!(
                    e.logs().iter().any(|l| l.level >= LogLevel::Error),
                    "{text}"
                );
            }
            Err(other) => panic!("{cfg}: expected a refusal, got {other}"),
            Ok(_) => panic!("{cfg}: accepted a bad configuration"),
        }
    }
    // The same host still serves a good configuration.
    let vm = host.vm(&config(json!({}))).unwrap();
    assert!(anonymous(&vm).proxied());
}

#[test]
fn an_empty_configuration_means_all_defaults() {
    let host = Host::new();
    for cfg in ["{}", " { } "] {
        let vm = host.vm(cfg).unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        assert!(anonymous(&vm).proxied());
    }
}
