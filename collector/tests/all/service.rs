//! The collector as nodes see it: its binary on a loopback port, over a real
//! Redis (and over memory), asked with the ledger protocol at
//! `/{app}/shard-{n}/{op}`.

use crate::servers::{config_file, run_collector, Collector, Redis};
use headcount_core::ids::{CookieHash, SessionId};
use headcount_core::ledger::address;
use headcount_core::ledger::wire::{
    Batch, BatchReply, FeedReply, Op, SecretReply, StatsQuery, StatsReply,
};
use headcount_core::session::Session;
use headcount_core::AppName;
use serde_json::Value;
use std::time::{Duration, Instant};

const TOKEN: &str = "fleet-token-0123456789";
const CONFIG: &str = r#"{"fleet": {"cluster": "collectors", "token": "fleet-token-0123456789", "shards": 2}, "cookie_hash_secret": "fleet-secret-0123456789",
    "sweep_interval_seconds": 1, "active_window_seconds": 1, "idle_timeout_seconds": 2}"#;

fn now() -> u64 {
    headcount_collector::service::now_ms()
}

fn app() -> AppName {
    AppName::parse("app", "shop").unwrap()
}

/// POSTs `body` to `op` on `shard` of `shop`; status and JSON.
fn call(
    c: &Collector,
    shard: u32,
    op: &str,
    body: &impl serde::Serialize,
    token: Option<&str>,
) -> (u16, Value) {
    let url = format!("{}{}", c.url, address::collector_path(&app(), shard, op));
    let mut req = ureq::post(&url);
    if let Some(t) = token {
        req = req.set("authorization", &format!("Bearer {t}"));
    }
    match req.send_json(serde_json::to_value(body).unwrap()) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{url}: {e}"),
    }
}

fn ok<T: serde::de::DeserializeOwned>(
    c: &Collector,
    shard: u32,
    op: &str,
    body: &impl serde::Serialize,
) -> T {
    let (status, v) = call(c, shard, op, body, Some(TOKEN));
    assert_eq!(status, 200, "{op}: {v}");
    serde_json::from_value(v).unwrap()
}

fn session(n: u8, user: &str) -> Session {
    let at = now();
    Session {
        id: SessionId([n; 16]),
        user_id: user.into(),
        username: user.into(),
        role: "student".into(),
        ip: "10.0.0.1".into(),
        user_agent: "Mozilla/5.0 Firefox/140.0".into(),
        login_ms: at,
        last_ms: at,
        cookie: CookieHash([n; 16]),
        aliases: Vec::new(),
    }
}

/// Sends `ops` to their shards (2), delivering follow-ups until none are left.
fn send(c: &Collector, ops: Vec<Op>) {
    let mut pending = headcount_core::ledger::route::Pending::default();
    let mut known = headcount_core::ledger::route::Known::default();
    ops.into_iter().for_each(|op| pending.push(op, 2));
    for _ in 0..8 {
        let batches: Vec<Batch> = pending.batches(2, now(), None, |_| None);
        if batches.is_empty() {
            return;
        }
        for b in batches {
            let reply: BatchReply = ok(c, b.shard, "/batch", &b);
            pending.absorb(reply, &mut known, 2);
        }
    }
}

fn stats(c: &Collector) -> Vec<String> {
    let mut names: Vec<String> = (0..2)
        .flat_map(|shard| ok::<StatsReply>(c, shard, "/stats", &StatsQuery { now: now() }).sessions)
        .map(|s| s.username)
        .collect();
    names.sort();
    names
}

#[test]
fn flags_and_the_fleet_token_are_required_and_refusals_name_what() {
    let (code, err) = run_collector(&["--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--store") && err.contains("usage"), "{err}");
    let (code, err) = run_collector(&[
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--bogus",
        "1",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--bogus"), "{err}");
    // A config without `fleet`, a bad `fleet`, a store that is neither: each named.
    let cases = [
        (r#"{"admin_token": "an-admin-token"}"#, "memory", "`fleet`"),
        (
            r#"{"fleet": {"cluster": "c", "token": "short"}}"#,
            "memory",
            "`fleet.token`",
        ),
        (CONFIG, "postgres://x", "--store"),
    ];
    for (config, store, named) in cases {
        let file = config_file(config);
        let path = file.0.to_str().unwrap();
        let (code, err) = run_collector(&[
            "--listen",
            "127.0.0.1:0",
            "--store",
            store,
            "--config",
            path,
        ]);
        assert_eq!(code, Some(2), "{config} {store}");
        assert!(err.contains(named), "{named}: {err}");
    }
}

#[test]
fn a_collector_whose_config_names_an_app_serves_that_app_alone() {
    let only_shop = CONFIG.replacen('{', r#"{"app": "shop", "#, 1);
    let c = Collector::start("memory", &only_shop);
    assert!(stats(&c).is_empty(), "shop is served");
    let other = AppName::parse("app", "blog").unwrap();
    let url = format!("{}{}", c.url, address::collector_path(&other, 0, "/stats"));
    let refused = ureq::post(&url)
        .set("authorization", &format!("Bearer {TOKEN}"))
        .send_json(serde_json::json!({"now": now()}));
    assert!(
        matches!(refused, Err(ureq::Error::Status(404, _))),
        "{refused:?}"
    );
}

#[test]
fn nodes_without_the_fleet_token_are_refused_and_bad_requests_named() {
    let c = Collector::start("memory", CONFIG);
    let batch = Batch::new(
        0,
        2,
        now(),
        vec![Op::Login {
            session: session(1, "ann"),
        }],
    );
    for token in [None, Some("fleet-token-0123456780"), Some("")] {
        let (status, v) = call(&c, 0, "/batch", &batch, token);
        assert_eq!(status, 401, "{token:?}: {v}");
    }
    assert!(stats(&c).is_empty(), "a refused batch changed something");
    assert_eq!(
        ureq::get(&format!("{}/healthz", c.url))
            .call()
            .unwrap()
            .status(),
        200
    );
    // A body that does not parse, a shard that does not match, an unknown op.
    let (status, v) = call(
        &c,
        0,
        "/batch",
        &serde_json::json!({"ops": "x"}),
        Some(TOKEN),
    );
    assert_eq!(status, 400, "{v}");
    let (status, v) = call(&c, 1, "/batch", &batch, Some(TOKEN));
    assert_eq!(status, 400, "{v}");
    let (status, _) = call(&c, 0, "/nope", &batch, Some(TOKEN));
    assert_eq!(status, 404);
}

#[test]
fn two_collectors_on_one_redis_answer_the_same() {
    let redis = Redis::start(false);
    let (a, b) = (
        Collector::start(&redis.url(), CONFIG),
        Collector::start(&redis.url(), CONFIG),
    );
    let (ann, bob) = (session(1, "ann"), session(2, "bob"));
    send(
        &a,
        vec![Op::Login {
            session: ann.clone(),
        }],
    );
    send(
        &b,
        vec![Op::Login {
            session: bob.clone(),
        }],
    );
    // Ann's cookie is touched through the other collector.
    send(
        &b,
        vec![Op::Touch {
            hash: ann.cookie,
            last_ms: now(),
            requests: 3,
            retry: false,
        }],
    );
    assert_eq!(stats(&a), ["ann", "bob"]);
    assert_eq!(stats(&b), ["ann", "bob"]);
    let (sa, sb): (SecretReply, SecretReply) =
        (ok(&a, 0, "/secret", &()), ok(&b, 0, "/secret", &()));
    assert_eq!(sa.secret, sb.secret);
    assert_eq!(sa.secret.len(), 64);
    let feed: FeedReply = ok(&b, 0, "/feed", &());
    assert_eq!(feed.events.logins_total, 2);
    // Bob logs out through A; both see it.
    send(
        &a,
        vec![Op::Logout {
            hash: bob.cookie,
            at: now(),
        }],
    );
    assert_eq!(stats(&b), ["ann"]);
}

#[test]
fn the_collectors_sweep_expired_sessions() {
    let redis = Redis::start(false);
    let (a, _b) = (
        Collector::start(&redis.url(), CONFIG),
        Collector::start(&redis.url(), CONFIG),
    );
    send(
        &a,
        vec![Op::Login {
            session: session(3, "cyd"),
        }],
    );
    // Idle for longer than idle_timeout (2 s): a sweep (every second, by one of
    // the two collectors) ends it. Wait for the expiry event, not for a time.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let feed: FeedReply = ok(&a, 0, "/feed", &());
        if feed.events.expiries_total == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no expiry: {:?}", feed.events);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stats(&a).is_empty());
}

#[test]
fn with_redis_down_a_collector_answers_503_and_says_why() {
    let mut redis = Redis::start(false);
    let c = Collector::start(&redis.url(), CONFIG);
    send(
        &c,
        vec![Op::Login {
            session: session(4, "dee"),
        }],
    );
    redis.stop();
    let r = ureq::get(&format!("{}/healthz", c.url)).call();
    let Err(ureq::Error::Status(503, resp)) = r else {
        panic!("healthz with Redis down: {r:?}");
    };
    let why: Value = resp.into_json().unwrap();
    assert!(
        why["error"].as_str().unwrap_or("").contains("redis"),
        "{why}"
    );
    let batch = Batch::new(
        0,
        2,
        now(),
        vec![Op::Login {
            session: session(6, "eve"),
        }],
    );
    let shard = Op::Login {
        session: session(6, "eve"),
    }
    .shard(2);
    let batch = Batch { shard, ..batch };
    let (status, v) = call(&c, shard, "/batch", &batch, Some(TOKEN));
    assert_eq!(status, 503, "{v}");
}
