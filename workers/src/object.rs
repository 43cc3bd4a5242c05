//! The `Sessions` Durable Object: one shard of the session table, in SQLite.
//!
//! `fetch` only routes; each `handle_*` method is one operation. The layout is the
//! core's (`plugin/core/src/table.rs`): sessions by session id, and a cookie index
//! (hash -> session id, until) holding each session's current cookie and its
//! rotated aliases. Every rule (expiry, deadlines, how many aliases are kept and
//! for how long, traffic merging) comes from `headcount-core`; SQL only stores rows
//! and finds candidates by index.

use crate::bearer::{self, Start};
use crate::protocol::{
    user_hash, Batch, BatchReply, FeedReply, Hash, Op, Resolve, ResolveReply, RevokeQuery,
    RevokeReply, RevokedAdd, RevokedList, SecretReply, StatsQuery, StatsReply, TrafficPart,
};
use crate::shards;
use crate::store::{CookieRow, Store};
use futures::future::join_all;
use headcount_core::events::{Events, Kind};
use headcount_core::session::MAX_ALIASES;
use headcount_core::stats;
use headcount_core::table::ROTATION_GRACE_MS;
use headcount_core::traffic::TrafficDelta;
use headcount_core::{Config, Session};
use std::cell::Cell;
use std::collections::BTreeMap;
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
/// Revoked cookie values sent to an isolate at once (those that stay revoked
/// longest); beyond this, older revocations are not enforced at the edge.
pub const MAX_REVOKED_SYNC: usize = 10_000;
/// Rounds of cross-shard follow-ups an alarm delivers itself.
const MAX_ROUNDS: usize = 6;

#[durable_object]
pub struct Sessions {
    state: State,
    env: Env,
    /// Which shard of how many this object is, as the last request said (also
    /// kept in `meta`, for the alarm).
    placement: Cell<Option<(u32, u32)>>,
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
    /// The event feed, loaded at the first event of the batch and saved once.
    events: Option<Events>,
}

impl DurableObject for Sessions {
    fn new(state: State, env: Env) -> Self {
        if let Err(e) = Store::new(&state).migrate() {
            console_error!("headcount: cannot create the session tables: {e}");
        }
        Self {
            state,
            env,
            placement: Cell::new(None),
        }
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
            (Method::Post, "/revoke") => self.handle_revoke(&cfg, req.json().await?).await,
            (Method::Post, "/revoked") => self.handle_revoked(&cfg, req.json().await?).await,
            (Method::Post, "/feed") => self.handle_feed(),
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
        let store = Store::new(&self.state);
        let ctx = self.place(&store, batch.shard, batch.shards)?;
        let mut out = Outcome::default();
        for op in batch.ops {
            if let Err(e) = self.apply(&store, cfg, ctx, op, 0, &mut out) {
                console_error!("headcount: op failed: {e}");
            }
        }
        save_events(&store, &mut out)?;
        self.handle_traffic(&store, batch.traffic, &out, batch.now)?;
        if out.needs_alarm {
            self.ensure_alarm(&store, cfg, ctx.now).await?;
        }
        if let Some(have) = batch.revoked_rev {
            let rev = store.revoked_rev()?;
            if rev != have {
                out.reply.revoked = Some(RevokedList {
                    rev,
                    entries: store.revoked(MAX_REVOKED_SYNC)?,
                });
            }
        }
        Response::from_json(&out.reply)
    }

    /// Remembers which shard this object is (the alarm has no request to say so).
    fn place(&self, store: &Store, shard: u32, shards: u32) -> Result<Ctx> {
        let here = (shard, shards.max(1));
        if self.placement.get() != Some(here) {
            store.put_meta("placement", &format!("{}/{}", here.0, here.1))?;
            self.placement.set(Some(here));
        }
        Ok(Ctx {
            shard: here.0,
            shards: here.1,
            now: now_ms(),
        })
    }

    /// This object's place as last recorded (shard 0 of 1 if it never heard).
    fn placed(&self, store: &Store) -> Result<Ctx> {
        let here = match self.placement.get() {
            Some(p) => p,
            None => store
                .meta("placement")?
                .and_then(|v| {
                    let (a, b) = v.split_once('/')?;
                    Some((a.parse().ok()?, b.parse::<u32>().ok()?.max(1)))
                })
                .unwrap_or((0, 1)),
        };
        self.placement.set(Some(here));
        Ok(Ctx {
            shard: here.0,
            shards: here.1,
            now: now_ms(),
        })
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
            Op::Bearer { session } => self.handle_bearer(store, cfg, ctx, session, out)?,
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
            Op::EndSession { id, hash } => self.handle_end_session(store, cfg, ctx, id, hash)?,
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
            Op::Cap { keep } => self.handle_cap(store, cfg, ctx, keep)?,
            Op::Evict { id } => end_session(store, cfg, id, None, Kind::Eviction, ctx.now)?.1,
            Op::UserAdd { user, id, login_ms } => {
                self.handle_user_add(store, cfg, ctx, user, id, login_ms)?
            }
            Op::UserRemove { user, id } => {
                store.user_remove(&user, &id)?;
                Vec::new()
            }
            Op::Event {
                kind,
                at,
                id,
                username,
                role,
            } => {
                self.handle_event(store, kind, at, id, username, role, out)?;
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
        let id = Hash(session.id);
        let mut ops = vec![Op::Index {
            hash: Hash(session.cookie),
            id,
            until: session.deadline(cfg),
        }];
        // As `SessionTable::insert`: the user's limit, then the cap; their evictions
        // are recorded before the login itself.
        if cfg.max_sessions_per_user.is_some() {
            ops.push(Op::UserAdd {
                user: user_hash(&session.user_id),
                id,
                login_ms: session.login_ms,
            });
        }
        ops.push(Op::Cap { keep: id });
        ops.push(event(Kind::Login, &session, session.login_ms));
        Ok(ops)
    }

    /// A verified bearer token's session (`bearer.rs`), on the session's shard:
    /// started like a login unless it is live (the id derives from the token's key,
    /// so two isolates starting it at once write one session) or its key is
    /// revoked (every shard keeps the revoked list).
    fn handle_bearer(
        &self,
        store: &Store,
        cfg: &Config,
        ctx: Ctx,
        session: Session,
        out: &mut Outcome,
    ) -> Result<Vec<Op>> {
        let id = Hash(session.id);
        let existing = store.session(&id)?;
        let revoked = store.is_revoked(&Hash(session.cookie), ctx.now)?;
        match bearer::start(existing.as_ref(), revoked, ctx.now, cfg) {
            Start::Live => Ok(Vec::new()),
            Start::Revoked => {
                console_log!(
                    "headcount: revoked bearer session {} not restarted",
                    session.uuid()
                );
                Ok(Vec::new())
            }
            Start::New => {
                out.needs_alarm = true;
                self.handle_login(store, cfg, session)
            }
            Start::Restart => {
                out.needs_alarm = true;
                let (_, mut ops) = end_session(store, cfg, id, None, Kind::Expiry, ctx.now)?;
                ops.extend(self.handle_login(store, cfg, session)?);
                Ok(ops)
            }
        }
    }

    /// Keeps this shard within its share of `max_sessions` (all of it with one
    /// shard): evicts the longest-idle sessions other than `keep`, exactly (by index).
    fn handle_cap(&self, store: &Store, cfg: &Config, ctx: Ctx, keep: Hash) -> Result<Vec<Op>> {
        let cap = shard_cap(cfg.max_sessions, ctx.shard, ctx.shards);
        let live = store.session_count()?;
        let mut ops = Vec::new();
        if live > cap {
            for id in store.longest_idle(live - cap, &keep)? {
                ops.extend(end_session(store, cfg, id, None, Kind::Eviction, ctx.now)?.1);
            }
        }
        Ok(ops)
    }

    /// Adds a login to its user's list (as `SessionTable::user_index_add`); the
    /// user's oldest sessions beyond `max_sessions_per_user` are evicted.
    fn handle_user_add(
        &self,
        store: &Store,
        cfg: &Config,
        ctx: Ctx,
        user: Hash,
        id: Hash,
        login_ms: u64,
    ) -> Result<Vec<Op>> {
        let Some(limit) = cfg.max_sessions_per_user else {
            return Ok(Vec::new());
        };
        // Entries older than any session can be are over, whether or not the news came.
        store.users_prune(ctx.now.saturating_sub(cfg.max_lifetime_ms))?;
        let list = store.user_add(&user, &id, login_ms)?;
        let extra = list.len().saturating_sub(limit as usize);
        let mut ops = Vec::new();
        for old in list.into_iter().take(extra) {
            store.user_remove(&user, &old)?;
            ops.push(Op::Evict { id: old });
        }
        Ok(ops)
    }

    /// Adds a session event to the feed (shard 0); a login starts the history
    /// sampling if it had stopped.
    #[allow(clippy::too_many_arguments)]
    fn handle_event(
        &self,
        store: &Store,
        kind: Kind,
        at: u64,
        id: Hash,
        username: String,
        role: String,
        out: &mut Outcome,
    ) -> Result<()> {
        let events = match out.events.take() {
            Some(e) => e,
            None => store.events()?,
        };
        let mut events = events;
        events.push(kind, &event_session(id, username, role), at);
        out.events = Some(events);
        if kind == Kind::Login && store.meta("sampling")?.as_deref() != Some("1") {
            store.put_meta("sampling", "1")?;
            out.needs_alarm = true;
        }
        Ok(())
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

    /// Ends a session on logout (as `SessionTable::end`): removes it, its cookie
    /// entries and its per-user entry, and records the event.
    fn handle_end_session(
        &self,
        store: &Store,
        cfg: &Config,
        ctx: Ctx,
        id: Hash,
        hash: Hash,
    ) -> Result<Vec<Op>> {
        Ok(end_session(store, cfg, id, Some(hash), Kind::Logout, ctx.now)?.1)
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
        let (stored_sessions, stored_cookies, stored_revoked) = store.counts()?;
        Response::from_json(&StatsReply {
            sessions: store.sessions_seen_since(since)?,
            traffic: store.traffic()?,
            stored_sessions,
            stored_cookies,
            stored_revoked,
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

    /// Ends session `id` on an admin's request (phase 1 of a revocation, on the
    /// session's shard): the session, its entries here, the event; the follow-ups
    /// for other shards go back to the Worker.
    async fn handle_revoke(&self, cfg: &Config, q: RevokeQuery) -> Result<Response> {
        let store = Store::new(&self.state);
        let ctx = self.place(&store, q.shard, q.shards)?;
        let mut out = Outcome::default();
        let (session, ops) = end_session(&store, cfg, q.id, None, Kind::Revocation, ctx.now)?;
        if let (true, Some(s)) = (cfg.enforce_revocation, &session) {
            // Here at once, so a bearer token of the session cannot start it again
            // before phase 2 reaches this shard.
            store.revoke(&cookies_of(s, None), s.deadline(cfg))?;
            out.needs_alarm = true;
        }
        for op in ops {
            self.apply(&store, cfg, ctx, op, 1, &mut out)?;
        }
        save_events(&store, &mut out)?;
        if out.needs_alarm {
            self.ensure_alarm(&store, cfg, ctx.now).await?;
        }
        Response::from_json(&RevokeReply {
            session,
            forward: out.reply.forward,
        })
    }

    /// Phase 2 of a revocation with `enforce_revocation`, on every shard: the given
    /// cookie values and those of this shard's entries that still lead to the
    /// session (recent rotations) are revoked until `until`; the entries go.
    /// Returns what it added.
    async fn handle_revoked(&self, cfg: &Config, q: RevokedAdd) -> Result<Response> {
        let store = Store::new(&self.state);
        let ctx = self.place(&store, q.shard, q.shards)?;
        let mut hashes = q.hashes;
        for h in store.cookies_of_session(&q.id, ctx.now)? {
            store.unindex(&h, &q.id)?;
            if !hashes.contains(&h) {
                hashes.push(h);
            }
        }
        store.revoke(&hashes, q.until)?;
        self.ensure_alarm(&store, cfg, ctx.now).await?;
        let added: Vec<(Hash, u64)> = hashes.into_iter().map(|h| (h, q.until)).collect();
        Response::from_json(&added)
    }

    /// The event feed and the history (kept on shard 0).
    fn handle_feed(&self) -> Result<Response> {
        let store = Store::new(&self.state);
        Response::from_json(&FeedReply {
            events: store.events()?,
            history: store.history()?,
        })
    }

    /// Removes what is over: sessions the core calls expired (candidates found by
    /// index) with their cookie entries, per-user entries and an `expiry` event,
    /// cookie entries and revocations past their time. Follow-ups for other shards
    /// are delivered from here. On shard 0 it also samples the history.
    async fn handle_alarm(&self, cfg: &Config) -> Result<Response> {
        let store = Store::new(&self.state);
        let ctx = self.placed(&store)?;
        let now = ctx.now;
        let mut out = Outcome::default();
        let mut ended = 0usize;
        for s in store.expiry_candidates(now, cfg)? {
            if s.is_expired(now, cfg) {
                let (_, ops) = end_session(&store, cfg, Hash(s.id), None, Kind::Expiry, now)?;
                for op in ops {
                    self.apply(&store, cfg, ctx, op, 1, &mut out)?;
                }
                ended += 1;
            }
        }
        save_events(&store, &mut out)?;
        let stale = store.delete_cookies_before(now)?;
        let revoked = store.delete_revoked_before(now)?;
        store.users_prune(now.saturating_sub(cfg.max_lifetime_ms))?;
        if ended > 0 || stale > 0 || revoked > 0 {
            console_log!("headcount: alarm ended {ended} expired sessions, removed {stale} stale cookie entries and {revoked} revocations");
        }
        if !out.reply.forward.is_empty() {
            self.deliver(cfg, ctx, std::mem::take(&mut out.reply.forward))
                .await;
        }
        if store.meta("sampling")?.as_deref() == Some("1") {
            match self.sample_history(&store, cfg, ctx).await {
                Ok(true) => {}
                Ok(false) => store.put_meta("sampling", "0")?,
                Err(e) => console_error!("headcount: history not sampled: {e}"),
            }
        }
        self.schedule_alarm(&store, cfg, now, true).await?;
        Response::ok("swept")
    }

    /// Records the active counts of every shard into this minute's peak (the
    /// core's `History`). Returns whether any shard still holds a session (if not,
    /// sampling stops until the next login: later minutes are zeros anyway).
    async fn sample_history(&self, store: &Store, cfg: &Config, ctx: Ctx) -> Result<bool> {
        let now = ctx.now;
        let since = now.saturating_sub(cfg.active_window_ms + 1000);
        let mut sessions = store.sessions_seen_since(since)?;
        let mut stored = store.session_count()?;
        let q = StatsQuery { now };
        let replies = join_all(
            (1..ctx.shards)
                .map(|shard| shards::call::<_, StatsReply>(&self.env, shard, "/stats", &q)),
        )
        .await;
        for reply in replies {
            let reply = reply.map_err(worker::Error::RustError)?;
            sessions.extend(reply.sessions);
            stored += reply.stored_sessions;
        }
        let counts = stats::counts(&sessions, now, cfg);
        let mut history = store.history()?;
        history.record(&counts, now);
        store.put_history(&history)?;
        Ok(stored > 0)
    }

    /// Delivers follow-ups an alarm produced for other shards (per-user entries,
    /// events, cookie entries), round by round; its own are applied here.
    async fn deliver(&self, cfg: &Config, ctx: Ctx, ops: Vec<Op>) {
        let store = Store::new(&self.state);
        let mut pending: BTreeMap<u32, Vec<Op>> = BTreeMap::new();
        for op in ops {
            pending
                .entry(op.key().shard(ctx.shards))
                .or_default()
                .push(op);
        }
        for _ in 0..MAX_ROUNDS {
            if let Some(mine) = pending.remove(&ctx.shard) {
                let mut out = Outcome::default();
                for op in mine {
                    if let Err(e) = self.apply(&store, cfg, ctx, op, 1, &mut out) {
                        console_error!("headcount: op failed: {e}");
                    }
                }
                if let Err(e) = save_events(&store, &mut out) {
                    console_error!("headcount: events not saved: {e}");
                }
                for op in out.reply.forward {
                    pending
                        .entry(op.key().shard(ctx.shards))
                        .or_default()
                        .push(op);
                }
                continue;
            }
            if pending.is_empty() {
                return;
            }
            let batches: Vec<Batch> = std::mem::take(&mut pending)
                .into_iter()
                .map(|(shard, ops)| Batch {
                    shard,
                    shards: ctx.shards,
                    now: now_ms(),
                    ops,
                    traffic: TrafficPart::default(),
                    revoked_rev: None,
                })
                .collect();
            let replies = join_all(
                batches
                    .iter()
                    .map(|b| shards::call::<_, BatchReply>(&self.env, b.shard, "/batch", b)),
            )
            .await;
            for reply in replies {
                match reply {
                    Ok(r) => {
                        for op in r.forward {
                            pending
                                .entry(op.key().shard(ctx.shards))
                                .or_default()
                                .push(op);
                        }
                    }
                    Err(e) => console_error!("headcount: alarm follow-ups not delivered: {e}"),
                }
            }
        }
        if !pending.is_empty() {
            console_error!("headcount: alarm follow-ups dropped: too many rounds");
        }
    }

    /// After writes: makes sure an alarm is pending. An existing alarm is never later
    /// than the earliest expiry (new rows expire no sooner than old ones, orphans
    /// aside, which only wait a little longer); while the history is sampled it is
    /// at most `sweep_interval_seconds` away.
    async fn ensure_alarm(&self, store: &Store, cfg: &Config, now: u64) -> Result<()> {
        let storage = self.state.storage();
        let sampling_by = now + cfg.sweep_interval_ms;
        match storage.get_alarm().await? {
            None => self.schedule_alarm(store, cfg, now, false).await,
            Some(at)
                if u64::try_from(at).unwrap_or(0) > sampling_by
                    && store.meta("sampling")?.as_deref() == Some("1") =>
            {
                self.schedule_alarm(store, cfg, now, false).await
            }
            Some(_) => Ok(()),
        }
    }

    /// Sets the alarm for the earliest moment something can be removed (or the
    /// history sampled), but no sooner than `sweep_interval_seconds` after a sweep;
    /// none if the shard is empty and not sampling.
    async fn schedule_alarm(
        &self,
        store: &Store,
        cfg: &Config,
        now: u64,
        after_sweep: bool,
    ) -> Result<()> {
        let storage = self.state.storage();
        let sample = (store.meta("sampling")?.as_deref() == Some("1"))
            .then_some(now + cfg.sweep_interval_ms);
        let next = match (store.next_expiry(cfg)?, sample) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match next {
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

/// Ends session `id` (as the core's `remove_by_id` / `end`): deletes it and returns
/// the follow-ups: its cookie entries (current, kept aliases, `extra`), its per-user
/// entry, and the `kind` event.
fn end_session(
    store: &Store,
    cfg: &Config,
    id: Hash,
    extra: Option<Hash>,
    kind: Kind,
    at: u64,
) -> Result<(Option<Session>, Vec<Op>)> {
    let Some(s) = store.delete_session(&id)? else {
        return Ok((None, Vec::new()));
    };
    console_log!("headcount: {} {} ({})", kind.name(), s.username, s.uuid());
    let mut ops: Vec<Op> = cookies_of(&s, extra)
        .into_iter()
        .map(|hash| Op::Unindex { hash, id })
        .collect();
    if cfg.max_sessions_per_user.is_some() {
        ops.push(Op::UserRemove {
            user: user_hash(&s.user_id),
            id,
        });
    }
    ops.push(event(kind, &s, at));
    Ok((Some(s), ops))
}

fn event(kind: Kind, s: &Session, at: u64) -> Op {
    Op::Event {
        kind,
        at,
        id: Hash(s.id),
        username: s.username.clone(),
        role: s.role.clone(),
    }
}

/// What `Events::push` reads of a session: id, username and role.
fn event_session(id: Hash, username: String, role: String) -> Session {
    Session {
        id: id.0,
        user_id: String::new(),
        username,
        role,
        ip: String::new(),
        user_agent: String::new(),
        login_ms: 0,
        last_ms: 0,
        cookie: [0; 16],
        aliases: Vec::new(),
    }
}

fn save_events(store: &Store, out: &mut Outcome) -> Result<()> {
    match out.events.take() {
        Some(e) => store.put_events(&e),
        None => Ok(()),
    }
}

/// Shard `shard`'s share of `max_sessions`: the shares add up to the cap (at least
/// one each). With one shard, the cap itself.
pub fn shard_cap(max_sessions: u64, shard: u32, shards: u32) -> u64 {
    let n = u64::from(shards.max(1));
    let extra = u64::from(u64::from(shard) < max_sessions % n);
    (max_sessions / n + extra).max(1)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_shares_add_up_to_the_cap() {
        assert_eq!(shard_cap(100_000, 0, 1), 100_000);
        assert_eq!(shard_cap(20, 0, 1), 20);
        let shares: Vec<u64> = (0..3).map(|i| shard_cap(20, i, 3)).collect();
        assert_eq!(shares, vec![7, 7, 6]);
        assert_eq!(shares.iter().sum::<u64>(), 20);
        // Never zero: a shard always keeps the session that just logged in.
        assert_eq!(shard_cap(2, 3, 4), 1);
    }

    #[test]
    fn an_event_keeps_who_and_which_session() {
        let op = event(
            Kind::Eviction,
            &event_session(Hash([7; 16]), "ann".into(), "admin".into()),
            5,
        );
        assert_eq!(op.key(), crate::protocol::FEED_KEY);
        let Op::Event {
            kind,
            at,
            id,
            username,
            role,
        } = op
        else {
            panic!("not an event: {op:?}");
        };
        assert_eq!(
            (kind, at, id, username.as_str(), role.as_str()),
            (Kind::Eviction, 5, Hash([7; 16]), "ann", "admin")
        );
        let mut events = Events::default();
        events.push(kind, &event_session(id, username, role), at);
        let view = events.view(0);
        assert_eq!(view.events[0].kind, "eviction");
        assert_eq!(view.events[0].session_id, uuid_of([7; 16]));
        assert_eq!(events.evictions_total, 1);
    }

    fn uuid_of(id: [u8; 16]) -> String {
        event_session(Hash(id), String::new(), String::new()).uuid()
    }
}
