//! The ledger's rules over Redis give exactly what they give over the core's
//! `MemoryLedger` (the reference the core's own tests check): one node sends the
//! same workload, round by round as a node does, to both, and every shard's
//! rows, the stats, the event feed and the revoked lists are compared after
//! each round. Then concurrency: collectors racing on one shard lose nothing.

use crate::servers::{Cluster, Redis};
use headcount_collector::redis_ledger::{RedisLedger, StepError, Target};
use headcount_core::events::{Actor, Events};
use headcount_core::ids::{CookieHash, SessionId};
use headcount_core::ledger::route::{Known, Pending, MAX_ROUNDS};
use headcount_core::ledger::store::{LedgerStore, Rows};
use headcount_core::ledger::wire::{Batch, BatchReply, Op, StatsReply};
use headcount_core::ledger::{Here, Ledger, MemoryLedger};
use headcount_core::session::Session;
use headcount_core::{AppName, Config};

const T0: u64 = 1_800_000_000_000;

/// What a node can ask of a set of shards.
trait Shards {
    fn count(&self) -> u32;
    fn batch(&mut self, b: Batch, cfg: &Config) -> BatchReply;
    fn stats(&mut self, shard: u32, cfg: &Config, now: u64) -> StatsReply;
    fn feed(&mut self, cfg: &Config, now: u64) -> Events;
    fn rows(&mut self, shard: u32, cfg: &Config, now: u64) -> Rows;
    fn revoked(&mut self, shard: u32, cfg: &Config, now: u64) -> Vec<(CookieHash, u64)>;
    /// Sweeps one shard; the follow-ups for other shards.
    fn sweep(&mut self, shard: u32, cfg: &Config, now: u64) -> Vec<Op>;
    /// Revokes session `id`; the follow-ups.
    fn revoke(&mut self, id: SessionId, cfg: &Config, now: u64) -> (Option<Session>, Vec<Op>);
}

struct Memory(Vec<MemoryLedger>);

impl Memory {
    fn ledger<'a>(&'a mut self, shard: u32, cfg: &'a Config, now: u64) -> Ledger<'a, MemoryLedger> {
        let n = self.0.len() as u32;
        Ledger::new(&mut self.0[shard as usize], cfg, Here::new(shard, n, now))
    }
}

impl Shards for Memory {
    fn count(&self) -> u32 {
        self.0.len() as u32
    }
    fn batch(&mut self, b: Batch, cfg: &Config) -> BatchReply {
        let now = b.now;
        self.ledger(b.shard, cfg, now).batch(b).unwrap().reply
    }
    fn stats(&mut self, shard: u32, cfg: &Config, now: u64) -> StatsReply {
        self.ledger(shard, cfg, now).stats().unwrap()
    }
    fn feed(&mut self, cfg: &Config, now: u64) -> Events {
        self.ledger(0, cfg, now).feed().unwrap().events
    }
    fn rows(&mut self, shard: u32, _cfg: &Config, _now: u64) -> Rows {
        self.0[shard as usize].rows().unwrap()
    }
    fn revoked(&mut self, shard: u32, _cfg: &Config, _now: u64) -> Vec<(CookieHash, u64)> {
        self.0[shard as usize].revoked(usize::MAX).unwrap()
    }
    fn sweep(&mut self, shard: u32, cfg: &Config, now: u64) -> Vec<Op> {
        self.ledger(shard, cfg, now)
            .sweep()
            .unwrap()
            .outcome
            .reply
            .forward
    }
    fn revoke(&mut self, id: SessionId, cfg: &Config, now: u64) -> (Option<Session>, Vec<Op>) {
        let shard = id.shard(self.count());
        let (reply, _) = self
            .ledger(shard, cfg, now)
            .revoke(id, Some(Actor::AdminToken))
            .unwrap();
        (reply.session, reply.forward)
    }
}

struct InRedis {
    ledger: RedisLedger,
    app: AppName,
    shards: u32,
    /// Attempts beyond the first, over all steps.
    retries: u32,
}

impl InRedis {
    fn run<T>(
        &mut self,
        shard: u32,
        cfg: &Config,
        now: u64,
        mut f: impl FnMut(
            &mut Ledger<
                '_,
                headcount_collector::redis_ledger::shard::RedisShard<
                    '_,
                    '_,
                    headcount_collector::redis_ledger::Conn,
                >,
            >,
        ) -> Result<T, StepError>,
    ) -> T {
        let here = Here::new(shard, self.shards, now);
        let done = self
            .ledger
            .step(&self.app, shard, |store| {
                f(&mut Ledger::new(store, cfg, here))
            })
            .unwrap_or_else(|e| panic!("step on shard {shard}: {e}"));
        self.retries += done.attempts - 1;
        done.value
    }
}

impl Shards for InRedis {
    fn count(&self) -> u32 {
        self.shards
    }
    fn batch(&mut self, b: Batch, cfg: &Config) -> BatchReply {
        let (shard, now) = (b.shard, b.now);
        self.run(shard, cfg, now, |l| Ok(l.batch(b.clone())?.reply))
    }
    fn stats(&mut self, shard: u32, cfg: &Config, now: u64) -> StatsReply {
        self.run(shard, cfg, now, |l| Ok(l.stats()?))
    }
    fn feed(&mut self, cfg: &Config, now: u64) -> Events {
        self.run(0, cfg, now, |l| Ok(l.feed()?.events))
    }
    fn rows(&mut self, shard: u32, _cfg: &Config, _now: u64) -> Rows {
        self.ledger
            .step(&self.app, shard, |s| Ok::<_, StepError>(s.rows()?))
            .unwrap()
            .value
    }
    fn revoked(&mut self, shard: u32, _cfg: &Config, _now: u64) -> Vec<(CookieHash, u64)> {
        self.ledger
            .step(&self.app, shard, |s| {
                Ok::<_, StepError>(s.revoked(usize::MAX)?)
            })
            .unwrap()
            .value
    }
    fn sweep(&mut self, shard: u32, cfg: &Config, now: u64) -> Vec<Op> {
        self.run(shard, cfg, now, |l| Ok(l.sweep()?.outcome.reply.forward))
    }
    fn revoke(&mut self, id: SessionId, cfg: &Config, now: u64) -> (Option<Session>, Vec<Op>) {
        let shard = id.shard(self.shards);
        self.run(shard, cfg, now, |l| {
            let (reply, _) = l.revoke(id, Some(Actor::AdminToken))?;
            Ok((reply.session, reply.forward))
        })
    }
}

/// A node: addresses ops, sends them round by round, keeps what it learnt.
struct Node {
    known: Known,
    retry: Vec<Op>,
}

impl Node {
    fn send(&mut self, shards: &mut dyn Shards, ops: Vec<Op>, cfg: &Config, now: u64) {
        let n = shards.count();
        let mut pending = Pending::default();
        for op in ops {
            let op = self.known.address(op);
            pending.push(op, n);
        }
        for _ in 0..MAX_ROUNDS {
            let batches = pending.batches(n, now, None, |_| Some(0));
            if batches.is_empty() {
                return;
            }
            for b in batches {
                let reply = shards.batch(b, cfg);
                let missing = pending.absorb(reply, &mut self.known, n);
                self.retry.extend(missing);
            }
        }
        panic!("follow-ups left after {MAX_ROUNDS} rounds");
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn id16(tag: u8, n: u64) -> [u8; 16] {
    let mut b = [tag; 16];
    b[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    b
}

fn session(n: u64, cookie: CookieHash, user: u64, at: u64) -> Session {
    Session {
        id: SessionId(id16(1, n)),
        user_id: format!("{user}"),
        username: format!("user{user}"),
        role: ["admin", "teacher", "student"][(user % 3) as usize].into(),
        ip: "10.0.0.1".into(),
        user_agent: "Mozilla/5.0 Firefox/140.0".into(),
        login_ms: at,
        last_ms: at,
        cookie,
        aliases: Vec::new(),
    }
}

/// Sessions listed by a shard, as comparable tuples.
fn listed(r: &StatsReply) -> Vec<String> {
    let mut v: Vec<String> = r
        .sessions
        .iter()
        .map(|s| {
            format!(
                "{}:{}:{}:{}:{}",
                s.id.hex(),
                s.username,
                s.role,
                s.last_ms,
                s.cookie.hex()
            )
        })
        .collect();
    v.sort();
    v
}

fn compare(mem: &mut Memory, red: &mut InRedis, cfg: &Config, now: u64, round: usize) {
    for shard in 0..mem.count() {
        let (a, b) = (mem.stats(shard, cfg, now), red.stats(shard, cfg, now));
        assert_eq!(
            listed(&a),
            listed(&b),
            "round {round}, shard {shard}: sessions"
        );
        assert_eq!(
            (a.stored_sessions, a.stored_cookies, a.stored_revoked),
            (b.stored_sessions, b.stored_cookies, b.stored_revoked),
            "round {round}, shard {shard}: rows"
        );
        assert_eq!(
            a.traffic, b.traffic,
            "round {round}, shard {shard}: traffic"
        );
        assert_eq!(
            mem.rows(shard, cfg, now),
            red.rows(shard, cfg, now),
            "round {round}, shard {shard}"
        );
        assert_eq!(
            mem.revoked(shard, cfg, now),
            red.revoked(shard, cfg, now),
            "round {round}, shard {shard}: revoked"
        );
    }
    let (a, b) = (mem.feed(cfg, now), red.feed(cfg, now));
    assert_eq!(
        serde_json::to_value(&a).unwrap(),
        serde_json::to_value(&b).unwrap(),
        "round {round}: events"
    );
}

/// One workload against both stores, compared after every round.
fn same_as_memory(shards: u32, cfg: &str, rounds: usize, seed: u64) -> u32 {
    let redis = Redis::start(false);
    same_as_memory_at(&redis.url(), shards, cfg, rounds, seed)
}

fn same_as_memory_at(url: &str, shards: u32, cfg: &str, rounds: usize, seed: u64) -> u32 {
    let cfg = Config::from_json(cfg.as_bytes()).unwrap();
    let mut mem = Memory(vec![MemoryLedger::default(); shards as usize]);
    let mut red = InRedis {
        ledger: RedisLedger::new(Target::parse(url).unwrap()),
        app: AppName::parse("app", "shop").unwrap(),
        shards,
        retries: 0,
    };
    let (mut node_m, mut node_r) = (
        Node {
            known: Known::default(),
            retry: Vec::new(),
        },
        Node {
            known: Known::default(),
            retry: Vec::new(),
        },
    );
    let mut rng = Rng(seed);
    let mut live: Vec<(SessionId, CookieHash)> = Vec::new();
    let mut next = 0u64;
    let mut now = T0;
    for round in 0..rounds {
        now += 1000 + rng.below(20_000);
        let mut ops = Vec::new();
        for _ in 0..(5 + rng.below(30)) {
            match rng.below(10) {
                0..=2 => {
                    next += 1;
                    let cookie = CookieHash(id16(2, next));
                    let s = session(next, cookie, rng.below(12), now);
                    live.push((s.id, cookie));
                    ops.push(Op::Login { session: s });
                }
                3..=5 if !live.is_empty() => {
                    let (_, c) = live[rng.below(live.len() as u64) as usize];
                    let requests = 1 + rng.below(3);
                    ops.push(Op::Touch {
                        hash: c,
                        last_ms: now,
                        requests,
                        retry: false,
                    });
                }
                6 if !live.is_empty() => {
                    let i = rng.below(live.len() as u64) as usize;
                    next += 1;
                    let to = CookieHash(id16(3, next));
                    let from = live[i].1;
                    live[i].1 = to;
                    ops.push(Op::Rotate {
                        from,
                        via: Vec::new(),
                        to,
                        at: now,
                    });
                }
                7 if !live.is_empty() => {
                    let (_, c) = live.swap_remove(rng.below(live.len() as u64) as usize);
                    ops.push(Op::Logout { hash: c, at: now });
                }
                8 => {
                    // A cookie nobody knows.
                    let c = CookieHash(id16(4, rng.next()));
                    ops.push(Op::Touch {
                        hash: c,
                        last_ms: now,
                        requests: 1,
                        retry: false,
                    });
                }
                _ => {}
            }
        }
        node_m.send(&mut mem, ops.clone(), &cfg, now);
        node_r.send(&mut red, ops, &cfg, now);
        // The node retries the unknown touches once, as a node's buffer does.
        let (rm, rr) = (
            std::mem::take(&mut node_m.retry),
            std::mem::take(&mut node_r.retry),
        );
        assert_eq!(rm, rr, "round {round}: unknown touches");
        let retried: Vec<Op> = rm
            .into_iter()
            .map(|op| match op {
                Op::Touch {
                    hash,
                    last_ms,
                    requests,
                    ..
                } => Op::Touch {
                    hash,
                    last_ms,
                    requests,
                    retry: true,
                },
                other => other,
            })
            .collect();
        node_m.send(&mut mem, retried.clone(), &cfg, now);
        node_r.send(&mut red, retried, &cfg, now);
        node_m.retry.clear();
        node_r.retry.clear();
        if round % 7 == 6 && !live.is_empty() {
            let (id, _) = live.swap_remove(rng.below(live.len() as u64) as usize);
            let (a, fa) = mem.revoke(id, &cfg, now);
            let (b, fb) = red.revoke(id, &cfg, now);
            assert_eq!(a, b, "round {round}: revoked session");
            node_m.send(&mut mem, fa, &cfg, now);
            node_r.send(&mut red, fb, &cfg, now);
        }
        if round % 5 == 4 {
            for shard in 0..shards {
                let (fa, fb) = (mem.sweep(shard, &cfg, now), red.sweep(shard, &cfg, now));
                assert_eq!(fa, fb, "round {round}: sweep follow-ups of shard {shard}");
                node_m.send(&mut mem, fa, &cfg, now);
                node_r.send(&mut red, fb, &cfg, now);
            }
        }
        compare(&mut mem, &mut red, &cfg, now, round);
    }
    let feed = mem.feed(&cfg, now);
    println!(
        "{shards} shards, {rounds} rounds: {} logins, {} logouts, {} expiries, {} evictions, {} revocations",
        feed.logins_total, feed.logouts_total, feed.expiries_total, feed.evictions_total, feed.revocations_total
    );
    assert!(
        feed.logins_total > 100 && feed.logouts_total > 10 && feed.expiries_total > 5,
        "a thin workload"
    );
    assert!(feed.revocations_total > 3, "no revocations");
    if cfg.max_sessions < 1000 {
        assert!(feed.evictions_total > 10, "the cap never bit");
    }
    red.retries
}

#[test]
fn one_shard_matches_memory() {
    let retries = same_as_memory(
        1,
        r#"{"idle_timeout_seconds": 120, "active_window_seconds": 60}"#,
        60,
        7,
    );
    assert_eq!(retries, 0, "one client never conflicts with itself");
}

#[test]
fn four_shards_with_a_cap_per_user_limits_and_revocation_match_memory() {
    same_as_memory(
        4,
        r#"{"idle_timeout_seconds": 90, "active_window_seconds": 60, "max_sessions": 40,
            "max_sessions_per_user": 2, "enforce_revocation": true}"#,
        80,
        11,
    );
}

#[test]
fn a_redis_cluster_of_three_primaries_matches_memory_with_shards_spread_over_it() {
    let cluster = Cluster::start();
    same_as_memory_at(
        &cluster.url(),
        8,
        r#"{"idle_timeout_seconds": 90, "active_window_seconds": 60, "max_sessions": 60,
            "enforce_revocation": true}"#,
        50,
        23,
    );
    // The shards' keys landed on every primary (their hash tags spread over the slots).
    for node in &cluster.nodes {
        let mut c = redis::Client::open(node.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let keys: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert!(keys > 0, "primary {} holds no shard", node.port);
    }
}

/// Collectors racing on one shard: four threads, each its own `RedisLedger`
/// (its own connections), log sessions in and touch them on the same shard.
/// Steps that lose the race run again; nothing is lost or applied twice.
#[test]
fn collectors_racing_on_one_shard_lose_nothing() {
    let redis = Redis::start(false);
    let cfg = Config::from_json(br#"{"idle_timeout_seconds": 600}"#).unwrap();
    let app = AppName::parse("app", "race").unwrap();
    const THREADS: u64 = 4;
    const EACH: u64 = 40;
    let retries: u32 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (url, cfg, app) = (redis.url(), &cfg, &app);
                scope.spawn(move || {
                    let ledger = RedisLedger::new(Target::parse(&url).unwrap());
                    let mut retries = 0;
                    for i in 0..EACH {
                        let n = t * 1000 + i;
                        let cookie = CookieHash(id16(2, n));
                        let s = session(n, cookie, n % 7, T0 + i);
                        let ops = vec![
                            Op::Login { session: s.clone() },
                            Op::TouchSession {
                                id: s.id,
                                hash: cookie,
                                last_ms: T0 + 10_000 + i,
                                requests: 2,
                                retry: false,
                            },
                        ];
                        let mut b = Batch::new(0, 1, T0 + i, ops);
                        b.traffic.anonymous = 1;
                        let done = ledger
                            .step(app, 0, |store| {
                                let mut l = Ledger::new(store, cfg, Here::new(0, 1, T0 + i));
                                Ok::<_, StepError>(l.batch(b.clone())?.reply)
                            })
                            .unwrap();
                        retries += done.attempts - 1;
                    }
                    retries
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let ledger = RedisLedger::new(Target::parse(&redis.url()).unwrap());
    let now = T0 + 20_000;
    let stats = ledger
        .step(&app, 0, |store| {
            Ok::<_, StepError>(Ledger::new(store, &cfg, Here::new(0, 1, now)).stats()?)
        })
        .unwrap()
        .value;
    let events = ledger
        .step(&app, 0, |store| {
            Ok::<_, StepError>(Ledger::new(store, &cfg, Here::new(0, 1, now)).feed()?)
        })
        .unwrap()
        .value
        .events;
    println!("{} steps lost a race and ran again", retries);
    assert_eq!(stats.stored_sessions, THREADS * EACH);
    assert_eq!(stats.stored_cookies, THREADS * EACH);
    assert_eq!(events.logins_total, THREADS * EACH);
    assert!(
        stats.sessions.iter().all(|s| s.last_ms >= T0 + 10_000),
        "a touch was lost"
    );
    assert_eq!(
        stats.traffic.authenticated_today,
        2 * THREADS * EACH,
        "{:?}",
        stats.traffic
    );
    assert_eq!(
        stats.traffic.anonymous_today,
        THREADS * EACH,
        "{:?}",
        stats.traffic
    );
    assert!(
        retries > 0,
        "the threads never raced: the test proves nothing"
    );
}
