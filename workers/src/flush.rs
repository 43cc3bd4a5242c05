//! The isolate's write path. Requests only append to the in-memory `Buffer`; it is
//! written as one `/batch` request per shard involved, every `flush_interval_ms`
//! by a timer task, at once after a login or logout, and before the stats route
//! reads. One flush at a time per isolate, so each shard sees an isolate's ops in
//! order.
//!
//! Workers rule: a request may not wait for another request's I/O (the runtime
//! cancels it as hung, and a future woken from another request's context runs its
//! I/O there). So nothing here waits on a lock or a channel: background tasks run
//! in the `wait_until` of the request that started them and resume only on their
//! own timers and fetches; a request that needs a flush while another is running
//! polls with its own timer.

use crate::buffer::Buffer;
use crate::object::now_ms;
use crate::protocol::{
    Batch, BatchReply, FeedReply, Hash, Op, Resolve, ResolveReply, RevokeQuery, RevokeReply,
    RevokedAdd, StatsQuery, StatsReply, TrafficPart,
};
use crate::revoked;
use crate::setup::{self, Setup};
use crate::shards;
use futures::future::join_all;
use headcount_core::traffic::{Traffic, TrafficDelta};
use headcount_core::Session;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;
use worker::{console_error, console_warn, Delay, Env};

/// A timer task hands over to a new one after this long: a `wait_until` lives at
/// most 30 s after its response, and a flush interval is at most 10 s.
const TIMER_LIFETIME_MS: u64 = 15_000;
/// A flush or timer older than this is taken for dead (its request context was
/// torn down) and no longer waited for.
const STALE_MS: u64 = 25_000;
/// Rounds of cross-shard follow-ups delivered in one flush.
const MAX_ROUNDS: usize = 6;
/// How long the stats route waits for another request's flush to finish.
const WAIT_FOR_FLUSH_MS: u64 = 3_000;

#[derive(Default)]
struct Tasks {
    /// Since when a flush is running (in some request's context).
    flushing_since: Option<u64>,
    /// Since when a timer task is running.
    timer_since: Option<u64>,
}

/// Cookie hashes whose session id this isolate has learnt (bounded; cleared when full).
const MAX_KNOWN: usize = 65_536;

thread_local! {
    static BUFFER: RefCell<Buffer> = RefCell::new(Buffer::default());
    static TASKS: RefCell<Tasks> = RefCell::new(Tasks::default());
    /// cookie hash -> session id, learnt from logins and the shards' follow-ups, so
    /// that ops on a known cookie go straight to its session's shard.
    static KNOWN: RefCell<HashMap<Hash, Hash>> = RefCell::new(HashMap::new());
}

fn know(hash: Hash, id: Hash) {
    KNOWN.with(|k| {
        let mut k = k.borrow_mut();
        if k.len() >= MAX_KNOWN {
            k.clear();
        }
        k.insert(hash, id);
    });
}

fn forget(hash: &Hash) {
    KNOWN.with(|k| k.borrow_mut().remove(hash));
}

pub fn known(hash: &Hash) -> Option<Hash> {
    KNOWN.with(|k| k.borrow().get(hash).copied())
}

/// Learns cookie -> session from an op a shard returned or the Worker sends.
fn learn(op: &Op) {
    match op {
        Op::Login { session } | Op::Bearer { session } => {
            know(Hash(session.cookie), Hash(session.id))
        }
        Op::TouchSession { id, hash, .. } | Op::Index { hash, id, .. } => know(*hash, *id),
        Op::RotateSession { id, via, to, .. } => {
            via.iter()
                .chain(std::iter::once(to))
                .for_each(|h| know(*h, *id));
        }
        Op::EndSession { hash, .. } | Op::Logout { hash, .. } => forget(hash),
        _ => {}
    }
}

/// Addresses an op on a cookie whose session is known to the session's shard
/// directly, skipping the cookie index lookup (one round instead of two).
fn address(op: Op) -> Op {
    let op = match op {
        Op::Touch {
            hash,
            last_ms,
            requests,
            retry,
        } => match known(&hash) {
            Some(id) => Op::TouchSession {
                id,
                hash,
                last_ms,
                requests,
                retry,
            },
            None => Op::Touch {
                hash,
                last_ms,
                requests,
                retry,
            },
        },
        Op::Rotate { from, via, to, at } => match known(&from) {
            Some(id) => Op::RotateSession { id, via, to, at },
            None => Op::Rotate { from, via, to, at },
        },
        Op::Logout { hash, at } => match known(&hash) {
            Some(id) => Op::EndSession { id, hash },
            None => Op::Logout { hash, at },
        },
        other => other,
    };
    learn(&op);
    op
}

pub type Task = Pin<Box<dyn Future<Output = ()>>>;

pub fn with_buffer<R>(f: impl FnOnce(&mut Buffer) -> R) -> R {
    BUFFER.with(|b| f(&mut b.borrow_mut()))
}

fn live(since: Option<u64>, now: u64) -> bool {
    since.is_some_and(|t| now.saturating_sub(t) < STALE_MS)
}

/// After a request added to the buffer: the task to keep alive with
/// `ctx.wait_until` (or to await inside one), if one is needed: an immediate
/// flush for a waiting login or logout, else a timer if none is running.
pub fn kick(env: &Env, setup: &Rc<Setup>) -> Option<Task> {
    let (empty, urgent) = with_buffer(|b| (b.is_empty(), b.urgent));
    if empty {
        return None;
    }
    let now = now_ms();
    TASKS.with(|t| {
        let mut t = t.borrow_mut();
        if urgent && !live(t.flushing_since, now) {
            t.flushing_since = Some(now);
            let (env, setup) = (env.clone(), setup.clone());
            return Some(Box::pin(async move {
                flush_while_urgent(&env, &setup, MAX_ROUNDS).await;
                TASKS.with(|t| t.borrow_mut().flushing_since = None);
                // Touches that came back unknown wait for the timer.
                if let Some(timer) = kick(&env, &setup) {
                    timer.await;
                }
            }) as Task);
        }
        if !live(t.timer_since, now) {
            t.timer_since = Some(now);
            return Some(Box::pin(timer(env.clone(), setup.clone(), now)) as Task);
        }
        None
    })
}

/// Flushes every `flush_interval_ms` while there is something to write.
async fn timer(env: Env, setup: Rc<Setup>, started: u64) {
    loop {
        Delay::from(Duration::from_millis(setup.cfg.flush_interval_ms)).await;
        let now = now_ms();
        let mine = TASKS.with(|t| {
            let mut t = t.borrow_mut();
            if live(t.flushing_since, now) {
                false
            } else {
                t.flushing_since = Some(now);
                true
            }
        });
        if mine {
            let urgent = with_buffer(|b| b.urgent);
            flush_while_urgent(&env, &setup, if urgent { MAX_ROUNDS } else { 1 }).await;
            TASKS.with(|t| t.borrow_mut().flushing_since = None);
        }
        if with_buffer(|b| b.is_empty()) || now_ms().saturating_sub(started) >= TIMER_LIFETIME_MS {
            TASKS.with(|t| t.borrow_mut().timer_since = None);
            return;
        }
    }
}

async fn flush_while_urgent(env: &Env, setup: &Setup, rounds: usize) {
    loop {
        if let Err(e) = flush_once(env, setup, rounds).await {
            console_warn!("headcount: activity flush failed, will retry: {e}");
            return;
        }
        if !with_buffer(|b| b.urgent) {
            return;
        }
    }
}

/// Writes what this isolate has buffered before the caller reads (the stats
/// route): waits, on its own timer, for a flush another request is running, then
/// flushes what is left.
pub async fn flush_now(env: &Env, setup: &Setup) -> Result<(), String> {
    let start = now_ms();
    loop {
        let now = now_ms();
        let free = TASKS.with(|t| {
            let mut t = t.borrow_mut();
            if live(t.flushing_since, now) {
                false
            } else {
                t.flushing_since = Some(now);
                true
            }
        });
        if free {
            break;
        }
        if now.saturating_sub(start) > WAIT_FOR_FLUSH_MS {
            return Err("another flush is still running".into());
        }
        Delay::from(Duration::from_millis(10)).await;
    }
    let result = flush_once(env, setup, MAX_ROUNDS).await;
    TASKS.with(|t| t.borrow_mut().flushing_since = None);
    result
}

/// Writes everything buffered now: one `/batch` per shard, then the follow-ups the
/// shards returned (cross-shard moves), round by round. Failed batches go back to
/// the buffer; touches of cookies nobody knew come back once, on the next flush.
/// `rounds`: how many rounds of cross-shard follow-ups to deliver now; the rest go
/// back to the buffer for the next flush (the timer sends one round per interval,
/// so an isolate sends each shard at most one batch per interval).
async fn flush_once(env: &Env, setup: &Setup, rounds: usize) -> Result<(), String> {
    let (ops, traffic) = with_buffer(Buffer::take);
    if ops.is_empty() && traffic.is_empty() {
        return Ok(());
    }
    setup::count(|c| c.flushes += 1);
    let shards = setup.shards;
    let mut pending: BTreeMap<u32, Vec<Op>> = BTreeMap::new();
    for op in ops.into_iter().map(address) {
        pending.entry(op.key().shard(shards)).or_default().push(op);
    }
    let mut traffic = Some(traffic).filter(|t| !t.is_empty());
    let mut failure = None;
    for _ in 0..rounds.min(MAX_ROUNDS) {
        if pending.is_empty() && traffic.is_none() {
            break;
        }
        let now = now_ms();
        let traffic_shard = pending.keys().next().copied().unwrap_or(0);
        // With enforcement, each batch asks for the shard's revoked list if it changed.
        let rev = |shard: u32| {
            setup
                .cfg
                .enforce_revocation
                .then(|| revoked::with(|r| r.rev(shard)))
        };
        let mut batches: Vec<Batch> = pending
            .into_iter()
            .map(|(shard, ops)| Batch {
                shard,
                shards,
                now,
                ops,
                traffic: TrafficPart::default(),
                revoked_rev: rev(shard),
            })
            .collect();
        if let Some(t) = traffic.take() {
            match batches.iter_mut().find(|b| b.shard == traffic_shard) {
                Some(b) => b.traffic = t,
                None => batches.push(Batch {
                    shard: traffic_shard,
                    shards,
                    now,
                    ops: Vec::new(),
                    traffic: t,
                    revoked_rev: rev(traffic_shard),
                }),
            }
        }
        let replies = join_all(
            batches
                .iter()
                .map(|b| shards::call::<_, BatchReply>(env, b.shard, "/batch", b)),
        )
        .await;
        pending = BTreeMap::new();
        for (batch, reply) in batches.into_iter().zip(replies) {
            match reply {
                Ok(reply) => {
                    if let Some(list) = reply.revoked {
                        revoked::with(|r| r.sync(batch.shard, list, now_ms()));
                    }
                    for m in &reply.missing {
                        forget(&m.key());
                    }
                    with_buffer(|buf| reply.missing.into_iter().for_each(|m| buf.retry(m)));
                    for op in reply.forward {
                        learn(&op);
                        pending.entry(op.key().shard(shards)).or_default().push(op);
                    }
                }
                Err(e) => {
                    with_buffer(|buf| buf.restore(batch.ops, batch.traffic));
                    failure = Some(e);
                }
            }
        }
    }
    if !pending.is_empty() {
        let rest: Vec<Op> = pending.into_values().flatten().collect();
        with_buffer(|buf| buf.restore(rest, TrafficPart::default()));
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The live session behind a cookie hash: the cookie's shard knows the session
/// id, the session's shard the session.
pub async fn resolve(
    env: &Env,
    setup: &Setup,
    hash: Hash,
    now: u64,
) -> Result<Option<Session>, String> {
    let shard = hash.shard(setup.shards);
    let q = Resolve {
        hash: Some(hash),
        id: None,
        shard,
        shards: setup.shards,
        now,
    };
    let reply: ResolveReply = shards::call(env, shard, "/resolve", &q).await?;
    let Some(id) = reply.id else {
        return Ok(reply.session);
    };
    let shard = id.shard(setup.shards);
    let q = Resolve {
        hash: None,
        id: Some(id),
        shard,
        shards: setup.shards,
        now,
    };
    let reply: ResolveReply = shards::call(env, shard, "/resolve", &q).await?;
    Ok(reply.session)
}

/// Every shard's share of the stats, merged: sessions side by side, traffic added
/// with the core's own merge.
pub async fn gather(env: &Env, setup: &Setup, now: u64) -> Result<Gathered, String> {
    let q = StatsQuery { now };
    let replies = join_all(
        (0..setup.shards).map(|shard| shards::call::<_, StatsReply>(env, shard, "/stats", &q)),
    )
    .await;
    let mut sessions = Vec::new();
    let mut traffic = Traffic::default();
    let (mut stored_sessions, mut stored_cookies, mut stored_revoked) = (0, 0, 0);
    let today = now / 86_400_000;
    for reply in replies {
        let reply = reply?;
        sessions.extend(reply.sessions);
        stored_sessions += reply.stored_sessions;
        stored_cookies += reply.stored_cookies;
        // Every shard keeps every revocation: the largest list is the count.
        stored_revoked = stored_revoked.max(reply.stored_revoked);
        let t = reply.traffic;
        let counts_today = t.day == today;
        let delta = TrafficDelta {
            authenticated: if counts_today {
                t.authenticated_today
            } else {
                0
            },
            anonymous: if counts_today { t.anonymous_today } else { 0 },
            buckets: t.ring,
        };
        traffic.merge(&delta, now);
    }
    Ok(Gathered {
        sessions,
        traffic,
        stored_sessions,
        stored_cookies,
        stored_revoked,
    })
}

/// Every shard's share of the stats, merged; and the rows the shards hold.
pub struct Gathered {
    pub sessions: Vec<Session>,
    pub traffic: Traffic,
    pub stored_sessions: u64,
    pub stored_cookies: u64,
    pub stored_revoked: u64,
}

/// The event feed and the history, from shard 0.
pub async fn feed(env: &Env) -> Result<FeedReply, String> {
    shards::call(env, 0, "/feed", &()).await
}

/// Ends session `id` on an admin's request (as the core's `SessionTable::revoke`):
/// the session's shard ends it; with `enforce_revocation` every shard then keeps
/// its cookie values (current, kept aliases, recent rotations) as revoked until
/// the session's deadline, and this isolate refuses them at once. The follow-ups
/// (cookie entries and per-user entry elsewhere, the event) are flushed before
/// the answer. `None`: no such live session.
pub async fn revoke(env: &Env, setup: &Setup, id: Hash) -> Result<Option<Session>, String> {
    let shards = setup.shards;
    let shard = id.shard(shards);
    let q = RevokeQuery { id, shard, shards };
    let reply: RevokeReply = shards::call(env, shard, "/revoke", &q).await?;
    let Some(session) = reply.session else {
        return Ok(None);
    };
    let values: Vec<Hash> = std::iter::once(session.cookie)
        .chain(session.aliases.iter().copied())
        .map(Hash)
        .collect();
    values.iter().for_each(forget);
    with_buffer(|b| {
        for op in reply.forward {
            if !b.push(op) {
                log_lost("a revocation follow-up");
            }
        }
    });
    let mut result = Ok(());
    if setup.cfg.enforce_revocation {
        let until = session.deadline(&setup.cfg);
        revoked::with(|r| r.add(values.iter().map(|h| (*h, until)), now_ms()));
        let replies = join_all((0..shards).map(|shard| {
            let q = RevokedAdd {
                id,
                hashes: values.clone(),
                until,
                shard,
                shards,
            };
            async move { shards::call::<_, Vec<(Hash, u64)>>(env, shard, "/revoked", &q).await }
        }))
        .await;
        for reply in replies {
            match reply {
                Ok(added) => revoked::with(|r| r.add(added, now_ms())),
                Err(e) => result = Err(e),
            }
        }
    }
    if let Err(e) = flush_now(env, setup).await {
        console_warn!("headcount: flush after a revocation failed: {e}");
    }
    result.map(|()| Some(session))
}

/// Loads shard 0's revoked list once per isolate (with `enforce_revocation`),
/// before its first request with a session cookie goes to the app; later changes
/// arrive with the flush replies. A failure is retried at most once a second;
/// meanwhile requests pass (as the Envoy filter does when shared data fails).
pub async fn load_revoked(env: &Env, setup: &Setup) {
    let now = now_ms();
    let due =
        revoked::with(|r| !r.loaded && r.failed_at.is_none_or(|t| now.saturating_sub(t) >= 1000));
    if !due {
        return;
    }
    let batch = Batch {
        shard: 0,
        shards: setup.shards,
        now,
        ops: Vec::new(),
        traffic: TrafficPart::default(),
        revoked_rev: Some(0),
    };
    match shards::call::<_, BatchReply>(env, 0, "/batch", &batch).await {
        Ok(reply) => revoked::with(|r| {
            r.loaded = true;
            r.failed_at = None;
            if let Some(list) = reply.revoked {
                r.sync(0, list, now_ms());
            }
        }),
        Err(e) => {
            console_error!("headcount: cannot load the revoked sessions: {e}");
            revoked::with(|r| r.failed_at = Some(now));
        }
    }
}

pub fn log_lost(what: &str) {
    console_error!("headcount: activity buffer full; {what} not recorded");
}
