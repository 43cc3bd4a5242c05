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

use crate::object::now_ms;
use crate::revoked;
use crate::setup::{self, Setup};
use crate::shards;
use futures::future::join_all;
use headcount_core::events::Actor;
use headcount_core::ids::{CookieHash, NodeId, SessionId};
use headcount_core::ledger::buffer::Buffer;
use headcount_core::ledger::route::{Gathered, Known, Pending, Sequencer, MAX_ROUNDS};
use headcount_core::ledger::wire::{
    Batch, BatchReply, FeedReply, Resolve, ResolveReply, RevokeQuery, RevokeReply, RevokedAdd,
    StatsQuery, StatsReply, TrafficPart,
};
use headcount_core::Session;
use std::cell::RefCell;
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
/// How long the stats route waits for another request's flush to finish.
const WAIT_FOR_FLUSH_MS: u64 = 3_000;

#[derive(Default)]
struct Tasks {
    /// Since when a flush is running (in some request's context).
    flushing_since: Option<u64>,
    /// Since when a timer task is running.
    timer_since: Option<u64>,
}

thread_local! {
    static BUFFER: RefCell<Buffer> = RefCell::new(Buffer::default());
    static TASKS: RefCell<Tasks> = RefCell::new(Tasks::default());
    /// cookie hash -> session id (`route::Known`): ops on a known cookie go
    /// straight to its session's shard.
    static KNOWN: RefCell<Known> = RefCell::new(Known::default());
    /// This isolate's batch numbers and the batches still waiting for an answer
    /// (`route::Sequencer`); `None` until the first flush picks the isolate's id.
    static SEQUENCER: RefCell<Option<Sequencer>> = const { RefCell::new(None) };
}

/// Runs `f` on the isolate's sequencer, made with a random id at first use
/// (without randomness, batches go unsequenced).
fn with_sequencer<R>(f: impl FnOnce(&mut Sequencer) -> R) -> Option<R> {
    SEQUENCER.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_none() {
            let mut id = [0u8; 16];
            *s = getrandom::getrandom(&mut id)
                .ok()
                .map(|()| Sequencer::new(NodeId(id)));
        }
        s.as_mut().map(f)
    })
}

/// Nothing buffered and no batch waiting to be sent again.
fn idle() -> bool {
    with_buffer(|b| b.is_empty())
        && with_sequencer(|s| !s.has_unacked()) != Some(false)
        && !crate::whoami::waiting()
}

fn with_known<R>(f: impl FnOnce(&mut Known) -> R) -> R {
    KNOWN.with(|k| f(&mut k.borrow_mut()))
}

pub fn known(hash: &CookieHash) -> Option<SessionId> {
    with_known(|k| k.get(hash))
}

pub type Task = Pin<Box<dyn Future<Output = ()>>>;

pub fn with_buffer<R>(f: impl FnOnce(&mut Buffer) -> R) -> R {
    BUFFER.with(|b| f(&mut b.borrow_mut()))
}

fn live(since: Option<u64>, now: u64) -> bool {
    since.is_some_and(|t| now.saturating_sub(t) < STALE_MS)
}

/// Takes the isolate's one flush slot, unless a live flush holds it.
fn claim_flush(now: u64) -> bool {
    TASKS.with(|t| {
        let mut t = t.borrow_mut();
        let free = !live(t.flushing_since, now);
        if free {
            t.flushing_since = Some(now);
        }
        free
    })
}

/// After a request added to the buffer: the task to keep alive with
/// `ctx.wait_until` (or to await inside one), if one is needed: an immediate
/// flush for a waiting login or logout, else a timer if none is running.
pub fn kick(env: &Env, setup: &Rc<Setup>) -> Option<Task> {
    let urgent = with_buffer(|b| b.urgent);
    if idle() {
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
        if claim_flush(now) {
            let urgent = with_buffer(|b| b.urgent);
            flush_while_urgent(&env, &setup, if urgent { MAX_ROUNDS } else { 1 }).await;
            TASKS.with(|t| t.borrow_mut().flushing_since = None);
        }
        if idle() || now_ms().saturating_sub(started) >= TIMER_LIFETIME_MS {
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
        // Sessions the flush did not know: ask the app (`begin_unknown`).
        crate::whoami::ask_unknown(env, setup).await;
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
        if claim_flush(now) {
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

/// Writes everything buffered now: first the batches whose answer never came,
/// as they were (a shard that applied one answers from memory: nothing counts
/// twice); then one `/batch` per shard, then the follow-ups the shards returned
/// (cross-shard moves), round by round. A batch without an answer is kept to be
/// sent again; touches of cookies nobody knew come back once, on the next flush.
/// `rounds`: how many rounds of cross-shard follow-ups to deliver now; the rest go
/// back to the buffer for the next flush (the timer sends one round per interval,
/// so an isolate sends each shard at most one batch per interval).
async fn flush_once(env: &Env, setup: &Setup, rounds: usize) -> Result<(), String> {
    let shards = setup.shards;
    let mut pending = Pending::default();
    let resend = with_sequencer(Sequencer::take_unacked).unwrap_or_default();
    if !resend.is_empty() {
        if let Err(e) = send(env, setup, resend, &mut pending).await {
            with_buffer(|buf| buf.restore(pending.into_ops(), TrafficPart::default()));
            return Err(e);
        }
    }
    let (ops, traffic) = with_buffer(Buffer::take);
    if ops.is_empty() && traffic.is_empty() && pending.is_empty() {
        return Ok(());
    }
    setup::count(|c| c.flushes += 1);
    with_known(|k| {
        ops.into_iter()
            .for_each(|op| pending.push(k.address(op), shards))
    });
    let mut traffic = Some(traffic);
    // With enforcement, each batch asks for the shard's revoked list if it changed.
    let rev = |shard: u32| {
        setup
            .cfg
            .enforce_revocation
            .then(|| revoked::with(|r| r.rev(shard)))
    };
    let mut result = Ok(());
    for _ in 0..rounds.min(MAX_ROUNDS) {
        let mut batches = pending.batches(shards, now_ms(), traffic.take(), rev);
        if batches.is_empty() {
            break;
        }
        for b in &mut batches {
            with_sequencer(|s| s.stamp(b));
        }
        let sent = batches.into_iter().map(|b| (b, 0)).collect();
        result = send(env, setup, sent, &mut pending).await;
        if result.is_err() {
            // Nothing newer for a shard goes before its unanswered batch.
            break;
        }
    }
    if !pending.is_empty() {
        with_buffer(|buf| buf.restore(pending.into_ops(), TrafficPart::default()));
    }
    result
}

/// Sends batches (with how often each was sent before), one request per shard.
/// A reply's follow-ups join `pending`, its unknown touches the buffer's retry,
/// its revoked list the isolate's; a batch without an answer is kept to be sent
/// again as it is (or given up after `MAX_SENDS`).
async fn send(
    env: &Env,
    setup: &Setup,
    batches: Vec<(Batch, u32)>,
    pending: &mut Pending,
) -> Result<(), String> {
    let replies = join_all(
        batches
            .iter()
            .map(|(b, _)| shards::call::<_, BatchReply>(env, &setup.app, b.shard, "/batch", b)),
    )
    .await;
    let mut failure = Ok(());
    for ((batch, sends), reply) in batches.into_iter().zip(replies) {
        match reply {
            Ok(mut reply) => {
                if let Some(list) = reply.revoked.take() {
                    revoked::with(|r| r.sync(batch.shard, list, now_ms()));
                }
                let missing = with_known(|k| pending.absorb(reply, k, setup.shards));
                // Touches the shard found: nothing to ask about them.
                crate::whoami::settled(&batch.ops, &missing);
                // Those to ask the app about wait for its answer (`begin_unknown`).
                let missing = crate::whoami::missed(missing, now_ms());
                with_buffer(|buf| missing.into_iter().for_each(|m| buf.retry(m)));
            }
            Err(e) => {
                let (shard, ops) = (batch.shard, batch.ops.len());
                if batch.seq == 0 {
                    // Unsequenced (no randomness for an id): back into the buffer.
                    with_buffer(|buf| buf.restore(batch.ops, batch.traffic));
                } else if with_sequencer(|s| s.failed(batch, sends + 1)) == Some(false) {
                    log_lost(&format!(
                        "a batch of {ops} ops to shard {shard} (no answer)"
                    ));
                }
                failure = Err(e);
            }
        }
    }
    failure
}

/// The live session behind a cookie hash: the cookie's shard knows the session
/// id, the session's shard the session.
pub async fn resolve(
    env: &Env,
    setup: &Setup,
    hash: CookieHash,
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
    let reply: ResolveReply = shards::call(env, &setup.app, shard, "/resolve", &q).await?;
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
    let reply: ResolveReply = shards::call(env, &setup.app, shard, "/resolve", &q).await?;
    Ok(reply.session)
}

/// Every shard's share of the stats, merged (`route::Gathered`).
pub async fn gather(env: &Env, setup: &Setup, now: u64) -> Result<Gathered, String> {
    let q = StatsQuery { now };
    let replies = join_all(
        (0..setup.shards)
            .map(|shard| shards::call::<_, StatsReply>(env, &setup.app, shard, "/stats", &q)),
    )
    .await;
    let mut gathered = Gathered::default();
    for reply in replies {
        gathered.add(reply?, now);
    }
    Ok(gathered)
}

/// The event feed and the history, from shard 0.
pub async fn feed(env: &Env, setup: &Setup) -> Result<FeedReply, String> {
    shards::call(env, &setup.app, 0, "/feed", &()).await
}

/// Ends session `id` on an admin's request (as the core's `SessionTable::revoke`):
/// the session's shard ends it; with `enforce_revocation` every shard then keeps
/// its cookie values (current, kept aliases, recent rotations) as revoked until
/// the session's deadline, and this isolate refuses them at once. The follow-ups
/// (cookie entries and per-user entry elsewhere, the event) are flushed before
/// the answer. `by`: who asked, whom the event names. `None`: no such live session.
pub async fn revoke(
    env: &Env,
    setup: &Setup,
    id: SessionId,
    by: Option<Actor>,
) -> Result<Option<Session>, String> {
    let shards = setup.shards;
    let shard = id.shard(shards);
    let q = RevokeQuery {
        id,
        shard,
        shards,
        by,
    };
    let reply: RevokeReply = shards::call(env, &setup.app, shard, "/revoke", &q).await?;
    let Some(session) = reply.session else {
        return Ok(None);
    };
    let values = session.cookies(None);
    with_known(|k| values.iter().for_each(|v| k.forget(v)));
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
            async move {
                shards::call::<_, Vec<(CookieHash, u64)>>(env, &setup.app, shard, "/revoked", &q)
                    .await
            }
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
        revoked_rev: Some(0),
        ..Batch::new(0, setup.shards, now, Vec::new())
    };
    match shards::call::<_, BatchReply>(env, &setup.app, 0, "/batch", &batch).await {
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
