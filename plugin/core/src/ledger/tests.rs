//! The ledger's rules end to end over `MemoryLedger` shards: a node's ops go
//! through `Known` and `Pending` round by round, as a Worker isolate sends them.

use super::apply::{check_batch, next_expiry, sequence, shard_cap, Here, Ledger, Sequence};
use super::memory::MemoryLedger;
use super::route::{Gathered, Known, Pending, Sequencer, MAX_ROUNDS};
use super::store::{LedgerStore, Minima};
use super::testing::session;
use super::wire::{Batch, Op, RevokedAdd, TrafficPart, APPLIED_TTL_MS, MAX_BATCH_OPS, VERSION};
use crate::config::Config;
use crate::events::{Actor, Kind};
use crate::ids::{CookieHash, NodeId, SessionId};
use crate::session::{Session, MAX_ALIASES};
use crate::table::ROTATION_GRACE_MS;

const T0: u64 = 1_800_000_000_000;

fn h(n: u8) -> CookieHash {
    CookieHash([n; 16])
}

fn s(n: u8) -> SessionId {
    SessionId([n; 16])
}

/// `shards` ledger shards and one node.
struct Cluster {
    shards: Vec<MemoryLedger>,
    cfg: Config,
    known: Known,
    now: u64,
    /// Touches the shards did not know, as a node's buffer would retry them.
    missing: Vec<Op>,
}

impl Cluster {
    fn new(shards: usize, cfg: &str) -> Cluster {
        Cluster {
            shards: vec![MemoryLedger::default(); shards],
            cfg: Config::from_json(cfg.as_bytes()).unwrap(),
            known: Known::default(),
            now: T0,
            missing: Vec::new(),
        }
    }

    fn count(&self) -> u32 {
        self.shards.len() as u32
    }

    fn ledger(&mut self, shard: u32) -> Ledger<'_, MemoryLedger> {
        let here = Here::new(shard, self.shards.len() as u32, self.now);
        Ledger::new(&mut self.shards[shard as usize], &self.cfg, here)
    }

    /// Sends `ops` as a node does, delivering follow-ups round by round.
    fn send(&mut self, ops: Vec<Op>) {
        self.send_with_traffic(ops, None);
    }

    fn send_with_traffic(&mut self, ops: Vec<Op>, traffic: Option<TrafficPart>) {
        let n = self.count();
        let mut pending = Pending::default();
        for op in ops {
            let op = self.known.address(op);
            pending.push(op, n);
        }
        let mut traffic = traffic;
        for _ in 0..MAX_ROUNDS {
            let batches = pending.batches(n, self.now, traffic.take(), |_| None);
            if batches.is_empty() {
                return;
            }
            for b in batches {
                let shard = b.shard;
                let out = self.ledger(shard).batch(b).unwrap();
                let missing = pending.absorb(out.reply, &mut self.known, n);
                self.missing.extend(missing);
            }
        }
        assert!(
            pending.is_empty(),
            "follow-ups left after {MAX_ROUNDS} rounds"
        );
    }

    fn session_of(&mut self, cookie: CookieHash) -> Option<Session> {
        let shard = cookie.shard(self.count());
        let r = self.ledger(shard).resolve(Some(cookie), None).unwrap();
        match r.id {
            Some(id) => {
                self.ledger(id.shard(self.count()))
                    .resolve(None, Some(id))
                    .unwrap()
                    .session
            }
            None => r.session,
        }
    }

    fn gather(&mut self) -> Gathered {
        let mut g = Gathered::default();
        for shard in 0..self.count() {
            let reply = self.ledger(shard).stats().unwrap();
            g.add(reply, self.now);
        }
        g
    }

    fn events(&mut self) -> Vec<(Kind, SessionId)> {
        let feed = self.ledger(0).feed().unwrap();
        feed.events
            .recent
            .iter()
            .map(|e| (e.kind, e.session_id))
            .collect()
    }
}

fn login(id: u8, cookie: u8, user: &str, at: u64) -> Op {
    let mut s = session(id, cookie);
    s.user_id = user.into();
    s.username = format!("user{user}");
    s.login_ms = at;
    s.last_ms = at;
    Op::Login { session: s }
}

fn touch(cookie: u8, at: u64) -> Op {
    Op::Touch {
        hash: h(cookie),
        last_ms: at,
        requests: 1,
        retry: false,
    }
}

#[test]
fn a_login_is_followed_through_touches_on_every_shard_count() {
    for shards in [1, 3, 8] {
        let mut c = Cluster::new(shards, "{}");
        c.send(vec![login(1, 11, "1", T0)]);
        c.known = Known::default(); // a node that never saw the login
        c.now += 5_000;
        c.send_with_traffic(
            vec![touch(11, T0 + 4_000), touch(12, T0 + 4_000)],
            Some(TrafficPart {
                anonymous: 2,
                buckets: Vec::new(),
            }),
        );
        let s = c.session_of(h(11)).expect("session");
        assert_eq!(
            (s.id, s.last_ms),
            (SessionId([1; 16]), T0 + 4_000),
            "{shards} shards"
        );
        // The unknown cookie comes back once; its retry counts as anonymous.
        assert_eq!(c.missing.len(), 1, "{:?}", c.missing);
        let retry = std::mem::take(&mut c.missing);
        let Op::Touch { hash, .. } = &retry[0] else {
            panic!("{retry:?}")
        };
        assert_eq!(*hash, h(12));
        c.send(retry);
        assert!(c.missing.is_empty());
        let g = c.gather();
        assert_eq!(g.sessions.len(), 1);
        assert_eq!((g.stored_sessions, g.stored_cookies), (1, 1));
        assert_eq!(g.traffic.authenticated_today, 1);
        assert_eq!(g.traffic.anonymous_today, 3);
        assert_eq!(c.events(), vec![(Kind::Login, SessionId([1; 16]))]);
    }
}

#[test]
fn a_request_after_the_sessions_lifetime_is_nobodys_and_ends_it_before_the_sweep() {
    for shards in [1, 4] {
        let cfg = r#"{"max_lifetime_seconds": 60, "active_window_seconds": 30}"#;
        let mut c = Cluster::new(shards, cfg);
        c.send(vec![login(1, 11, "1", T0)]);
        // Busy within its lifetime: authenticated; past it (not yet swept): nobody's.
        c.now = T0 + 61_000;
        c.send(vec![touch(11, T0 + 30_000)]);
        c.send(vec![touch(11, T0 + 60_500)]);
        let g = c.gather();
        assert_eq!(g.traffic.authenticated_today, 1, "{shards} shards");
        assert_eq!(g.traffic.anonymous_today, 1, "{shards} shards");
        assert!(c.missing.is_empty(), "not retried: it is known to be over");
        assert_eq!(g.stored_sessions, 0, "ended without waiting for the sweep");
        assert_eq!(
            c.events(),
            vec![
                (Kind::Login, SessionId([1; 16])),
                (Kind::Expiry, SessionId([1; 16]))
            ]
        );
    }
}

#[test]
fn rotations_keep_the_newest_aliases_and_shorten_the_rest() {
    let mut c = Cluster::new(4, "{}");
    c.send(vec![login(1, 10, "1", T0)]);
    // One node saw three rotations between two flushes: 10 -> 11 -> 12 -> 13.
    c.send(vec![Op::Rotate {
        from: h(10),
        via: vec![h(11), h(12)],
        to: h(13),
        at: T0 + 1,
    }]);
    let s = c.session_of(h(13)).expect("the newest value resolves");
    assert_eq!(s.cookie, h(13));
    assert_eq!(s.aliases, vec![h(12), h(11)]);
    assert_eq!(s.aliases.len(), MAX_ALIASES);
    for kept in [11, 12] {
        assert!(c.session_of(h(kept)).is_some(), "alias {kept}");
    }
    // The dropped value resolves for the grace period only.
    assert!(c.session_of(h(10)).is_some());
    c.now += ROTATION_GRACE_MS + 1;
    assert!(c.session_of(h(10)).is_none());
    assert!(c.session_of(h(11)).is_some());
}

#[test]
fn a_rotation_or_logout_before_its_login_lands_is_followed() {
    let mut c = Cluster::new(2, "{}");
    // Another node's rotation of cookie 10 arrives before the login's index entry.
    c.send(vec![Op::Rotate {
        from: h(10),
        via: vec![],
        to: h(20),
        at: T0,
    }]);
    c.send(vec![login(1, 10, "1", T0)]);
    assert_eq!(c.session_of(h(20)).map(|s| s.cookie), Some(h(20)));
    // A logout that overtakes its login: the session ends when its entry lands.
    c.send(vec![Op::Logout {
        hash: h(30),
        at: T0,
    }]);
    c.send(vec![login(2, 30, "2", T0)]);
    assert!(c.session_of(h(30)).is_none());
    assert_eq!(c.gather().stored_sessions, 1);
    // Events arrive in delivery rounds: the order across sessions may vary.
    let mut kinds: Vec<&str> = c.events().into_iter().map(|e| e.0.name()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, vec!["login", "login", "logout"]);
}

#[test]
fn a_logout_ends_the_session_and_all_its_values() {
    let mut c = Cluster::new(3, "{}");
    c.send(vec![login(1, 10, "1", T0)]);
    c.send(vec![Op::Rotate {
        from: h(10),
        via: vec![],
        to: h(11),
        at: T0,
    }]);
    c.known = Known::default();
    c.send(vec![Op::Logout {
        hash: h(10),
        at: T0,
    }]);
    assert!(c.session_of(h(11)).is_none());
    let g = c.gather();
    assert_eq!((g.stored_sessions, g.stored_cookies), (0, 0));
}

#[test]
fn the_cap_evicts_the_longest_idle_within_each_shards_share() {
    assert_eq!(shard_cap(100_000, 0, 1), 100_000);
    let shares: Vec<u64> = (0..3).map(|i| shard_cap(20, i, 3)).collect();
    assert_eq!(shares, vec![7, 7, 6]);
    assert_eq!(shard_cap(2, 3, 4), 1, "never zero");
    let mut c = Cluster::new(1, r#"{"max_sessions": 2}"#);
    c.send(vec![login(1, 11, "1", T0), login(2, 12, "2", T0 + 1)]);
    c.send(vec![touch(11, T0 + 5)]);
    c.send(vec![login(3, 13, "3", T0 + 6)]);
    assert!(c.session_of(h(12)).is_none(), "the longest idle went");
    assert!(c.session_of(h(11)).is_some() && c.session_of(h(13)).is_some());
    assert!(c.events().contains(&(Kind::Eviction, SessionId([2; 16]))));
}

#[test]
fn a_users_oldest_sessions_beyond_the_limit_are_evicted() {
    let mut c = Cluster::new(4, r#"{"max_sessions_per_user": 2}"#);
    c.send(vec![login(1, 11, "7", T0)]);
    c.send(vec![login(2, 12, "7", T0 + 1), login(9, 19, "8", T0 + 1)]);
    c.send(vec![login(3, 13, "7", T0 + 2)]);
    assert!(c.session_of(h(11)).is_none());
    for cookie in [12, 13, 19] {
        assert!(c.session_of(h(cookie)).is_some(), "{cookie}");
    }
    assert!(c.events().contains(&(Kind::Eviction, SessionId([1; 16]))));
}

#[test]
fn a_bearer_session_starts_once_and_a_revoked_one_never_again() {
    let mut c = Cluster::new(2, r#"{"enforce_revocation": true}"#);
    let Op::Login { session: token } = login(5, 50, "5", T0) else {
        unreachable!()
    };
    // Its sighting requests are counted with it: started, then live.
    c.send(vec![Op::Bearer {
        session: token.clone(),
        requests: 1,
    }]);
    c.send(vec![Op::Bearer {
        session: token.clone(),
        requests: 2,
    }]);
    assert_eq!(c.gather().stored_sessions, 1);
    assert_eq!(c.events().len(), 1, "one login");
    assert_eq!(c.gather().traffic.authenticated_today, 3);
    // Revoked: phase 1 on the session's shard, phase 2 on every shard.
    let shard = s(5).shard(2);
    let (reply, _) = c.ledger(shard).revoke(s(5), None).unwrap();
    let ended = reply.session.expect("revoked a live session");
    c.send(reply.forward);
    for shard in 0..2 {
        let q = RevokedAdd {
            id: s(5),
            hashes: vec![h(50)],
            until: ended.deadline(&c.cfg),
            shard,
            shards: 2,
        };
        assert!(!c.ledger(shard).revoked_add(q).unwrap().is_empty());
    }
    c.send(vec![Op::Bearer {
        session: token,
        requests: 1,
    }]);
    assert_eq!(c.gather().stored_sessions, 0, "never restarted");
    assert_eq!(
        c.gather().traffic.anonymous_today,
        1,
        "a revoked token's request"
    );
    // A node with an old revision of the list is sent the new one.
    let mut b = Batch::new(0, 2, c.now, Vec::new());
    b.revoked_rev = Some(0);
    let list = c.ledger(0).batch(b).unwrap().reply.revoked.expect("list");
    assert!(list.entries.iter().any(|(v, _)| *v == h(50)));
}

#[test]
fn a_revocations_event_names_who_revoked_on_every_shard_count() {
    for shards in [1, 3, 8] {
        let mut c = Cluster::new(shards, "{}");
        c.send(vec![login(1, 11, "1", T0), login(2, 12, "2", T0)]);
        let root = Actor::AdminSession {
            username: "root".into(),
            session_id: s(9),
        };
        for (id, by) in [(s(1), root.clone()), (s(2), Actor::AdminToken)] {
            let shard = id.shard(c.count());
            let (reply, _) = c.ledger(shard).revoke(id, Some(by)).unwrap();
            assert!(reply.session.is_some(), "{shards} shards");
            // The event travels to shard 0 as a follow-up, with who.
            c.send(reply.forward);
        }
        // Nothing to revoke: no event.
        let (gone, _) = c.ledger(s(1).shard(c.count())).revoke(s(1), None).unwrap();
        assert!(gone.session.is_none() && gone.forward.is_empty());
        let feed = c.ledger(0).feed().unwrap().events;
        let revoked: Vec<_> = feed
            .recent
            .iter()
            .filter(|e| e.kind == Kind::Revocation)
            .map(|e| (e.session_id, e.username.as_str(), e.by.clone()))
            .collect();
        assert_eq!(
            revoked,
            vec![
                (s(1), "user1", Some(root.clone())),
                (s(2), "user2", Some(Actor::AdminToken)),
            ],
            "{shards} shards"
        );
        assert_eq!(feed.revocations_total, 2);
        let logins = feed.recent.iter().filter(|e| e.kind == Kind::Login);
        assert!(logins.clone().count() == 2 && logins.clone().all(|e| e.by.is_none()));
        assert_eq!(c.gather().stored_sessions, 0);
    }
}

#[test]
fn the_sweep_ends_idle_sessions_and_the_alarm_follows_the_rows() {
    let mut c = Cluster::new(
        1,
        r#"{"idle_timeout_seconds": 600, "sweep_interval_seconds": 5}"#,
    );
    c.send(vec![login(1, 11, "1", T0)]);
    let idle = c.cfg.idle_timeout_ms;
    let at = c.ledger(0).next_alarm(false).unwrap();
    // Sampling the history (started by the login) wakes it every sweep interval.
    assert_eq!(at, Some(T0 + c.cfg.sweep_interval_ms));
    assert!(c.ledger(0).alarm_stale(None).unwrap());
    c.ledger(0).sample_history(&[], 0).unwrap();
    assert_eq!(c.ledger(0).next_alarm(false).unwrap(), Some(T0 + idle + 1));
    c.now = T0 + idle;
    assert_eq!(
        c.ledger(0).sweep().unwrap().ended,
        0,
        "at the timeout, not over"
    );
    c.now = T0 + idle + 1;
    let swept = c.ledger(0).sweep().unwrap();
    assert_eq!(swept.ended, 1);
    assert!(
        swept.outcome.reply.forward.is_empty(),
        "one shard: all applied"
    );
    assert_eq!(c.gather().stored_cookies, 0);
    assert_eq!(c.events().last(), Some(&(Kind::Expiry, SessionId([1; 16]))));
    assert_eq!(c.ledger(0).next_alarm(true).unwrap(), None);
}

#[test]
fn next_expiry_is_one_millisecond_past_the_earliest_deadline() {
    let cfg = Config::from_json(b"{}").unwrap();
    assert_eq!(next_expiry(Minima::default(), &cfg), None);
    let m = Minima {
        last_ms: Some(100),
        cookie_until: Some(50),
        ..Minima::default()
    };
    assert_eq!(next_expiry(m, &cfg), Some(51));
}

#[test]
fn batches_of_a_newer_version_or_too_many_ops_are_refused_whole() {
    let mut b = Batch::new(0, 1, T0, Vec::new());
    assert!(check_batch(&b).is_ok());
    b.v = VERSION + 1;
    assert!(check_batch(&b).unwrap_err().contains("version"));
    let mut c = Cluster::new(1, "{}");
    let mut big = Batch::new(0, 1, T0, vec![Op::Evict { id: s(1) }; MAX_BATCH_OPS + 1]);
    big.v = VERSION;
    assert!(c.ledger(0).batch(big).is_err());
    assert_eq!(c.shards[0].session_count().unwrap(), 0);
}

#[test]
fn the_secret_is_made_once() {
    let mut c = Cluster::new(1, "{}");
    let first = c.ledger(0).secret([7; 32]).unwrap().secret;
    assert_eq!(first, "07".repeat(32));
    assert_eq!(c.ledger(0).secret([8; 32]).unwrap().secret, first);
}

#[test]
fn a_batch_sent_again_after_a_lost_reply_counts_nothing_twice() {
    assert_eq!(sequence(None, 1), Sequence::New);
    assert_eq!(sequence(Some(3), 4), Sequence::New);
    assert_eq!(sequence(Some(3), 3), Sequence::Replay);
    assert_eq!(sequence(Some(3), 2), Sequence::Stale(3));
    assert_eq!(sequence(Some(3), 0), Sequence::New, "0: not sequenced");
    let mut c = Cluster::new(1, "{}");
    let mut node = Sequencer::new(NodeId([99; 16]));
    let mut first = Batch::new(0, 1, T0, vec![login(1, 11, "1", T0), touch(11, T0)]);
    first.traffic.anonymous = 5;
    node.stamp(&mut first);
    let reply = c.ledger(0).batch(first.clone()).unwrap().reply;
    // The reply was lost: the node sends the same batch again.
    assert!(node.failed(first, 1));
    let (again, _) = node.take_unacked().remove(0);
    let replayed = c.ledger(0).batch(again.clone()).unwrap();
    assert_eq!(replayed.reply, reply, "answered as the first time");
    let g = c.gather();
    assert_eq!(g.traffic.anonymous_today, 5, "traffic counted once");
    assert_eq!(g.traffic.authenticated_today, 1);
    assert_eq!(c.events().len(), 1, "one login event");
    // An older batch than the last one applied is refused.
    let mut next = Batch::new(0, 1, T0, Vec::new());
    node.stamp(&mut next);
    c.ledger(0).batch(next).unwrap();
    assert!(c.ledger(0).batch(again).is_err());
    // Remembered batches go with the sweep after their time.
    assert_eq!(
        c.shards[0]
            .applied(&NodeId([99; 16]))
            .unwrap()
            .map(|a| a.seq),
        Some(2)
    );
    c.now += APPLIED_TTL_MS + 1;
    c.ledger(0).sweep().unwrap();
    assert_eq!(c.shards[0].applied(&NodeId([99; 16])).unwrap(), None);
}

#[test]
fn a_login_under_a_cookie_that_leads_to_a_live_session_replaces_it() {
    for shards in [1, 3, 8] {
        let mut c = Cluster::new(shards, "{}");
        c.send(vec![login(1, 11, "1", T0)]);
        // The app kept the cookie through a second login (another user, say).
        c.now += 1_000;
        c.send(vec![login(2, 11, "2", T0 + 1_000)]);
        let s = c.session_of(h(11)).expect("the new session");
        assert_eq!(s.id, SessionId([2; 16]), "{shards} shards");
        let g = c.gather();
        assert_eq!(g.sessions.len(), 1, "{shards} shards: the old one ended");
        let mut events = c.events();
        events.sort_by_key(|(k, id)| (id.0, k.name()));
        assert_eq!(
            events,
            vec![
                (Kind::Login, SessionId([1; 16])),
                (Kind::Logout, SessionId([1; 16])),
                (Kind::Login, SessionId([2; 16])),
            ],
            "{shards} shards"
        );
    }
}

#[test]
fn identify_names_a_session_on_every_shard_count() {
    for shards in [1, 3, 8] {
        let mut c = Cluster::new(shards, r#"{"max_sessions_per_user": 1}"#);
        c.send(vec![
            login(1, 11, "7", T0),
            login(2, 12, "unnamed:x", T0 + 1),
        ]);
        c.now += 1_000;
        c.send(vec![Op::Identify {
            id: SessionId([2; 16]),
            user_id: "7".into(),
            username: "ann".into(),
            role: "teacher".into(),
        }]);
        let s = c.session_of(h(12)).expect("named session");
        assert_eq!(
            (s.user_id.as_str(), s.username.as_str(), s.role.as_str()),
            ("7", "ann", "teacher"),
            "{shards} shards"
        );
        // User 7 may keep one session: the older one was evicted.
        assert!(c.session_of(h(11)).is_none(), "{shards} shards");
        assert_eq!(c.gather().sessions.len(), 1, "{shards} shards");
    }
}
