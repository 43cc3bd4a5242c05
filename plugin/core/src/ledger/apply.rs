//! The ledger's rules: what each op does to one shard's rows, and which
//! follow-ups it sends to other shards. Synchronous and host-free: a host reads
//! a request, builds a `Ledger` over its store, calls one method, and sends back
//! what it returns.

use super::store::{Applied, CookieRow, LedgerStore, Minima};
use super::wire::{
    Batch, BatchReply, FeedReply, Op, RevokeReply, RevokedAdd, RevokedList, SecretReply,
    StatsReply, TrafficPart, APPLIED_TTL_MS, MAX_BATCH_OPS, VERSION,
};
use crate::activity::{self, Pending, Settled};
use crate::bearer::{self, Start};
use crate::config::Config;
use crate::events::{Actor, Events, Kind};
use crate::ids::{CookieHash, SessionId, UserKey};
use crate::session::{self, Session};
use crate::stats;
use crate::table::ROTATION_GRACE_MS;
use crate::traffic::TrafficDelta;
use std::fmt;

/// How long a rotation or logout of a cookie nobody knows yet is kept, waiting for
/// the cookie's entry to arrive from another node's flush. Flushes are at most
/// 10 s apart (`flush_interval_ms <= 10000`), so a minute is ample.
pub const ORPHAN_TTL_MS: u64 = 60_000;
/// Follow-ups applied within one op (an op leads to at most a few).
const MAX_DEPTH: usize = 8;
/// Revoked cookie values sent to a node at once (those that stay revoked
/// longest); beyond this, older revocations are not enforced at the edge.
pub const MAX_REVOKED_SYNC: usize = 10_000;
/// Slack on the active window when a shard lists sessions for a report: clocks
/// of nodes and shards differ a little; the report applies the exact rule.
const CLOCK_SLACK_MS: u64 = 1000;

/// Where a shard sits among `shards`, and its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Here {
    pub shard: u32,
    pub shards: u32,
    pub now: u64,
}

impl Here {
    pub fn new(shard: u32, shards: u32, now: u64) -> Here {
        Here {
            shard,
            shards: shards.max(1),
            now,
        }
    }
}

/// What applying something produced, for the host to act on.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests the touches showed to be of live sessions, and of nobody.
    pub authenticated: u64,
    pub anonymous: u64,
    pub reply: BatchReply,
    /// A row that only the alarm removes was written: make sure one is set.
    pub needs_alarm: bool,
    /// Lines for the host's log (logins, endings, dropped ops).
    pub log: Vec<String>,
    /// The event feed, loaded at the first event and saved once at the end.
    events: Option<Events>,
}

/// A batch the ledger refuses whole, or a store failure.
#[derive(Debug, PartialEq, Eq)]
pub enum LedgerError<E> {
    Refused(String),
    Store(E),
}

impl<E: fmt::Display> fmt::Display for LedgerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::Refused(why) => write!(f, "batch refused: {why}"),
            LedgerError::Store(e) => write!(f, "ledger store: {e}"),
        }
    }
}

/// What a sweep removed, with the follow-ups for other shards.
#[derive(Debug, Default)]
pub struct Swept {
    pub ended: usize,
    pub stale_cookies: u64,
    pub revocations: u64,
    pub outcome: Outcome,
}

/// Shard `shard`'s share of `max_sessions`: the shares add up to the cap (at least
/// one each). With one shard, the cap itself.
pub fn shard_cap(max_sessions: u64, shard: u32, shards: u32) -> u64 {
    let n = u64::from(shards.max(1));
    let extra = u64::from(u64::from(shard) < max_sessions % n);
    (max_sessions / n + extra).max(1)
}

/// Whether a batch can be applied at all.
pub fn check_batch(batch: &Batch) -> Result<(), String> {
    if batch.v > VERSION {
        return Err(format!(
            "protocol version {} is newer than this ledger's ({VERSION})",
            batch.v
        ));
    }
    if batch.ops.len() > MAX_BATCH_OPS {
        return Err(format!(
            "{} ops in one batch (at most {MAX_BATCH_OPS})",
            batch.ops.len()
        ));
    }
    Ok(())
}

const SAMPLING: &str = "sampling";

/// One shard of the ledger, over a host's store.
pub struct Ledger<'a, S: LedgerStore> {
    store: &'a mut S,
    cfg: &'a Config,
    here: Here,
}

type Res<T, S> = Result<T, <S as LedgerStore>::Error>;

impl<'a, S: LedgerStore> Ledger<'a, S> {
    pub fn new(store: &'a mut S, cfg: &'a Config, here: Here) -> Self {
        Ledger { store, cfg, here }
    }

    /// Applies a batch: its ops in order (each with its same-shard follow-ups;
    /// a failed op is logged and the rest go on), then its traffic, then answers
    /// with the shard's revoked list if the node's revision is stale. A
    /// sequenced batch seen before (`Batch::seq`) is answered with the reply it
    /// got then, and changes nothing.
    pub fn batch(&mut self, batch: Batch) -> Result<Outcome, LedgerError<S::Error>> {
        check_batch(&batch).map_err(LedgerError::Refused)?;
        let origin = batch.origin.filter(|_| batch.seq > 0);
        let last = match origin {
            Some(o) => self.store.applied(&o).map_err(LedgerError::Store)?,
            None => None,
        };
        match sequence(last.as_ref().map(|a| a.seq), batch.seq) {
            Sequence::Replay => return Ok(replay(last)),
            Sequence::Stale(last) => {
                let why = format!("batch {} of this node is older than {last}", batch.seq);
                return Err(LedgerError::Refused(why));
            }
            Sequence::New => {}
        }
        let seq = batch.seq;
        let mut out = self.apply_batch(batch).map_err(LedgerError::Store)?;
        if let Some(origin) = origin {
            let reply = serde_json::to_string(&out.reply).unwrap_or_default();
            let at = self.here.now;
            let applied = Applied { seq, reply, at };
            self.store
                .put_applied(&origin, &applied)
                .map_err(LedgerError::Store)?;
            out.needs_alarm = true;
        }
        Ok(out)
    }

    fn apply_batch(&mut self, batch: Batch) -> Res<Outcome, S> {
        let mut out = Outcome::default();
        self.store.prefetch(&batch.ops)?;
        for op in batch.ops {
            if let Err(e) = self.apply(op, 0, &mut out) {
                out.log.push(format!("op failed: {e}"));
            }
        }
        self.finish(&mut out)?;
        self.add_traffic(batch.traffic, &out, batch.now)?;
        if let Some(have) = batch.revoked_rev {
            let rev = self.store.revoked_rev()?;
            if rev != have {
                let entries = self.store.revoked(MAX_REVOKED_SYNC)?;
                out.reply.revoked = Some(RevokedList { rev, entries });
            }
        }
        Ok(out)
    }

    /// Saves what the outcome collected (the event feed).
    fn finish(&mut self, out: &mut Outcome) -> Res<(), S> {
        match out.events.take() {
            Some(e) => self.store.put_events(&e),
            None => Ok(()),
        }
    }

    /// Applies `op` here if it belongs to this shard, else hands it back.
    fn apply(&mut self, op: Op, depth: usize, out: &mut Outcome) -> Res<(), S> {
        if op.shard(self.here.shards) != self.here.shard {
            out.reply.forward.push(op);
            return Ok(());
        }
        if depth > MAX_DEPTH {
            out.log.push(format!("dropped {op:?}: follow-ups too deep"));
            return Ok(());
        }
        for next in self.step(op, out)? {
            self.apply(next, depth + 1, out)?;
        }
        Ok(())
    }

    /// Requests of a session made at `last_ms` (the latest): authenticated if
    /// the session was live then. One that had expired by then (idle or past
    /// its lifetime, not yet swept) is ended now, as the sweep would, and its
    /// requests are nobody's.
    fn touch_session(
        &mut self,
        id: SessionId,
        (hash, last_ms, requests, retry): (CookieHash, u64, u64, bool),
        out: &mut Outcome,
    ) -> Res<Vec<Op>, S> {
        let expired = self
            .store
            .times(&id)?
            .is_some_and(|(login, last)| crate::session::expired(login, last, last_ms, self.cfg));
        if expired {
            let (_, ops) = self.end(id, None, Kind::Expiry, out)?;
            unknown_touch(hash, last_ms, requests, true, out);
            return Ok(ops);
        }
        if self.store.touch(&id, last_ms)? {
            out.authenticated += requests;
        } else {
            unknown_touch(hash, last_ms, requests, retry, out);
        }
        Ok(Vec::new())
    }

    /// One op on this shard's rows; returns its follow-ups.
    fn step(&mut self, op: Op, out: &mut Outcome) -> Res<Vec<Op>, S> {
        let now = self.here.now;
        Ok(match op {
            Op::Login { session } => self.login(session, out)?,
            Op::Bearer { session, requests } => self.bearer(session, requests, out)?,
            Op::Touch {
                hash,
                last_ms,
                requests,
                retry,
            } => match self.live_cookie(&hash)? {
                Some(id) => vec![Op::TouchSession {
                    id,
                    hash,
                    last_ms,
                    requests,
                    retry,
                }],
                None => {
                    unknown_touch(hash, last_ms, requests, retry, out);
                    Vec::new()
                }
            },
            Op::TouchSession {
                id,
                hash,
                last_ms,
                requests,
                retry,
            } => self.touch_session(id, (hash, last_ms, requests, retry), out)?,
            Op::Rotate { from, via, to, at } => self.rotate(from, via, to, at, out)?,
            Op::RotateSession { id, via, to, at } => self.rotate_session(id, &via, to, at)?,
            Op::Logout { hash, .. } => match self.live_cookie(&hash)? {
                Some(id) => vec![Op::EndSession { id, hash }],
                None => {
                    // The cookie's entry is still on its way: leave a tombstone.
                    self.store.put_orphan(&hash, None, now + ORPHAN_TTL_MS)?;
                    out.needs_alarm = true;
                    Vec::new()
                }
            },
            Op::EndSession { id, hash } => self.end(id, Some(hash), Kind::Logout, out)?.1,
            Op::Index { hash, id, until } => {
                out.needs_alarm = true;
                self.index(hash, id, until)?
            }
            Op::Shorten { hash, id, until } => {
                self.store.shorten(&hash, &id, until)?;
                Vec::new()
            }
            Op::Unindex { hash, id } => {
                self.store.unindex(&hash, &id)?;
                Vec::new()
            }
            Op::Cap { keep } => self.cap(keep, out)?,
            Op::Evict { id } => self.end(id, None, Kind::Eviction, out)?.1,
            Op::UserAdd { user, id, login_ms } => self.user_add(user, id, login_ms)?,
            Op::Identify {
                id,
                user_id,
                username,
                role,
            } => self.identify(id, (user_id, username, role), out)?,
            Op::UserRemove { user, id } => {
                self.store.user_remove(&user, &id)?;
                Vec::new()
            }
            Op::Counts { whoami } => {
                let mut events = match out.events.take() {
                    Some(e) => e,
                    None => self.store.events()?,
                };
                events.whoami.add(whoami);
                out.events = Some(events);
                Vec::new()
            }
            Op::Event {
                kind,
                at,
                id,
                username,
                role,
                by,
            } => {
                self.event(kind, at, id, (&username, &role), by, out)?;
                Vec::new()
            }
        })
    }

    /// The session a cookie leads to now, if any.
    fn live_cookie(&mut self, hash: &CookieHash) -> Res<Option<SessionId>, S> {
        Ok(match self.store.cookie(hash)? {
            Some(CookieRow::Session { id, until }) if until >= self.here.now => Some(id),
            _ => None,
        })
    }

    /// Names session `id` as the app vouched for it (`whoami`); with
    /// `max_sessions_per_user`, moves it to its new user's list (which may
    /// evict that user's oldest sessions).
    fn identify(
        &mut self,
        id: SessionId,
        who: (String, String, String),
        out: &mut Outcome,
    ) -> Res<Vec<Op>, S> {
        let Some(mut s) = self.store.session(&id)? else {
            return Ok(Vec::new());
        };
        let old_user = std::mem::replace(&mut s.user_id, who.0);
        (s.username, s.role) = (who.1, who.2);
        self.store.put_session(&s)?;
        out.log.push(format!(
            "whoami: {} as {} ({})",
            s.username,
            s.role,
            s.uuid()
        ));
        if self.cfg.max_sessions_per_user.is_none() || old_user == s.user_id {
            return Ok(Vec::new());
        }
        Ok(vec![
            Op::UserRemove {
                user: session::user_key(&old_user),
                id,
            },
            Op::UserAdd {
                user: session::user_key(&s.user_id),
                id,
                login_ms: s.login_ms,
            },
        ])
    }

    /// Records a new login: the session, then its cookie entry; the user's limit
    /// and the cap, whose evictions are recorded before the login itself.
    fn login(&mut self, session: Session, out: &mut Outcome) -> Res<Vec<Op>, S> {
        out.needs_alarm = true;
        out.log.push(format!(
            "login {} as {} ({})",
            session.name(),
            session.role,
            session.uuid()
        ));
        self.store.put_session(&session)?;
        let id = session.id;
        let mut ops = vec![Op::Index {
            hash: session.cookie,
            id,
            until: session.deadline(self.cfg),
        }];
        if self.cfg.max_sessions_per_user.is_some() {
            ops.push(Op::UserAdd {
                user: session::user_key(&session.user_id),
                id,
                login_ms: session.login_ms,
            });
        }
        ops.push(Op::Cap { keep: id });
        ops.push(Op::event(Kind::Login, &session, session.login_ms));
        Ok(ops)
    }

    /// A verified bearer token's session, on the session's shard: started like a
    /// login unless it is live (the id derives from the token's key, so two nodes
    /// starting it at once write one session) or its key is revoked.
    fn bearer(&mut self, session: Session, requests: u64, out: &mut Outcome) -> Res<Vec<Op>, S> {
        let id = session.id;
        let existing = self.store.session(&id)?;
        let revoked = self.store.is_revoked(&session.cookie, self.here.now)?;
        let start = bearer::start(existing.as_ref(), revoked, self.here.now, self.cfg);
        match start {
            Start::Revoked => out.anonymous += requests,
            Start::Live => {
                self.store.touch(&id, session.last_ms)?;
                out.authenticated += requests;
            }
            Start::New | Start::Restart => out.authenticated += requests,
        }
        match start {
            Start::Live => Ok(Vec::new()),
            Start::Revoked => {
                out.log.push(format!(
                    "revoked bearer session {} not restarted",
                    session.uuid()
                ));
                Ok(Vec::new())
            }
            Start::New => self.login(session, out),
            Start::Restart => {
                let (_, mut ops) = self.end(id, None, Kind::Expiry, out)?;
                ops.extend(self.login(session, out)?);
                Ok(ops)
            }
        }
    }

    /// Keeps this shard within its share of `max_sessions`: evicts the
    /// longest-idle sessions other than `keep`, exactly (by index).
    fn cap(&mut self, keep: SessionId, out: &mut Outcome) -> Res<Vec<Op>, S> {
        let cap = shard_cap(self.cfg.max_sessions, self.here.shard, self.here.shards);
        let live = self.store.session_count()?;
        let mut ops = Vec::new();
        if live > cap {
            for id in self.store.longest_idle(live - cap, &keep)? {
                ops.extend(self.end(id, None, Kind::Eviction, out)?.1);
            }
        }
        Ok(ops)
    }

    /// Adds a login to its user's list; the user's oldest sessions beyond
    /// `max_sessions_per_user` are evicted.
    fn user_add(&mut self, user: UserKey, id: SessionId, login_ms: u64) -> Res<Vec<Op>, S> {
        let Some(limit) = self.cfg.max_sessions_per_user else {
            return Ok(Vec::new());
        };
        // Entries older than any session can be are over, whether or not the news came.
        let oldest = self.here.now.saturating_sub(self.cfg.max_lifetime_ms);
        self.store.users_prune(oldest)?;
        let list = self.store.user_add(&user, &id, login_ms)?;
        let extra = list.len().saturating_sub(limit as usize);
        let mut ops = Vec::new();
        for old in list.into_iter().take(extra) {
            self.store.user_remove(&user, &old)?;
            ops.push(Op::Evict { id: old });
        }
        Ok(ops)
    }

    /// Adds a session event to the feed (shard 0); a login starts the history
    /// sampling if it had stopped.
    fn event(
        &mut self,
        kind: Kind,
        at: u64,
        id: SessionId,
        (username, role): (&str, &str),
        by: Option<Actor>,
        out: &mut Outcome,
    ) -> Res<(), S> {
        let mut events = match out.events.take() {
            Some(e) => e,
            None => self.store.events()?,
        };
        events.push_for(kind, id, username, role, at, by);
        out.events = Some(events);
        if kind == Kind::Login && !self.sampling()? {
            self.store.put_meta(SAMPLING, "1")?;
            out.needs_alarm = true;
        }
        Ok(())
    }

    /// A cookie rotation: leads to the session's rotation, or, for a cookie not
    /// known yet, leaves an orphan entry that the session follows when it lands.
    fn rotate(
        &mut self,
        from: CookieHash,
        via: Vec<CookieHash>,
        to: CookieHash,
        at: u64,
        out: &mut Outcome,
    ) -> Res<Vec<Op>, S> {
        let now = self.here.now;
        match self.store.cookie(&from)? {
            Some(CookieRow::Session { id, until }) if until >= now => {
                Ok(vec![Op::RotateSession { id, via, to, at }])
            }
            Some(CookieRow::Orphan { until, .. }) if until >= now => Ok(Vec::new()),
            _ => {
                self.store
                    .put_orphan(&from, Some(to), now + ORPHAN_TTL_MS)?;
                out.needs_alarm = true;
                Ok(Vec::new())
            }
        }
    }

    /// Follows a rotation on the session (`session::rotate_cookie`, step by step
    /// through `via`), and indexes the new values; dropped aliases keep
    /// resolving for `ROTATION_GRACE_MS` only.
    fn rotate_session(
        &mut self,
        id: SessionId,
        via: &[CookieHash],
        to: CookieHash,
        at: u64,
    ) -> Res<Vec<Op>, S> {
        let Some(mut s) = self.store.session(&id)? else {
            return Ok(Vec::new());
        };
        s.last_ms = s.last_ms.max(at);
        let deadline = s.deadline(self.cfg);
        let grace = self.here.now.saturating_add(ROTATION_GRACE_MS);
        let mut dropped = Vec::new();
        for step in via.iter().chain(std::iter::once(&to)) {
            dropped.extend(
                session::rotate_cookie(&mut s.cookie, &mut s.aliases, *step)
                    .into_iter()
                    .flatten(),
            );
        }
        self.store.put_session(&s)?;
        let mut ops = vec![Op::Index {
            hash: to,
            id,
            until: deadline,
        }];
        // Values handed out between two flushes were never indexed: index them now.
        ops.extend(
            s.aliases
                .iter()
                .copied()
                .filter(|a| via.contains(a))
                .map(|hash| Op::Index {
                    hash,
                    id,
                    until: deadline,
                }),
        );
        ops.extend(dropped.into_iter().map(|hash| {
            if via.contains(&hash) {
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
            }
        }));
        Ok(ops)
    }

    /// Points a cookie at a session, unless an orphan says that cookie has already
    /// rotated on (the session follows) or logged out (the session ends).
    fn index(&mut self, hash: CookieHash, id: SessionId, until: u64) -> Res<Vec<Op>, S> {
        let now = self.here.now;
        let orphan = match self.store.cookie(&hash)? {
            Some(CookieRow::Orphan { next, until: t }) if t >= now => Some(next),
            _ => None,
        };
        match orphan {
            Some(None) => {
                self.store.delete_cookie(&hash)?;
                Ok(vec![Op::EndSession { id, hash }])
            }
            Some(Some(next)) => {
                self.store.index(&hash, &id, until)?;
                Ok(vec![Op::RotateSession {
                    id,
                    via: Vec::new(),
                    to: next,
                    at: now,
                }])
            }
            None => {
                // A cookie leads to one session: a login under a value that
                // already leads to a live session (one the app kept through
                // the login) replaces that session.
                let replaced = match self.store.cookie(&hash)? {
                    Some(CookieRow::Session { id: old, until: t }) if old != id && t >= now => {
                        Some(old)
                    }
                    _ => None,
                };
                self.store.index(&hash, &id, until)?;
                Ok(replaced
                    .map(|old| Op::EndSession { id: old, hash })
                    .into_iter()
                    .collect())
            }
        }
    }

    /// Ends session `id` here: deletes it and returns the follow-ups: its cookie
    /// entries (current, kept aliases, `extra`), its per-user entry, the event.
    fn end(
        &mut self,
        id: SessionId,
        extra: Option<CookieHash>,
        kind: Kind,
        out: &mut Outcome,
    ) -> Res<(Option<Session>, Vec<Op>), S> {
        let Some(s) = self.store.delete_session(&id)? else {
            return Ok((None, Vec::new()));
        };
        out.log
            .push(format!("{} {} ({})", kind.name(), s.name(), s.uuid()));
        let mut ops: Vec<Op> = s
            .cookies(extra.as_ref())
            .into_iter()
            .map(|hash| Op::Unindex { hash, id })
            .collect();
        if self.cfg.max_sessions_per_user.is_some() {
            ops.push(Op::UserRemove {
                user: session::user_key(&s.user_id),
                id,
            });
        }
        ops.push(Op::event(kind, &s, self.here.now));
        Ok((Some(s), ops))
    }

    /// Adds a batch's traffic: the node's anonymous count and time buckets, plus
    /// what the ops showed (cookies of live sessions are authenticated).
    fn add_traffic(&mut self, part: TrafficPart, out: &Outcome, now: u64) -> Res<(), S> {
        let delta = TrafficDelta {
            authenticated: out.authenticated,
            anonymous: part.anonymous + out.anonymous,
            buckets: part.buckets,
        };
        if delta.is_empty() {
            return Ok(());
        }
        let mut traffic = self.store.traffic()?;
        traffic.merge(&delta, now);
        self.store.put_traffic(&traffic)
    }

    /// Ends session `id` on the request of admin `by` (phase 1 of a revocation,
    /// on the session's shard); its event names `by`. With `enforce_revocation`
    /// its values are revoked here at once, so a bearer token of the session
    /// cannot start it again before phase 2 (`revoked_add` on every shard) arrives.
    pub fn revoke(&mut self, id: SessionId, by: Option<Actor>) -> Res<(RevokeReply, Outcome), S> {
        let mut out = Outcome::default();
        let (session, mut ops) = self.end(id, None, Kind::Revocation, &mut out)?;
        for op in &mut ops {
            if let Op::Event { by: who, .. } = op {
                who.clone_from(&by);
            }
        }
        if let (true, Some(s)) = (self.cfg.enforce_revocation, &session) {
            self.store.revoke(&s.cookies(None), s.deadline(self.cfg))?;
            out.needs_alarm = true;
        }
        for op in ops {
            self.apply(op, 1, &mut out)?;
        }
        self.finish(&mut out)?;
        let reply = RevokeReply {
            session,
            forward: std::mem::take(&mut out.reply.forward),
        };
        Ok((reply, out))
    }

    /// Phase 2 of a revocation (`enforce_revocation`), on every shard: the given
    /// values and those of this shard's entries that still lead to the session
    /// (recent rotations) are revoked until `until`; the entries go. Returns
    /// what it added.
    pub fn revoked_add(&mut self, q: RevokedAdd) -> Res<Vec<(CookieHash, u64)>, S> {
        let mut hashes = q.hashes;
        for h in self.store.cookies_of_session(&q.id, self.here.now)? {
            self.store.unindex(&h, &q.id)?;
            if !hashes.contains(&h) {
                hashes.push(h);
            }
        }
        self.store.revoke(&hashes, q.until)?;
        Ok(hashes.into_iter().map(|h| (h, q.until)).collect())
    }

    /// The live session behind a cookie (asked on the cookie's shard) or an id
    /// (on its own): the session, or the id to ask its shard for.
    pub fn resolve(
        &mut self,
        hash: Option<CookieHash>,
        id: Option<SessionId>,
    ) -> Res<super::wire::ResolveReply, S> {
        let id = match (id, hash) {
            (Some(id), _) => Some(id),
            (None, Some(hash)) => self.live_cookie(&hash)?,
            (None, None) => None,
        };
        Ok(match id {
            Some(id) if id.shard(self.here.shards) == self.here.shard => {
                super::wire::ResolveReply {
                    session: self.store.session(&id)?,
                    id: None,
                }
            }
            Some(id) => super::wire::ResolveReply {
                session: None,
                id: Some(id),
            },
            None => super::wire::ResolveReply::default(),
        })
    }

    /// This shard's share of a report: a superset of the active sessions (the
    /// report applies the exact rule), its traffic and what it holds.
    pub fn stats(&mut self) -> Res<StatsReply, S> {
        let since = self
            .here
            .now
            .saturating_sub(self.cfg.active_window_ms + CLOCK_SLACK_MS);
        let rows = self.store.rows()?;
        Ok(StatsReply {
            sessions: self.store.sessions_seen_since(since)?,
            traffic: self.store.traffic()?,
            stored_sessions: rows.sessions,
            stored_cookies: rows.cookies,
            stored_revoked: rows.revoked,
        })
    }

    /// The event feed and the history (kept on shard 0).
    pub fn feed(&mut self) -> Res<FeedReply, S> {
        Ok(FeedReply {
            events: self.store.events()?,
            history: self.store.history()?,
        })
    }

    /// The cookie hash key (shard 0): the stored one, or `random` stored on first use.
    pub fn secret(&mut self, random: [u8; 32]) -> Res<SecretReply, S> {
        let secret = match self.store.meta("secret")? {
            Some(s) => s,
            None => {
                let s: String = random.iter().map(|x| format!("{x:02x}")).collect();
                self.store.put_meta("secret", &s)?;
                s
            }
        };
        Ok(SecretReply { secret })
    }

    /// Removes what is over: expired sessions (candidates by index, decided by
    /// `Session::is_expired`) with their cookie entries, per-user entries and an
    /// `expiry` event; cookie entries, revocations and per-user entries past their
    /// time. Follow-ups for other shards are in `outcome.reply.forward`.
    pub fn sweep(&mut self) -> Res<Swept, S> {
        let now = self.here.now;
        let mut swept = Swept::default();
        let idle_before = now.saturating_sub(self.cfg.idle_timeout_ms);
        let login_before = now.saturating_sub(self.cfg.max_lifetime_ms);
        for s in self.store.expiry_candidates(idle_before, login_before)? {
            if s.is_expired(now, self.cfg) {
                let (_, ops) = self.end(s.id, None, Kind::Expiry, &mut swept.outcome)?;
                for op in ops {
                    self.apply(op, 1, &mut swept.outcome)?;
                }
                swept.ended += 1;
            }
        }
        self.finish(&mut swept.outcome)?;
        swept.stale_cookies = self.store.delete_cookies_before(now)?;
        swept.revocations = self.store.delete_revoked_before(now)?;
        self.store
            .forget_applied_before(now.saturating_sub(APPLIED_TTL_MS))?;
        self.store.users_prune(login_before)?;
        Ok(swept)
    }

    /// Whether the history is being sampled (from a login until a sample finds
    /// the whole ledger empty).
    pub fn sampling(&mut self) -> Res<bool, S> {
        Ok(self.store.meta(SAMPLING)?.as_deref() == Some("1"))
    }

    /// Records every shard's active sessions into this minute's peak (shard 0).
    /// `stored`: sessions the shards hold; none left stops the sampling until the
    /// next login (later minutes are zeros anyway).
    pub fn sample_history(&mut self, sessions: &[Session], stored: u64) -> Res<(), S> {
        let counts = stats::counts(sessions, self.here.now, self.cfg);
        let mut history = self.store.history()?;
        history.record(&counts, self.here.now);
        self.store.put_history(&history)?;
        if stored == 0 {
            self.store.put_meta(SAMPLING, "0")?;
        }
        Ok(())
    }

    /// When the shard's alarm should next run: the earliest moment something can
    /// be removed (or, while sampling, the next sample), but no sooner than
    /// `sweep_interval_seconds` after a sweep (`after_sweep`). `None`: nothing to do.
    pub fn next_alarm(&mut self, after_sweep: bool) -> Res<Option<u64>, S> {
        let now = self.here.now;
        let sample = self.sampling()?.then_some(now + self.cfg.sweep_interval_ms);
        let next = match (next_expiry(self.store.minima()?, self.cfg), sample) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let floor = if after_sweep {
            now + self.cfg.sweep_interval_ms
        } else {
            now + 1
        };
        Ok(next.map(|at| at.max(floor)))
    }

    /// After writes: whether the pending alarm (`existing`) must be set again. An
    /// existing alarm is never later than the earliest expiry (new rows expire no
    /// sooner than old ones, orphans aside, which only wait a little longer);
    /// while the history is sampled it must be at most a sweep interval away.
    pub fn alarm_stale(&mut self, existing: Option<u64>) -> Res<bool, S> {
        Ok(match existing {
            None => true,
            Some(at) => at > self.here.now + self.cfg.sweep_interval_ms && self.sampling()?,
        })
    }
}

/// The earliest time anything in a store can be removed: a session idle past the
/// timeout or past its lifetime, a cookie entry or a revocation past its time.
/// Expiry is strict (`Session::is_expired`), so one millisecond after.
pub fn next_expiry(m: Minima, cfg: &Config) -> Option<u64> {
    [
        m.last_ms.map(|t| t.saturating_add(cfg.idle_timeout_ms)),
        m.login_ms.map(|t| t.saturating_add(cfg.max_lifetime_ms)),
        m.cookie_until,
        m.revoked_until,
        m.applied_at.map(|t| t.saturating_add(APPLIED_TTL_MS)),
    ]
    .into_iter()
    .flatten()
    .min()
    .map(|t| t + 1)
}

/// Where a sequenced batch stands against the last one a shard applied for its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// Not seen yet (or not sequenced): apply it.
    New,
    /// The last one again (its reply was lost): answer as then, apply nothing.
    Replay,
    /// Older than the last one applied (this number): refuse it.
    Stale(u64),
}

/// The rule for `Batch::seq` (0: not sequenced).
pub fn sequence(last: Option<u64>, seq: u64) -> Sequence {
    match last {
        Some(last) if seq > 0 && seq == last => Sequence::Replay,
        Some(last) if seq > 0 && seq < last => Sequence::Stale(last),
        _ => Sequence::New,
    }
}

/// The outcome of a replayed batch: the reply it had, nothing else.
fn replay(last: Option<Applied>) -> Outcome {
    let mut out = Outcome::default();
    match last.map(|a| serde_json::from_str(&a.reply)) {
        Some(Ok(reply)) => out.reply = reply,
        _ => out
            .log
            .push("a replayed batch's reply was unreadable; answered empty".into()),
    }
    out.log
        .push("replayed a batch already applied: nothing counted twice".into());
    out
}

/// A touch of a cookie that leads to no live session: the shared rule
/// (`activity::settle`) sends it once more later, then counts it anonymous.
fn unknown_touch(hash: CookieHash, last_ms: u64, requests: u64, retry: bool, out: &mut Outcome) {
    let pending = Pending {
        last_ms,
        requests,
        retried: retry,
    };
    // The collector asks nobody: a node holds a touch it asks the app about.
    match activity::settle(pending, false, activity::Asking::No) {
        Settled::Retry(p) => out.reply.missing.push(Op::Touch {
            hash,
            last_ms: p.last_ms,
            requests: p.requests,
            retry: true,
        }),
        Settled::Anonymous(n) | Settled::Authenticated(n) => out.anonymous += n,
    }
}
