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
    // The login is still in flight: the logout waits, and goes as soon as it
    // is answered (not with the next interval).
    assert!(node.flush(T0 + 2).is_empty());
    assert!(node.urgent(), "held back, still urgent");
    node.answered(first[0].id, Reply::Unreachable, T0 + 3);
    // Next: the login again (same number), and still not the logout.
    let again = node.flush(T0 + 4);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].batch.seq, first[0].batch.seq);
    assert!(matches!(again[0].batch.ops[..], [Op::Login { .. }]));
}

/// Delivers `call` to its shard and hands the answer to `node`; whether it
/// brought follow-ups.
fn answer(shards: &mut [MemoryLedger], cfg: &Config, node: &mut Node, call: Call) -> bool {
    let shard = call.batch.shard;
    let here = Here::new(shard, shards.len() as u32, T0);
    let reply = Ledger::new(&mut shards[shard as usize], cfg, here)
        .batch(call.batch)
        .unwrap()
        .reply;
    let follow_ups = !reply.forward.is_empty();
    node.answered(call.id, Reply::Batch(reply), T0);
    follow_ups
}

#[test]
fn a_login_whose_batch_went_unanswered_is_not_settled_until_it_lands() {
    // Two collectors on one Redis: a step that keeps losing its race answers
    // 503, and the node keeps the batch to send again. A host holding the
    // login's response must not let it go meanwhile.
    let cfg = Config::default();
    let mut shards: Vec<MemoryLedger> = (0..4).map(|_| MemoryLedger::default()).collect();
    let mut node = Node::new(4, false, Some(NodeId([9; 16])));
    assert!(node.buffer.push(Op::Login {
        session: user_session(1, T0)
    }));
    let mine = node.epoch() + 1;
    let first = node.flush(T0);
    assert_eq!(first.len(), 1);
    for call in first {
        node.answered(call.id, Reply::Unreachable, T0);
    }
    assert!(!node.settled(mine), "unanswered: not landed");
    // Sent again with a later flush; still waited for while in flight.
    let again = node.flush(T0);
    assert_eq!(again.len(), 1);
    assert!(!node.settled(mine), "sent again, not answered yet");
    for call in again {
        answer(&mut shards, &cfg, &mut node, call);
    }
    // Its follow-ups, if its cookie index lives on another shard.
    for call in node.flush(T0) {
        answer(&mut shards, &cfg, &mut node, call);
    }
    assert!(node.settled(mine), "landed");
}

#[test]
fn a_login_and_its_follow_ups_are_urgent_touches_are_not() {
    let cfg = Config::default();
    let mut shards: Vec<MemoryLedger> = (0..16).map(|_| MemoryLedger::default()).collect();
    let mut node = Node::new(16, false, Some(NodeId([5; 16])));
    node.buffer.record(Some(cookie(9, 9)), T0, None);
    assert!(!node.urgent(), "a touch waits for the interval");
    let mut forwarded = 0;
    for n in 1..=8 {
        assert!(node.buffer.push(Op::Login {
            session: user_session(n, T0)
        }));
        assert!(node.urgent(), "a login goes at once");
        let mut follow_ups = false;
        for call in node.flush(T0) {
            follow_ups |= answer(&mut shards, &cfg, &mut node, call);
        }
        forwarded += usize::from(follow_ups);
        assert_eq!(node.urgent(), follow_ups, "follow-ups go at once");
        // Whatever followed is sent now and answered; nothing is left to hurry.
        loop {
            let calls = node.flush(T0);
            if calls.is_empty() {
                break;
            }
            for call in calls {
                answer(&mut shards, &cfg, &mut node, call);
            }
        }
        assert!(!node.urgent());
    }
    assert!(forwarded > 0, "no login had a follow-up for another shard");
}

#[test]
fn a_revocation_is_refused_here_at_once_and_told_to_every_shard() {
    use super::wire::RevokeReply;
    let cfg = Config::default();
    let session = user_session(7, T0);
    let value = session.cookie;
    let reply = |forward| RevokeReply {
        session: Some(session.clone()),
        forward,
    };
    let mut node = Node::new(4, true, Some(NodeId([6; 16])));
    let forward = vec![Op::Logout {
        hash: value,
        at: T0,
    }];
    let (ended, adds) = node.revoked_session(reply(forward), &cfg, T0).unwrap();
    assert_eq!(ended.id, session.id);
    assert!(node.revoked.is_revoked(&value, T0 + 1));
    let shards: Vec<u32> = adds.iter().map(|a| a.shard).collect();
    assert_eq!(shards, vec![0, 1, 2, 3]);
    assert!(adds.iter().all(|a| a.hashes == vec![value]));
    assert!(node.urgent(), "the follow-ups go at once");

    let mut lax = Node::new(4, false, Some(NodeId([7; 16])));
    let (_, adds) = lax.revoked_session(reply(Vec::new()), &cfg, T0).unwrap();
    assert!(adds.is_empty() && !lax.revoked.is_revoked(&value, T0 + 1));
    let none = RevokeReply {
        session: None,
        forward: Vec::new(),
    };
    assert!(lax.revoked_session(none, &cfg, T0).is_none());
}

#[test]
fn a_login_settles_once_its_batch_and_follow_ups_are_answered_whatever_came_after() {
    let cfg = Config::default();
    let mut shards: Vec<MemoryLedger> = (0..16).map(|_| MemoryLedger::default()).collect();
    let mut answer = |node: &mut Node, call: Call| {
        let shard = call.batch.shard;
        let here = Here::new(shard, 16, T0);
        let reply = Ledger::new(&mut shards[shard as usize], &cfg, here)
            .batch(call.batch)
            .unwrap()
            .reply;
        let forwards = !reply.forward.is_empty();
        node.answered(call.id, Reply::Batch(reply), T0);
        forwards
    };
    // A session whose cookie index lives on another shard: its login has a follow-up.
    let split = |n: u32| {
        let mut s = user_session(n, T0);
        s.cookie = cookie(n + 1, 1);
        s
    };
    let n = (1..=64)
        .find(|&n| split(n).id.shard(16) != split(n).cookie.shard(16))
        .unwrap();
    let mut node = Node::new(16, false, Some(NodeId([8; 16])));
    assert!(node.buffer.push(Op::Login { session: split(n) }));
    let mine = node.epoch() + 1;
    assert!(!node.settled(mine), "not sent yet");
    let first = node.flush(T0);
    assert_eq!(first.len(), 1);
    assert!(!node.settled(mine), "in flight");
    // Someone else's login goes out meanwhile and stays unanswered.
    assert!(node.buffer.push(Op::Login {
        session: user_session(n + 100, T0)
    }));
    let later = node.flush(T0);
    assert!(!later.is_empty());
    for call in first {
        assert!(answer(&mut node, call), "the login had a follow-up");
    }
    assert!(
        !node.settled(mine),
        "its cookie index entry is not written yet"
    );
    let follow_ups = node.flush(T0);
    assert!(!follow_ups.is_empty());
    for call in follow_ups {
        answer(&mut node, call);
    }
    assert!(
        node.settled(mine),
        "a later, unanswered batch does not hold it"
    );
    assert!(
        !node.settled(node.epoch()),
        "the later login has not landed"
    );
}

#[test]
fn with_ask_unknown_first_misses_go_to_the_host_and_second_tries_stay_here() {
    let cfg = Config::default();
    let mut shard = MemoryLedger::default();
    let mut node = Node::new(1, false, Some(NodeId([9; 16])));
    node.ask_unknown = true;
    node.buffer.record(Some(cookie(5, 5)), T0, None);
    let deliver = |node: &mut Node, shard: &mut MemoryLedger| {
        let mut missed = Vec::new();
        for call in node.flush(T0) {
            let reply = Ledger::new(shard, &cfg, Here::new(0, 1, T0))
                .batch(call.batch)
                .unwrap()
                .reply;
            missed.extend(node.answered(call.id, Reply::Batch(reply), T0).missed);
        }
        missed
    };
    let missed = deliver(&mut node, &mut shard);
    assert!(
        matches!(missed[..], [Op::Touch { hash, .. }] if hash == cookie(5, 5)),
        "{missed:?}"
    );
    assert!(node.is_idle(), "held by the host, not retried here");
    // The host gives it back (nobody to ask): its second try stays with the node.
    node.buffer.retry(missed.into_iter().next().unwrap());
    assert!(deliver(&mut node, &mut shard).is_empty());
    assert!(node.is_idle());
}

#[test]
fn an_idle_enforcing_node_learns_a_revocation_from_its_heartbeat() {
    use super::wire::RevokedAdd;
    let cfg = Config::default();
    let mut shard = MemoryLedger::default();
    let here = || Here::new(0, 1, T0);
    let value = cookie(3, 3);
    Ledger::new(&mut shard, &cfg, here())
        .revoked_add(RevokedAdd {
            id: SessionId([3; 16]),
            hashes: vec![value],
            until: T0 + 60_000,
            shard: 0,
            shards: 1,
        })
        .unwrap();
    let mut idle = Node::new(1, true, Some(NodeId([10; 16])));
    assert!(idle.flush(T0).is_empty(), "nothing to send");
    let call = idle.heartbeat(T0).expect("an enforcing node asks anyway");
    assert!(call.batch.ops.is_empty() && call.batch.seq == 0);
    assert!(idle.heartbeat(T0).is_none(), "one at a time");
    let reply = Ledger::new(&mut shard, &cfg, here())
        .batch(call.batch)
        .unwrap()
        .reply;
    idle.answered(call.id, Reply::Batch(reply), T0);
    assert!(idle.revoked.is_revoked(&value, T0 + 1));
    assert!(Node::new(1, false, None).heartbeat(T0).is_none());
}

#[test]
fn a_long_queue_goes_in_bounded_batches_one_after_another_and_all_lands() {
    use super::node::MAX_NODE_BATCH;
    let cfg = Config::default();
    let mut shard = MemoryLedger::default();
    let mut node = Node::new(1, false, Some(NodeId([11; 16])));
    let logins = 3 * MAX_NODE_BATCH as u32 + 5;
    for n in 1..=logins {
        assert!(node.buffer.push(Op::Login {
            session: user_session(n, T0)
        }));
    }
    let mut sent = 0;
    while !node.is_idle() {
        let calls = node.flush(T0);
        assert!(calls.len() <= 1, "one batch in flight per shard");
        for call in calls {
            assert!(call.batch.ops.len() <= MAX_NODE_BATCH);
            sent += 1;
            let reply = Ledger::new(&mut shard, &cfg, Here::new(0, 1, T0))
                .batch(call.batch)
                .unwrap()
                .reply;
            node.answered(call.id, Reply::Batch(reply), T0);
        }
    }
    assert!(sent >= 4, "{sent} batches");
    let stored = Ledger::new(&mut shard, &cfg, Here::new(0, 1, T0))
        .stats()
        .unwrap()
        .stored_sessions;
    assert_eq!(stored, u64::from(logins));
}
