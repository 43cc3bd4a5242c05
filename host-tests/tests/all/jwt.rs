//! Bearer identity: users named by a verified JWT, never by an unverified one.

use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use host_tests::{Exchange, Host, Vm, START_UNIX_SECONDS};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "jwt-harness-secret-0123456789abcdef";
const NOW_S: u64 = START_UNIX_SECONDS;

fn enc(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

fn sign_with(secret: &str, header: &Value, claims: &Value) -> String {
    let head = enc(header.to_string().as_bytes());
    let body = enc(claims.to_string().as_bytes());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", enc(&mac.finalize().into_bytes()))
}

fn sign(claims: Value) -> String {
    sign_with(SECRET, &json!({"alg": "HS256", "typ": "JWT"}), &claims)
}

fn user(sub: &str, name: &str, role: &str) -> Value {
    json!({"sub": sub, "preferred_username": name, "role": role, "exp": NOW_S + 3600, "iat": NOW_S - 5})
}

fn jwt_config(extra: Value) -> Value {
    let mut jwt = json!({"hs256_secret": SECRET});
    if let (Some(base), Some(extra)) = (jwt.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    json!({ "jwt": jwt })
}

fn call(vm: &Vm, token: &str) -> Exchange {
    let ex = vm
        .get("/api/v1/courses")
        .bearer(token)
        .user_agent(UA)
        .respond(200, &[("content-type", "application/json")], "[]")
        .unwrap();
    assert!(
        ex.proxied(),
        "a bearer request is always proxied: {:?}",
        ex.outcome
    );
    ex
}

fn settle(host: &Host) {
    flush_all(host);
    flush_all(host);
}

#[test]
fn a_verified_token_is_a_user_from_its_first_request() {
    let (host, vm) = start(jwt_config(json!({})));
    let ann = sign(user("7", "ann", "teacher"));
    call(&vm, &ann);
    call(&vm, &ann);
    call(&vm, &ann);
    anonymous(&vm);
    settle(&host);
    let s = stats(&vm);
    assert_eq!(s["active_users"], 1, "{s:#}");
    assert_eq!(s["by_role"]["teacher"], 1);
    let only = only_session(&s);
    assert_eq!(only["username"], "ann");
    assert_eq!(only["user_id"], "7");
    assert_eq!(only["role"], "teacher");
    assert_eq!(only["ip"], "127.0.0.1");
    let t = &s["traffic"];
    assert_eq!(t["authenticated_requests_today"], 3, "{t:#}");
    assert_eq!(t["anonymous_requests_today"], 1, "{t:#}");
    // The first request started the session; the others did not.
    assert_eq!(host.metric(&stat("headcount_logins_total")), Some(1));
}

#[test]
fn forged_unsigned_expired_and_misdirected_tokens_are_nobody() {
    let (host, vm) = start(jwt_config(
        json!({"issuer": "https://idp.test", "audience": "headcount"}),
    ));
    let good = json!({"sub": "1", "preferred_username": "root", "role": "admin",
        "exp": NOW_S + 3600, "iss": "https://idp.test", "aud": "headcount"});
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let valid = sign(good.clone());
    let parts: Vec<&str> = valid.split('.').collect();
    let bad_tokens = [
        // Signed with another secret.
        sign_with(
            "some-other-secret-0123456789abcdef",
            &json!({"alg": "HS256"}),
            &good,
        ),
        // A payload swapped under a valid signature.
        format!(
            "{}.{}.{}",
            parts[0],
            enc(with("sub", json!("2")).to_string().as_bytes()),
            parts[2]
        ),
        // alg none, with and without a signature part.
        format!("{}.{}.", enc(br#"{"alg":"none"}"#), parts[1]),
        format!("{}.{}.{}", enc(br#"{"alg":"NONE"}"#), parts[1], parts[2]),
        // RS256 header over an HMAC signature (alg confusion).
        format!("{}.{}.{}", enc(br#"{"alg":"RS256"}"#), parts[1], parts[2]),
        sign(with("exp", json!(NOW_S - 3600))),
        sign(with("nbf", json!(NOW_S + 3600))),
        sign(with("iss", json!("https://evil.test"))),
        sign(with("aud", json!("someone-else"))),
        "not.a.jwt".to_string(),
        "a.b".to_string(),
    ];
    for t in &bad_tokens {
        let ex = call(&vm, t);
        assert_eq!(ex.status, 200, "traffic keeps flowing");
    }
    // Non-UTF-8 and oversized headers: proxied, nobody.
    let ex = vm
        .get("/x")
        .header("authorization", b"Bearer \xff\xfe.\x00.\x80")
        .respond(200, &[], "")
        .unwrap();
    assert!(ex.proxied());
    let huge = format!("{}.{}.{}", "a".repeat(20_000), "b".repeat(20_000), "c");
    call(&vm, &huge);
    settle(&host);
    let s = stats(&vm);
    assert_eq!(s["active_users"], 0, "{s:#}");
    assert_eq!(s["active_sessions"], 0);
    assert_eq!(s["traffic"]["authenticated_requests_today"], 0);
    assert_eq!(host.metric(&stat("headcount_logins_total")).unwrap_or(0), 0);
    // The same config accepts the good token, so the refusals above were for cause.
    call(&vm, &valid);
    settle(&host);
    assert_eq!(stats(&vm)["active_users"], 1);
    // A forged token claiming the admin role gets no data (a token that does not
    // grant access: 403, as for a wrong admin token).
    let forged = vm.get(STATS).bearer(&bad_tokens[1]).send().unwrap();
    assert_eq!(forged.status, 403, "{}", forged.text());
    assert!(!forged.text().contains("sessions"));
}

#[test]
fn tokens_sharing_a_sid_are_one_session_and_users_are_distinct_people() {
    let (host, vm) = start(jwt_config(json!({})));
    let with_sid = |sid: &str, jti: &str| {
        let mut c = user("7", "ann", "teacher");
        c["sid"] = json!(sid);
        c["jti"] = json!(jti);
        sign(c)
    };
    // A refreshed access token (same sid, new jti) continues the session.
    call(&vm, &with_sid("s1", "a"));
    call(&vm, &with_sid("s1", "b"));
    // A second device of the same user.
    call(&vm, &with_sid("s2", "c"));
    settle(&host);
    let s = stats(&vm);
    assert_eq!(s["active_sessions"], 2, "{s:#}");
    assert_eq!(s["active_users"], 1);
    assert_eq!(host.metric(&stat("headcount_logins_total")), Some(2));
}

#[test]
fn two_workers_seeing_a_new_token_at_once_start_one_session() {
    let host = Host::new();
    let cfg = config(jwt_config(json!({})));
    let (a, b) = (host.vm(&cfg).unwrap(), host.vm(&cfg).unwrap());
    let ann = sign(user("7", "ann", "teacher"));
    call(&a, &ann);
    call(&b, &ann);
    call(&a, &ann);
    settle(&host);
    let s = stats(&a);
    assert_eq!(s["active_sessions"], 1, "{s:#}");
    assert_eq!(s["active_users"], 1);
    assert_eq!(s["traffic"]["authenticated_requests_today"], 3);
}

#[test]
fn a_token_in_a_cookie_counts_and_an_idle_session_comes_back_on_use() {
    let (host, vm) = start(json!({
        "jwt": {"hs256_secret": SECRET, "cookie": "access_token"},
        "active_window_seconds": 60, "idle_timeout_seconds": 120
    }));
    let bob = sign(user("8", "bob", "student"));
    let get = || {
        vm.get("/app")
            .cookie("access_token", &bob)
            .respond(200, &[], "ok")
            .unwrap()
    };
    get();
    settle(&host);
    assert_eq!(stats(&vm)["active_users"], 1);
    // Idle past the timeout: the session ends (and is swept) ...
    host.advance_and_tick(std::time::Duration::from_secs(200))
        .unwrap();
    host.advance_and_tick(std::time::Duration::from_secs(10))
        .unwrap();
    assert_eq!(stats(&vm)["active_sessions"], 0);
    // ... and the still-valid token starts it again on its next use.
    get();
    settle(&host);
    let s = stats(&vm);
    assert_eq!(s["active_users"], 1, "{s:#}");
    assert_eq!(host.metric(&stat("headcount_logins_total")), Some(2));
}

#[test]
fn a_token_whose_session_expired_before_the_sweep_starts_it_again_as_the_worker_does() {
    // The core's bearer::start: over but not swept is ended as an expiry, then
    // started again (a login), instead of being revived by the token's request.
    let (host, vm) = start(json!({
        "jwt": {"hs256_secret": SECRET},
        "active_window_seconds": 60, "idle_timeout_seconds": 120,
        "sweep_interval_seconds": 3600
    }));
    let bob = sign(user("8", "bob", "student"));
    call(&vm, &bob);
    settle(&host);
    let first = stats(&vm)["sessions"][0]["login_time"].clone();
    // Idle past the timeout; no tick, so no sweep has removed it.
    host.advance(std::time::Duration::from_secs(200));
    call(&vm, &bob);
    settle(&host);
    let s = stats(&vm);
    assert_eq!(s["active_sessions"], 1, "{s:#}");
    // The same id (it derives from the token's key), but a new login.
    assert_ne!(
        s["sessions"][0]["login_time"], first,
        "a new session: {s:#}"
    );
    assert_eq!(host.metric(&stat("headcount_logins_total")), Some(2));
    assert_eq!(host.metric(&stat("headcount_expiries_total")), Some(1));
}

#[test]
fn a_revoked_token_is_refused_at_the_edge_and_never_restarts() {
    let (host, vm) = start(json!({"jwt": {"hs256_secret": SECRET}, "enforce_revocation": true}));
    let eve = sign(user("9", "eve", "student"));
    call(&vm, &eve);
    settle(&host);
    let id = only_session(&stats(&vm))["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = vm
        .post(&format!("/__headcount/sessions/{id}/revoke"))
        .bearer(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let replay = vm.get("/api/v1/courses").bearer(&eve).send().unwrap();
    assert!(replay.answered_locally(), "{:?}", replay.outcome);
    assert_eq!(replay.status, 401);
    host.advance_and_tick(std::time::Duration::from_secs(40))
        .unwrap();
    let replay = vm.get("/api/v1/courses").bearer(&eve).send().unwrap();
    assert_eq!(replay.status, 401);
    settle(&host);
    let s = stats(&vm);
    assert_eq!(s["active_sessions"], 0, "{s:#}");
    assert_eq!(host.metric(&stat("headcount_logins_total")), Some(1));
}

#[test]
fn an_admin_token_opens_the_data_routes_without_counting_the_admin() {
    let (host, vm) = start(jwt_config(json!({})));
    let root = sign(user("1", "root", "admin"));
    let student = sign(user("2", "sam", "student"));
    let ex = vm.get(STATS).bearer(&root).send().unwrap();
    assert_eq!(ex.status, 200, "{}", ex.text());
    assert_eq!(
        ex.json()["active_sessions"],
        0,
        "admin routes start no session"
    );
    assert_eq!(vm.get(STATS).bearer(&student).send().unwrap().status, 403);
    settle(&host);
    assert_eq!(host.metric(&stat("headcount_logins_total")).unwrap_or(0), 0);
}

#[test]
fn rs256_and_jwks_keys_verify_independently_signed_tokens() {
    // Signed by Python's joserfc with the RSA key below (exp in 2100).
    const PUB: &str = include_str!("../../../plugin/core/tests/fixtures/jwt/rsa1.pub.pem");
    const RS256: &str = include_str!("../../../plugin/core/tests/fixtures/jwt/rs256.jwt");
    let (host, vm) = start(
        json!({"jwt": {"public_keys": [PUB], "issuer": "https://idp.example", "audience": "headcount"}}),
    );
    call(&vm, RS256);
    // The same claims re-signed with HS256 using the public key as the secret: refused.
    let parts: Vec<&str> = RS256.split('.').collect();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let mut c = claims.clone();
    c["sub"] = json!("43");
    call(&vm, &sign_with(PUB, &json!({"alg": "HS256"}), &c));
    settle(&host);
    let s = stats(&vm);
    assert_eq!(s["active_users"], 1, "{s:#}");
    assert_eq!(only_session(&s)["user_id"], "42");
}

#[test]
fn a_bad_jwt_config_is_refused_at_load_naming_the_field() {
    let host = Host::new();
    for (cfg, field) in [
        (json!({"jwt": {}}), "jwt"),
        (
            json!({"jwt": {"hs256_secret": "short"}}),
            "jwt.hs256_secret",
        ),
        (
            json!({"jwt": {"public_keys": ["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"]}}),
            "jwt.public_keys[0]",
        ),
        (
            json!({"jwt": {"jwks": {"keys": [{"kty": "RSA", "n": "x"}]}}}),
            "jwt.jwks",
        ),
        (
            json!({"jwt": {"hs256_secret": SECRET, "audence": "x"}}),
            "jwt.audence",
        ),
    ] {
        let err = host.vm(&config(cfg)).expect_err("refused").to_string();
        assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
    }
}
