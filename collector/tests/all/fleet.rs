//! A fleet node (`headcount_core::ledger::node::Node`, which the Envoy filter
//! drives in fleet mode) talking HTTP to real collectors over a real Redis: a
//! collector killed mid-run and Redis restarted from its append-only file lose
//! nothing and count nothing twice.

use crate::servers::{Collector, Redis};
use headcount_core::ids::{CookieHash, NodeId, SessionId};
use headcount_core::ledger::address;
use headcount_core::ledger::node::{Call, Node, Reply};
use headcount_core::ledger::wire::{BatchReply, FeedReply, Op, StatsQuery, StatsReply};
use headcount_core::session::Session;
use headcount_core::AppName;

const TOKEN: &str = "fleet-token-0123456789";
const SHARDS: u32 = 4;
const CONFIG: &str = r#"{"fleet": {"cluster": "collectors", "token": "fleet-token-0123456789", "shards": 4}, "cookie_hash_secret": "fleet-secret-0123456789",
    "active_window_seconds": 600, "idle_timeout_seconds": 1200}"#;

fn now() -> u64 {
    headcount_collector::service::now_ms()
}

fn app() -> AppName {
    AppName::parse("app", "shop").unwrap()
}

/// POSTs to the first collector of `urls` that answers (a node's Envoy cluster
/// retries another host when one refuses connections).
fn post(
    urls: &[String],
    shard: u32,
    op: &str,
    body: &impl serde::Serialize,
) -> Result<(u16, String), String> {
    let path = address::collector_path(&app(), shard, op);
    let mut last = String::new();
    for url in urls {
        let r = ureq::post(&format!("{url}{path}"))
            .set("authorization", &format!("Bearer {TOKEN}"))
            .send_json(serde_json::to_value(body).unwrap());
        match r {
            Ok(resp) => return Ok((resp.status(), resp.into_string().unwrap())),
            Err(ureq::Error::Status(code, resp)) => {
                return Ok((code, resp.into_string().unwrap_or_default()))
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Makes the node's calls as Envoy would and hands back each outcome.
fn deliver(node: &mut Node, calls: Vec<Call>, urls: &[String]) {
    for call in calls {
        let reply = match post(urls, call.batch.shard, "/batch", &call.batch) {
            Ok((200, body)) => Reply::Batch(serde_json::from_str::<BatchReply>(&body).unwrap()),
            Ok((400, _)) => Reply::Refused,
            _ => Reply::Unreachable,
        };
        node.answered(call.id, reply, now());
    }
}

fn drain(node: &mut Node, urls: &[String]) {
    for _ in 0..50 {
        if node.is_idle() {
            return;
        }
        let calls = node.flush(now());
        deliver(node, calls, urls);
    }
    panic!("the node never became idle");
}

fn session(n: u32) -> Session {
    let mut id = [5u8; 16];
    id[..4].copy_from_slice(&n.to_le_bytes());
    let mut cookie = [6u8; 16];
    cookie[12..].copy_from_slice(&n.to_be_bytes());
    let at = now();
    Session {
        id: SessionId(id),
        user_id: format!("{n}"),
        username: format!("user{n}"),
        role: ["admin", "teacher", "student"][(n % 3) as usize].into(),
        ip: "10.0.0.1".into(),
        user_agent: "Mozilla/5.0 Firefox/140.0".into(),
        login_ms: at,
        last_ms: at,
        cookie: CookieHash(cookie),
        aliases: Vec::new(),
    }
}

/// Every shard's stats and the feed, through `urls`.
fn ledger(urls: &[String]) -> (u64, u64, u64, u64) {
    let (mut sessions, mut authenticated, mut anonymous) = (0, 0, 0);
    for shard in 0..SHARDS {
        let (status, body) = post(urls, shard, "/stats", &StatsQuery { now: now() }).unwrap();
        assert_eq!(status, 200, "{body}");
        let r: StatsReply = serde_json::from_str(&body).unwrap();
        sessions += r.stored_sessions;
        authenticated += r.traffic.authenticated_today;
        anonymous += r.traffic.anonymous_today;
    }
    let (_, body) = post(urls, 0, "/feed", &()).unwrap();
    let feed: FeedReply = serde_json::from_str(&body).unwrap();
    (sessions, feed.events.logins_total, authenticated, anonymous)
}

#[test]
fn a_collector_killed_mid_run_loses_nothing_and_counts_nothing_twice() {
    let redis = Redis::start(false);
    let a = Collector::start(&redis.url(), CONFIG);
    let b = Collector::start(&redis.url(), CONFIG);
    let mut urls = vec![a.url.clone(), b.url.clone()];
    let mut node = Node::new(SHARDS, false, Some(NodeId([1; 16])));
    let mut a = Some(a);
    let mut requests = 0u64;
    for n in 0..200u32 {
        let s = session(n);
        assert!(node.buffer.push(Op::Login { session: s.clone() }));
        for _ in 0..(n % 3) {
            node.buffer.record(Some(s.cookie), now(), Some(500));
            requests += 1;
        }
        node.buffer.record(None, now(), Some(500));
        requests += 1;
        if n == 100 {
            // Collector A dies; the node's next calls go to B (A first: refused).
            drop(a.take());
        }
        if n % 7 == 0 {
            let calls = node.flush(now());
            deliver(&mut node, calls, &urls);
        }
    }
    drain(&mut node, &urls);
    urls.retain(|u| *u == b.url);
    let (sessions, logins, authenticated, anonymous) = ledger(&urls);
    assert_eq!((sessions, logins), (200, 200));
    assert_eq!(
        authenticated + anonymous,
        requests,
        "({authenticated} + {anonymous})"
    );
    assert_eq!(node.lost, 0);
}

#[test]
fn redis_restarted_from_its_append_only_file_keeps_every_session() {
    let mut redis = Redis::start(true);
    let c = Collector::start(&redis.url(), CONFIG);
    let urls = vec![c.url.clone()];
    let mut node = Node::new(SHARDS, false, Some(NodeId([2; 16])));
    for n in 0..50u32 {
        assert!(node.buffer.push(Op::Login {
            session: session(n)
        }));
    }
    drain(&mut node, &urls);
    assert_eq!(ledger(&urls).0, 50);
    redis.restart(true);
    // While Redis came back the collector reconnects; the same answers.
    let (sessions, logins, _, _) = ledger(&urls);
    assert_eq!((sessions, logins), (50, 50));
    // And the ledger goes on: a logout lands on the restored sessions.
    assert!(node.buffer.push(Op::Logout {
        hash: session(7).cookie,
        at: now()
    }));
    drain(&mut node, &urls);
    assert_eq!(ledger(&urls).0, 49);
}
