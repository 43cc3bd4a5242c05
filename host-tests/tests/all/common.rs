//! Shared helpers: a configured host, and the app's login / browse / logout / stats calls.
//!
//! Flush rule: a VM buffers the activity of requests carrying a session cookie and writes it
//! to shared data over the ticks of one flush interval (and all of it before it answers the
//! stats route itself). So to see activity seen by one VM in the stats served by another,
//! `flush` the first VM (or `flush_all`) before reading.

use host_tests::{Exchange, Host, Vm};
use serde_json::{json, Value};

pub const TOKEN: &str = "test-admin-token-0123456789";
pub const LOGIN: &str = "/api/v1/auth/login";
pub const LOGOUT: &str = "/api/v1/auth/logout";
pub const STATS: &str = "/__headcount/stats";
/// The app of a VM started with the default options: its plugin name.
pub const APP: &str = "headcount";

/// Shared-data key `k` in `APP`'s namespace.
pub fn key(k: &str) -> String {
    format!("{APP}/{k}")
}

/// Metric `name`'s stat name for `APP` (the filter names them `<name>.app.<app>`).
pub fn stat(name: &str) -> String {
    format!("{name}.app.{APP}")
}

pub const UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15";

/// Ticks per `flush_interval_ms`: the filter spreads its flush over this many ticks, each
/// writing the activity buffered for a quarter of the cookie shards.
pub const TICKS_PER_FLUSH: u32 = 4;

/// Ticks `vm` through one flush interval (every buffered request written); whether every
/// tick was delivered.
pub fn flush(vm: &Vm) -> bool {
    (0..TICKS_PER_FLUSH).all(|_| vm.tick().unwrap_or_else(|e| panic!("{e}")))
}

/// Every VM of `host` through one flush interval.
pub fn flush_all(host: &Host) {
    for _ in 0..TICKS_PER_FLUSH {
        host.tick_all().unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The plugin configuration: the admin token plus `extra` keys.
pub fn config(extra: Value) -> String {
    let mut cfg = json!({ "admin_token": TOKEN });
    if let (Some(base), Some(extra)) = (cfg.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    cfg.to_string()
}

/// A host with one VM configured with `extra`.
pub fn start(extra: Value) -> (Host, Vm) {
    let host = Host::new();
    let vm = host.vm(&config(extra)).unwrap_or_else(|e| panic!("{e}"));
    (host, vm)
}

pub fn set_cookie(value: &str) -> String {
    format!("session={value}; Path=/; HttpOnly; SameSite=Lax")
}

pub fn user_body(id: u64, username: &str, role: &str) -> String {
    json!({ "user": { "id": id, "username": username, "role": role, "email": "x@example.test" } })
        .to_string()
}

/// A successful login through the gateway, from `ip`, that sets `cookie`.
pub fn login_from(
    vm: &Vm,
    ip: &str,
    id: u64,
    username: &str,
    role: &str,
    cookie: &str,
) -> Exchange {
    let ex = vm
        .post(LOGIN)
        .json(&json!({ "username": username, "password": "correct horse" }))
        .user_agent(UA)
        .from_ip(ip)
        .respond(
            200,
            &[
                ("set-cookie", &set_cookie(cookie)),
                ("content-type", "application/json"),
            ],
            user_body(id, username, role),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ex.proxied(), "a login is always proxied: {:?}", ex.outcome);
    ex
}

pub fn login(vm: &Vm, id: u64, username: &str, role: &str, cookie: &str) -> Exchange {
    login_from(vm, "10.0.0.1", id, username, role, cookie)
}

/// An ordinary app request carrying the session cookie.
pub fn browse(vm: &Vm, cookie: &str) -> Exchange {
    let ex = vm
        .get("/api/v1/courses")
        .cookie("theme", "dark")
        .cookie("session", cookie)
        .user_agent(UA)
        .respond(200, &[("content-type", "application/json")], "[]")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ex.proxied());
    ex
}

/// An anonymous app request.
pub fn anonymous(vm: &Vm) -> Exchange {
    let ex = vm
        .get("/")
        .user_agent(UA)
        .respond(200, &[("content-type", "text/html")], "<html></html>")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ex.proxied());
    ex
}

/// The logout route, answered 200 by the app, which also clears the cookie.
pub fn logout(vm: &Vm, cookie: &str) -> Exchange {
    let ex = vm
        .post(LOGOUT)
        .cookie("session", cookie)
        .user_agent(UA)
        .respond(
            200,
            &[(
                "set-cookie",
                "session=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/",
            )],
            "{}",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ex.proxied());
    ex
}

/// Reads the stats with the admin token; asserts a local 200 JSON answer.
pub fn stats(vm: &Vm) -> Value {
    let ex = vm
        .get(STATS)
        .bearer(TOKEN)
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ex.answered_locally(),
        "stats must never be proxied: {:?}",
        ex.outcome
    );
    assert_eq!(ex.status, 200, "{}\n{}", ex.text(), vm.logs_text());
    ex.try_json()
        .unwrap_or_else(|e| panic!("stats is not JSON ({e}): {}", ex.text()))
}

/// Usernames of the active sessions in a stats document, sorted.
pub fn usernames(stats: &Value) -> Vec<String> {
    let mut names: Vec<String> = stats["sessions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["username"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The single active session in a stats document.
pub fn only_session(stats: &Value) -> &Value {
    let sessions = stats["sessions"].as_array().expect("sessions is a list");
    assert_eq!(sessions.len(), 1, "expected one session: {stats:#}");
    &sessions[0]
}
