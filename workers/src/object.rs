//! The `Sessions` Durable Object: one shard of the session table, in SQLite.
//!
//! `fetch` only routes; each `handle_*` method is one operation. The layout is the
//! core's (`plugin/core/src/table.rs`): sessions by session id, and a cookie index
//! (hash -> session id, until) holding each session's current cookie and its
//! rotated aliases. Every rule (expiry, deadlines, how many aliases are kept and
//! for how long, traffic merging) comes from `headcount-core`; SQL only stores rows
//! and finds candidates by index.

use crate::protocol::{
    Batch, BatchReply, Hash, Op, Resolve, ResolveReply, SecretReply, StatsQuery, StatsReply,
    TrafficPart,
};
use crate::store::{CookieRow, Store};
use headcount_core::session::MAX_ALIASES;
use headcount_core::table::ROTATION_GRACE_MS;
use headcount_core::traffic::TrafficDelta;
use headcount_core::{Config, Session};
use worker::{
    console_error, console_log, durable_object, js_sys, DurableObject, Env, Method, Request,
    Response, Result, ScheduledTime, State,
};

/// How long a rotation or logout of a cookie nobody knows yet is kept, waiting for
/// the cookie's entry to arrive from another isolate's flush. Flushes are at most
/// 10 s apart (`flush_interval_ms <= 10000`), so a minute is ample.
pub const ORPHAN_TTL_MS: u64 = 60_000;
/// Follow-ups applied within one op (an op leads to at most a few).
const MAX_DEPTH: usize = 8;

#[durable_object]
pub struct Sessions {
    state: State,
    env: Env,
}

/// Where this shard sits among `shards`, and the clock.
#[derive(Clone, Copy)]
struct Ctx {
    shard: u32,
    shards: u32,
    now: u64,
}

/// What applying a batch produced.
#[derive(Default)]
struct Outcome {
    authenticated: u64,
    anonymous: u64,
    reply: BatchReply,
    /// A row that the alarm must eventually remove was written.
    needs_alarm: bool,
}

impl DurableObject for Sessions {
    fn new(state: State, env: Env) -> Self {
        if let Err(e) = Store::new(&state).migrate() {
            console_error!("headcount: cannot create the session tables: {e}");
        }
        Self { state, env }
    }

    /// Routes each operation to its `handle_*` method.
    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let cfg = match self.config() {
            Ok(c) => c,
            Err(e) => return Response::error(e, 500),
        };
        match (req.method(), req.path().as_str()) {
            (Method::Post, "/batch") => self.handle_batch(&cfg, req.json().await?).await,
            (Method::Post, "/resolve") => self.handle_resolve(req.json().await?),
            (Method::Post, "/stats") => self.handle_stats(&cfg, req.json().await?),
            (Method::Post, "/secret") => self.handle_secret(),
            _ => Response::error("no such operation", 404),
        }
    }

    /// Expiry and cleanup: see `handle_alarm`.
    async fn alarm(&self) -> Result<Response> {
        let cfg = match self.config() {
            Ok(c) => c,
            Err(e) => return Response::error(e, 500),
        };
        self.handle_alarm(&cfg).await
    }
}

impl Sessions {
    fn config(&self) -> std::result::Result<Config, String> {
        let raw = self
            .env
            .var("HEADCOUNT_CONFIG")
            .map(|v| v.to_string())
            .unwrap_or_default();
        Config::from_json(raw.as_bytes()).map_err(|e| e.to_string())
    }

    /// Applies the ops in order (each with its same-shard follow-ups), then adds
    /// the traffic, then makes sure the alarm is set.
    async fn handle_batch(&self, cfg: &Config, batch: Batch) -> Result<Response> {
        let ctx = Ctx {
            shard: batch.shard,
            shards: batch.shards.max(1),
            now: now_ms(),
        };
        let store = Store::new(&self.state);
        let mut out = Outcome::default();
        for op in batch.ops {
            if let Err(e) = self.apply(&store, cfg, ctx, op, 0, &mut out) {
                console_error!("headcount: op failed: {e}");
            }
        }
        self.handle_traffic(&store, batch.traffic, &out, batch.now)?;
        if out.needs_alarm {
            self.ensure_alarm(&store, cfg, ctx.now).await?;
        }
        Response::from_json(&out.reply)
    }

    /// Applies `op` here if it belongs to this shard, else hands it back to the Worker.
    fn apply(
        &self,
        store: &Store,
        cfg: &Config,
        ctx: Ctx,
        op: Op,
        depth: usize,
        out: &mut Outcome,
    ) -> Result<()> {
        if op.key().shard(ctx.shards) != ctx.shard {
            out.reply.forward.push(op);
            return Ok(());
        }
        if depth > MAX_DEPTH {
            console_error!("headcount: dropped {op:?}: follow-ups too deep");
            return Ok(());
        }
        let follow_ups = match op {
            Op::Login { session } => {
                out.needs_alarm = true;
                self.handle_login(store, cfg, session)?
            }
            Op::Touch {
                hash,
                last_ms,
                requests,
                retry,
            } => self.handle_touch(store, ctx, hash, last_ms, requests, retry, out)?,
            Op::Rotate { from, via, to, at } => {
                self.handle_rotate(store, ctx, from, via, to, at, out)?
            }
            Op::Logout { hash, .. } => self.handle_logout(store, ctx, hash, out)?,
            Op::TouchSession {
                id,
                hash,
                last_ms,
                requests,
                retry,
            } => {
                self.handle_touch_session(store, id, hash, last_ms, requests, retry, out)?;
                Vec::new()
            }
            Op::RotateSession { id, via, to, at } => {
                self.handle_rotate_session(store, cfg, ctx, id, via, to, at)?
            }
            Op::EndSession { id, hash } => self.handle_end_session(store, id, hash)?,
            Op::Index { hash, id, until } => {
                out.needs_alarm = true;
                self.handle_index(store, ctx, hash, id, until)?
            }
            Op::Shorten { hash, id, until } => {
                store.shorten(&hash, &id, until)?;
                Vec::new()
            }
            Op::Unindex { hash, id } => {
                store.unindex(&hash, &id)?;
                Vec::new()
            }
        };
        for next in follow_ups {
            self.apply(store, cfg, ctx, next, depth + 1, out)?;
        }
        Ok(())
    }

    /// Records a new login (as `SessionTable::insert`): the session, then its cookie.
    fn handle_login(&self, store: &Store, cfg: &Config, session: Session) -> Result<Vec<Op>> {
        console_log!(
            "headcount: login {} as {} ({})",
            session.username,
            session.role,
            session.uuid()
        );
        store.put_session(&session)?;
        Ok(vec![Op::Index {
            hash: Hash(session.cookie),
            id: Hash(session.id),
            until: session.deadline(cfg),
        }])
    }

    /// A cookie seen in requests: leads to its session, or is unknown (retried once,
    /// since a rotation held by another isolate may not have landed; then anonymous).
    #[allow(clippy::too_many_arguments)]
    fn handle_touch(
        &self,
        store: &Store,
        ctx: Ctx,
        hash: Hash,
        last_ms: u64,
        requests: u64,
        retry: bool,
        out: &mut Outcome,
    ) -> Result<Vec<Op>> {
        match store.cookie(&hash)? {
            Some(CookieRow::Session { id, until }) if until >= ctx.now => {
                Ok(vec![Op::TouchSession {
                    id,
                    hash,
                    last_ms,
                    requests,
                    retry,
                }])
            }
            _ => {
                unknown_touch(hash, last_ms, requests, retry, out);
                Ok(Vec::new())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_touch_session(
        &self,
        store: &Store,
        id: Hash,
        hash: Hash,
        last_ms: u64,
        requests: u64,
        retry: bool,
        out: &mut Outcome,
    ) -> Result<()> {
        if store.touch(&id, last_ms)? {
            out.authenticated += requests;
        } else {
            unknown_touch(hash, last_ms, requests, retry, out);
        }
        Ok(())
    }

    /// A cookie rotation: leads to the session's rotation, or, for a cookie not
    /// known yet, leaves an orphan entry that the session follows when it lands.
    #[allow(clippy::too_many_arguments)]
    fn handle_rotate(
        &self,
        store: &Store,
        ctx: Ctx,
        from: Hash,
        via: Vec<Hash>,
        to: Hash,
        at: u64,
        out: &mut Outcome,
    ) -> Result<Vec<Op>> {
        match store.cookie(&from)? {
            Some(CookieRow::Session { id, until }) if until >= ctx.now => {
                Ok(vec![Op::RotateSession { id, via, to, at }])
            }
            Some(CookieRow::Orphan { until, .. }) if until >= ctx.now => Ok(Vec::new()),
            _ => {
                store.put_orphan(&from, Some(&to), ctx.now + ORPHAN_TTL_MS)?;
                out.needs_alarm = true;
                Ok(Vec::new())
            }
        }
    }

    /// A logout: ends the session behind the cookie, or leaves a tombstone for a
    /// cookie whose entry is still on its way.
    fn handle_logout(
        &self,
        store: &Store,
        ctx: Ctx,
        hash: Hash,
        out: &mut Outcome,
    ) -> Result<Vec<Op>> {
        match store.cookie(&hash)? {
            Some(CookieRow::Session { id, until }) if until >= ctx.now => {
                Ok(vec![Op::EndSession { id, hash }])
            }
            _ => {
                store.put_orphan(&hash, None, ctx.now + ORPHAN_TTL_MS)?;
                out.needs_alarm = true;
                Ok(Vec::new())
            }
        }
    }

    /// Follows a rotation on the session (as `SessionTable::rotate`): the new value
    /// becomes the cookie, the old one an alias; only the newest `MAX_ALIASES`
    /// aliases last as long as the session, older ones `ROTATION_GRACE_MS`.
    #[allow(clippy::too_many_arguments)]
    fn handle_rotate_session(
        &self,
        store: &Store,
        cfg: &Config,
        ctx: Ctx,
        id: Hash,
        via: Vec<Hash>,
        to: Hash,
        at: u64,
    ) -> Result<Vec<Op>> {
        let Some(mut s) = store.session(&id)? else {
            return Ok(Vec::new());
        };
        s.last_ms = s.last_ms.max(at);
        let deadline = s.deadline(cfg);
        let grace = ctx.now.saturating_add(ROTATION_GRACE_MS);
        let mut dropped = Vec::new();
        for step in via.iter().chain(std::iter::once(&to)) {
            if s.cookie == step.0 {
                continue;
            }
            let old = std::mem::replace(&mut s.cookie, step.0);
            s.aliases.retain(|a| *a != step.0 && *a != old);
            s.aliases.insert(0, old);
            if s.aliases.len() > MAX_ALIASES {
                dropped.extend(s.aliases.split_off(MAX_ALIASES));
            }
        }
        store.put_session(&s)?;
        let mut ops = vec![Op::Index {
            hash: to,
            id,
            until: deadline,
        }];
        // Values handed out between two flushes were never indexed: index them now.
        for a in &s.aliases {
            if via.contains(&Hash(*a)) {
                ops.push(Op::Index {
                    hash: Hash(*a),
                    id,
                    until: deadline,
                });
            }
        }
        for d in dropped {
            let hash = Hash(d);
            ops.push(if via.contains(&hash) {
                Op::Index {
                    hash,
                    id,
                    until: grace,
                }
            } else {
                Op::Shorten {
                    hash,
                    id,
                    until: grace,
                }
            });
        }
        Ok(ops)
    }

    /// Ends a session (as `SessionTable::end`): removes it and its cookie entries.
    fn handle_end_session(&self, store: &Store, id: Hash, hash: Hash) -> Result<Vec<Op>> {
        let Some(s) = store.delete_session(&id)? else {
            return Ok(Vec::new());
        };
        console_log!("headcount: logout {} ({})", s.username, s.uuid());
        Ok(cookies_of(&s, Some(hash))
            .into_iter()
            .map(|hash| Op::Unindex { hash, id })
            .collect())
    }

    /// Points a cookie at a session, unless an orphan says that cookie has already
    /// rotated on (the session follows) or logged out (the session ends).
    fn handle_index(
        &self,
        store: &Store,
        ctx: Ctx,
        hash: Hash,
        id: Hash,
        until: u64,
    ) -> Result<Vec<Op>> {
        let orphan = match store.cookie(&hash)? {
            Some(CookieRow::Orphan { next, until: t }) if t >= ctx.now => Some(next),
            _ => None,
        };
        match orphan {
            Some(None) => {
                store.delete_cookie(&hash)?;
                Ok(vec![Op::EndSession { id, hash }])
            }
            Some(Some(next)) => {
                store.index(&hash, &id, until)?;
                Ok(vec![Op::RotateSession {
                    id,
                    via: Vec::new(),
                    to: next,
                    at: ctx.now,
                }])
            }
            None => {
                store.index(&hash, &id, until)?;
                Ok(Vec::new())
            }
        }
    }

    /// Adds this batch's traffic: the isolate's anonymous count and time buckets,
    /// plus what the ops showed (cookies of live sessions are authenticated).
    fn handle_traffic(
        &self,
        store: &Store,
        part: TrafficPart,
        out: &Outcome,
        now: u64,
    ) -> Result<()> {
        let delta = TrafficDelta {
            authenticated: out.authenticated,
            anonymous: part.anonymous + out.anonymous,
            buckets: part.buckets,
        };
        if delta.is_empty() {
            return Ok(());
        }
        let mut traffic = store.traffic()?;
        traffic.merge(&delta, now);
        store.put_traffic(&traffic)
    }

    /// The session behind a cookie (on the cookie's shard) or an id (on its own).
    fn handle_resolve(&self, q: Resolve) -> Result<Response> {
        let store = Store::new(&self.state);
        let shards = q.shards.max(1);
        let id = match (q.id, q.hash) {
            (Some(id), _) => Some(id),
            (None, Some(hash)) => match store.cookie(&hash)? {
                Some(CookieRow::Session { id, until }) if until >= q.now => Some(id),
                _ => None,
            },
            (None, None) => None,
        };
        let reply = match id {
            Some(id) if id.shard(shards) == q.shard => ResolveReply {
                session: store.session(&id)?,
                id: None,
            },
            Some(id) => ResolveReply {
                session: None,
                id: Some(id),
            },
            None => ResolveReply::default(),
        };
        Response::from_json(&reply)
    }

    fn handle_stats(&self, cfg: &Config, q: StatsQuery) -> Result<Response> {
        let store = Store::new(&self.state);
        // A superset of the active sessions (the report applies the exact rule),
        // with a second of slack for clock differences between isolate and object.
        let since = q.now.saturating_sub(cfg.active_window_ms + 1000);
        let (stored_sessions, stored_cookies) = store.counts()?;
        Response::from_json(&StatsReply {
            sessions: store.sessions_seen_since(since)?,
            traffic: store.traffic()?,
            stored_sessions,
            stored_cookies,
        })
    }

    /// The cookie hash key, generated on first use and kept here (shard 0).
    fn handle_secret(&self) -> Result<Response> {
        let store = Store::new(&self.state);
        let secret = match store.meta("secret")? {
            Some(s) => s,
            None => {
                let mut b = [0u8; 32];
                getrandom::getrandom(&mut b)
                    .map_err(|e| worker::Error::RustError(format!("no randomness: {e}")))?;
                let s: String = b.iter().map(|x| format!("{x:02x}")).collect();
                store.put_meta("secret", &s)?;
                s
            }
        };
        Response::from_json(&SecretReply { secret })
    }

    /// Removes what is over: sessions the core calls expired (candidates found by
    /// index) with their cookie entries here, and cookie entries past their time.
    /// Entries of an expired session on other shards end at their own `until`
    /// (at most the session's deadline) and lead nowhere meanwhile.
    async fn handle_alarm(&self, cfg: &Config) -> Result<Response> {
        let now = now_ms();
        let store = Store::new(&self.state);
        let mut ended = 0usize;
        for s in store.expiry_candidates(now, cfg)? {
            if s.is_expired(now, cfg) {
                let id = Hash(s.id);
                store.delete_session(&id)?;
                for hash in cookies_of(&s, None) {
                    store.unindex(&hash, &id)?;
                }
                ended += 1;
            }
        }
        let stale = store.delete_cookies_before(now)?;
        if ended > 0 || stale > 0 {
            console_log!("headcount: alarm ended {ended} expired sessions, removed {stale} stale cookie entries");
        }
        self.schedule_alarm(&store, cfg, now, true).await?;
        Response::ok("swept")
    }

    /// After writes: makes sure an alarm is pending. An existing alarm is never later
    /// than the earliest expiry (new rows expire no sooner than old ones, orphans
    /// aside, which only wait a little longer).
    async fn ensure_alarm(&self, store: &Store, cfg: &Config, now: u64) -> Result<()> {
        if self.state.storage().get_alarm().await?.is_none() {
            self.schedule_alarm(store, cfg, now, false).await?;
        }
        Ok(())
    }

    /// Sets the alarm for the earliest moment something can be removed, but no
    /// sooner than `sweep_interval_seconds` after a sweep; none if the shard is empty.
    async fn schedule_alarm(
        &self,
        store: &Store,
        cfg: &Config,
        now: u64,
        after_sweep: bool,
    ) -> Result<()> {
        let storage = self.state.storage();
        match store.next_expiry(cfg)? {
            None => storage.delete_alarm().await,
            Some(at) => {
                let floor = if after_sweep {
                    now + cfg.sweep_interval_ms
                } else {
                    now + 1
                };
                let when = at.max(floor);
                let date = js_sys::Date::new(&js_sys::Number::from(when as f64));
                storage.set_alarm(ScheduledTime::new(date)).await
            }
        }
    }
}

/// A touch of a cookie that leads to no live session: sent once more later, then
/// counted as anonymous.
fn unknown_touch(hash: Hash, last_ms: u64, requests: u64, retry: bool, out: &mut Outcome) {
    if retry {
        out.anonymous += requests;
    } else {
        out.reply.missing.push(Op::Touch {
            hash,
            last_ms,
            requests,
            retry: true,
        });
    }
}

/// The current cookie, the kept aliases, and `extra` if given (as the core's).
fn cookies_of(s: &Session, extra: Option<Hash>) -> Vec<Hash> {
    let mut all = vec![Hash(s.cookie)];
    all.extend(s.aliases.iter().map(|a| Hash(*a)));
    if let Some(h) = extra.filter(|h| !all.contains(h)) {
        all.push(h);
    }
    all
}

pub fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}
