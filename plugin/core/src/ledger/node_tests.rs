//! A node (`node::Node`) over an unreliable network: requests lost before a
//! shard sees them, answers lost after it applied them, calls answered in any
//! order. However the network behaves, every login counts once, every request
//! counts once, and the ledger ends as a reliable network would leave it.

use super::apply::{Here, Ledger};
use super::memory::MemoryLedger;
use super::node::{Call, Node, Reply};
use super::route::Gathered;
use super::testing::session;
use super::wire::Op;
use crate::config::Config;
use crate::ids::{CookieHash, NodeId, SessionId};

const T0: u64 = 1_800_000_000_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct Net {
    shards: Vec<MemoryLedger>,
    cfg: Config,
    calls: Vec<Call>,
    now: u64,
    rng: Rng,
    /// Percent of requests lost before the shard, and of answers lost after it.
    lose_request: u64,
    lose_answer: u64,
}

impl Net {
    /// Delivers one call in flight (a random one), or loses it.
    fn deliver_one(&mut self, node: &mut Node) {
        if self.calls.is_empty() {
            return;
        }
        let i = (self.rng.next() % self.calls.len() as u64) as usize;
        let call = self.calls.swap_remove(i);
        if self.rng.chance(self.lose_request) {
            node.answered(call.id, Reply::Unreachable, self.now);
            return;
        }
        let n = self.shards.len() as u32;
        let shard = call.batch.shard;
        let here = Here::new(shard, n, self.now);
        let reply = Ledger::new(&mut self.shards[shard as usize], &self.cfg, here)
            .batch(call.batch)
            .unwrap()
            .reply;
        let answer = if self.rng.chance(self.lose_answer) {
            Reply::Unreachable
        } else {
            Reply::Batch(reply)
        };
        node.answered(call.id, answer, self.now);
    }

    fn flush(&mut self, node: &mut Node) {
        let calls = node.flush(self.now);
        // At most one batch in flight per shard.
        for c in &calls {
            assert!(
                !self.calls.iter().any(|x| x.batch.shard == c.batch.shard),
                "two batches in flight to shard {}",
                c.batch.shard
            );
        }
        self.calls.extend(calls);
    }

    /// Until the node has nothing left to send, over a network that now works.
    fn drain(&mut self, node: &mut Node) {
        (self.lose_request, self.lose_answer) = (0, 0);
        for _ in 0..200 {
            if node.is_idle() && self.calls.is_empty() {
                return;
            }
            self.now += 1000;
            self.flush(node);
            while !self.calls.is_empty() {
                self.deliver_one(node);
            }
        }
        panic!("the node never became idle");
    }

    fn report(&mut self) -> Gathered {
        let n = self.shards.len() as u32;
        let mut g = Gathered::default();
        for shard in 0..n {
            let here = Here::new(shard, n, self.now);
            let r = Ledger::new(&mut self.shards[shard as usize], &self.cfg, here)
                .stats()
                .unwrap();
            g.add(r, self.now);
        }
        g
    }

    fn events(&mut self) -> crate::events::Events {
        let here = Here::new(0, self.shards.len() as u32, self.now);
        Ledger::new(&mut self.shards[0], &self.cfg, here)
            .feed()
            .unwrap()
            .events
    }
}

fn cookie(n: u32, gen: u8) -> CookieHash {
    let mut b = [gen; 16];
    b[..4].copy_from_slice(&n.to_le_bytes());
    CookieHash(b)
}

fn user_session(n: u32, at: u64) -> crate::session::Session {
    let mut s = session(0, 0);
    let mut id = [7u8; 16];
    id[..4].copy_from_slice(&n.to_le_bytes());
    s.id = SessionId(id);
    s.cookie = cookie(n, 1);
    s.user_id = format!("u{n}");
    s.username = format!("user{n}");
    s.login_ms = at;
    s.last_ms = at;
    s
}

/// Logins, requests, rotations and logouts of `users` people through one node,
/// the network losing `lose_req` percent of requests and `lose_ans` of answers.
fn run(users: u32, lose_req: u64, lose_ans: u64, seed: u64) -> (Net, Node, u64) {
    let mut net = Net {
        shards: vec![MemoryLedger::default(); 4],
        cfg: Config::from_json(
            br#"{"idle_timeout_seconds": 86400, "max_lifetime_seconds": 86400}"#,
        )
        .unwrap(),
        calls: Vec::new(),
        now: T0,
        rng: Rng(seed),
        lose_request: lose_req,
        lose_answer: lose_ans,
    };
    let mut node = Node::new(4, false, Some(NodeId([9; 16])));
    let mut requests = 0u64;
    let mut current: Vec<CookieHash> = Vec::new();
    for n in 0..users {
        net.now += 50;
        assert!(node.buffer.push(Op::Login {
            session: user_session(n, net.now)
        }));
        current.push(cookie(n, 1));
        // Some requests of someone already logged in (whose login may still be on its way).
        let who = (net.rng.next() % current.len() as u64) as usize;
        for _ in 0..(net.rng.next() % 3) {
            node.buffer.record(Some(current[who]), net.now, Some(1000));
            requests += 1;
        }
        if n % 10 == 9 {
            // The app rotates someone's cookie.
            let i = (net.rng.next() % current.len() as u64) as usize;
            let to = cookie(i as u32, 2 + (n % 200) as u8);
            if to != current[i] {
                assert!(node.buffer.push(Op::Rotate {
                    from: current[i],
                    via: Vec::new(),
                    to,
                    at: net.now,
                }));
                current[i] = to;
            }
        }
        if net.rng.chance(30) {
            net.flush(&mut node);
        }
        for _ in 0..(net.rng.next() % 3) {
            net.deliver_one(&mut node);
        }
    }
    // The first ten log out.
    for c in current.iter().take(10) {
        assert!(node.buffer.push(Op::Logout {
            hash: *c,
            at: net.now
        }));
    }
    net.drain(&mut node);
    (net, node, requests)
}

#[test]
fn a_reliable_network_leaves_the_exact_ledger() {
    let (mut net, node, requests) = run(200, 0, 0, 5);
    let report = net.report();
    assert_eq!(report.stored_sessions, 190);
    let events = net.events();
    assert_eq!((events.logins_total, events.logouts_total), (200, 10));
    let t = &report.traffic;
    assert_eq!(t.authenticated_today + t.anonymous_today, requests);
    assert_eq!(node.lost, 0);
}

#[test]
fn lost_requests_and_lost_answers_count_nothing_twice_and_lose_nothing() {
    // Half the calls fail: some batches go unanswered many times in a row (a
    // collector away for a while); they are kept and sent again until answered.
    for seed in [3, 17, 101] {
        let (mut net, node, requests) = run(300, 30, 30, seed);
        let report = net.report();
        assert_eq!(report.stored_sessions, 290, "seed {seed}");
        let events = net.events();
        assert_eq!(
            (events.logins_total, events.logouts_total),
            (300, 10),
            "seed {seed}: a login or logout counted twice or lost"
        );
        let t = &report.traffic;
        assert_eq!(
            t.authenticated_today + t.anonymous_today,
            requests,
            "seed {seed}: requests counted twice or lost"
        );
        assert_eq!(node.lost, 0, "seed {seed}");
    }
}

#[test]
fn a_batch_unanswered_many_times_keeps_its_number_and_a_refused_one_is_counted_lost() {
    let mut node = Node::new(1, false, Some(NodeId([3; 16])));
    assert!(node.buffer.push(Op::Login {
        session: user_session(1, T0)
    }));
    for i in 0..(3 * super::route::MAX_SENDS) {
        let calls = node.flush(T0 + u64::from(i));
        assert_eq!(calls.len(), 1, "send {i}");
        assert_eq!(calls[0].batch.seq, 1, "a resend keeps its number");
        assert_eq!(node.answered(calls[0].id, Reply::Unreachable, T0).lost, 0);
    }
    assert_eq!(node.lost, 0);
    let calls = node.flush(T0 + 100);
    assert_eq!(node.answered(calls[0].id, Reply::Refused, T0).lost, 1);
    assert_eq!(node.lost, 1);
    assert!(node.is_idle());
}

#[test]
fn nothing_newer_for_a_shard_goes_before_its_unanswered_batch() {
    let mut node = Node::new(1, false, Some(NodeId([4; 16])));
    assert!(node.buffer.push(Op::Login {
        session: user_session(1, T0)
    }));
    let first = node.flush(T0);
    assert_eq!(first.len(), 1);
    assert!(node.buffer.push(Op::Logout {
        hash: cookie(1, 1),
        at: T0 + 1
    }));
    // The login is still in flight: the logout waits.
    assert!(node.flush(T0 + 2).is_empty());
    node.answered(first[0].id, Reply::Unreachable, T0 + 3);
    // Next: the login again (same number), and still not the logout.
    let again = node.flush(T0 + 4);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].batch.seq, first[0].batch.seq);
    assert!(matches!(again[0].batch.ops[..], [Op::Login { .. }]));
}
