//! The session table kept in a host's shared key/value store (Envoy shared data).
//!
//! The proxy-wasm ABI can neither list nor delete keys, and Envoy never frees one,
//! so the table lives in fixed sets of shard keys:
//!
//! - `headcount.v2.seen.{0..64}`: one fixed-width activity record per live session
//!   (session id, login time, last activity), sorted by id, sharded by session id.
//!   A session is live exactly while its record is here. A flush of buffered
//!   activity rewrites only these small records in place: no decoding, no strings.
//! - `headcount.v2.sessions.{0..512}`: who each session is (ids, names, role, IP,
//!   packed user agent, cookie hashes), a postcard list sharded by session id. These
//!   change only on login, logout, rotation and expiry, so a reader can keep them
//!   decoded and re-decode a shard only when its CAS token changed.
//! - `headcount.v2.cookies.{0..512}`: cookie hash -> (session id, valid until),
//!   fixed-width records sorted by hash, sharded by cookie hash: resolving a cookie
//!   is one read and a binary search, with nothing decoded.
//!
//! Memory follows the live sessions, never the sessions ever seen. Every write is
//! a CAS read-modify-write, retried on mismatch, so concurrent VMs lose no update.
//! A session starts with its activity record (then its details, then its cookie
//! entries) and ends with it: whoever removes the activity record owns the ending.
//! A rotated cookie is one more index entry pointing at the same session: any
//! value the app handed out recently resolves in two reads, however fast it rotates.

use crate::config::Config;
use crate::ids::Id16;
use crate::record::{self, MAX_RETRIES};
use crate::session::{self, CookieHash, Session, SessionId};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

mod layout;
pub use layout::*;

/// How long a cookie value rotated away (beyond the newest `MAX_ALIASES`) keeps
/// resolving: requests still in flight, or buffered activity not yet flushed.
pub const ROTATION_GRACE_MS: u64 = 30_000;

/// A session record without an activity record is being inserted (or its removal
/// failed half-way); the sweep removes it once it is this old.
pub const ORPHAN_GRACE_MS: u64 = 60_000;

/// What the table needs from a host: a shared byte store with compare-and-swap.
pub trait SharedStore {
    /// The value and its CAS token, or `None` if the key was never written.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes `value` if the key's CAS is still `cas`; `None` writes only if the
    /// key does not exist yet.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

impl<T: SharedStore + ?Sized> SharedStore for &T {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        (**self).get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        (**self).set(key, value, cas)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else wrote the key since we read it.
    CasMismatch,
    /// Any other host failure, with the host's own words.
    Host(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::CasMismatch => write!(f, "shared data CAS mismatch"),
            StoreError::Host(m) => write!(f, "shared data: {m}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    Store(StoreError),
    /// Too many CAS mismatches in a row on one key.
    Contended(String),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::Store(e) => write!(f, "{e}"),
            TableError::Contended(k) => {
                write!(f, "gave up on `{k}` after {MAX_RETRIES} CAS retries")
            }
        }
    }
}

impl From<StoreError> for TableError {
    fn from(e: StoreError) -> Self {
        TableError::Store(e)
    }
}

/// CAS read-modify-write of raw bytes. `f` returns whether it changed anything;
/// it may run several times, so it must only depend on its argument.
fn update_raw<R>(
    store: &impl SharedStore,
    key: &str,
    mut f: impl FnMut(&mut Vec<u8>) -> (bool, R),
) -> Result<R, TableError> {
    for _ in 0..MAX_RETRIES {
        let (mut value, cas) = match store.get(key)? {
            Some((v, cas)) => (v, Some(cas)),
            None => (Vec::new(), None),
        };
        let (changed, out) = f(&mut value);
        if !changed {
            return Ok(out);
        }
        match store.set(key, &value, cas) {
            Ok(()) => return Ok(out),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(TableError::Contended(key.to_string()))
}

/// Session table operations over any `SharedStore`.
pub struct SessionTable<'a, S: SharedStore> {
    store: &'a S,
}

impl<'a, S: SharedStore> SessionTable<'a, S> {
    pub fn new(store: &'a S) -> Self {
        Self { store }
    }

    fn read<T: DeserializeOwned + Default>(
        &self,
        key: &str,
    ) -> Result<(T, Option<u32>), TableError> {
        Ok(record::load(self.store, key)?)
    }

    fn update<T, R>(&self, key: &str, f: impl FnMut(&mut T) -> (bool, R)) -> Result<R, TableError>
    where
        T: DeserializeOwned + Serialize + Default,
    {
        record::update(self.store, key, f)
    }

    /// CAS read-modify-write of details shard `index`; a write that changed it
    /// then bumps the shard's generation (after the write, so a reader that sees
    /// the new generation reads at least the new details).
    fn update_details<R>(
        &self,
        index: usize,
        mut f: impl FnMut(&mut SessionShard) -> (bool, R),
    ) -> Result<R, TableError> {
        let mut changed = false;
        let out = self.update::<SessionShard, _>(&session_key(index), |shard| {
            let (c, r) = f(shard);
            changed = c;
            (c, r)
        })?;
        if changed {
            update_raw(self.store, GENERATIONS_KEY, |bytes| {
                if bytes.len() != GENERATIONS_LEN {
                    // Missing or malformed: rebuilt under a new epoch, so no reader
                    // mistakes a restarted count for one it has seen.
                    let epoch = generation_at(bytes).wrapping_add(1);
                    *bytes = vec![0; GENERATIONS_LEN];
                    bytes.splice(0..4, epoch.to_le_bytes());
                }
                if let Some(g) = bytes.get_mut(4 + index * 4..8 + index * 4) {
                    let next = generation_at(g).wrapping_add(1);
                    g.copy_from_slice(&next.to_le_bytes());
                }
                (true, ())
            })?;
        }
        Ok(out)
    }

    /// An activity shard's bytes (empty if never written).
    pub fn seen_bytes(&self, index: usize) -> Result<Vec<u8>, TableError> {
        Ok(self
            .store
            .get(&seen_key(index))?
            .map(|(v, _)| v)
            .unwrap_or_default())
    }

    /// A live session's activity record.
    pub fn activity(&self, id: &SessionId) -> Result<Option<Activity>, TableError> {
        let bytes = self.seen_bytes(seen_shard_of(id))?;
        Ok(Seen::new(&bytes).get(id))
    }

    fn cookie_bytes(&self, index: usize) -> Result<Vec<u8>, TableError> {
        Ok(self
            .store
            .get(&cookie_key(index))?
            .map(|(v, _)| v)
            .unwrap_or_default())
    }

    fn cookie_ref(&self, hash: &CookieHash, now: u64) -> Result<Option<CookieRef>, TableError> {
        let bytes = self.cookie_bytes(shard_of(hash))?;
        Ok(Cookies::new(&bytes).get(hash).filter(|r| r.until >= now))
    }

    fn record_by_id(&self, id: &SessionId) -> Result<Option<Record>, TableError> {
        let (shard, _) = self.read::<SessionShard>(&session_key(shard_of(id)))?;
        Ok(shard.into_iter().find(|s| s.id == *id))
    }

    /// A live session by id.
    pub fn session_by_id(&self, id: &SessionId) -> Result<Option<Session>, TableError> {
        let Some(a) = self.activity(id)? else {
            return Ok(None);
        };
        Ok(self.record_by_id(id)?.map(|r| r.into_session(a.last_ms)))
    }

    /// The live session a cookie hash leads to (current value or a recent rotation).
    pub fn resolve(&self, hash: &CookieHash, now: u64) -> Result<Option<Session>, TableError> {
        match self.cookie_ref(hash, now)? {
            Some(r) => self.session_by_id(&r.session),
            None => Ok(None),
        }
    }

    /// Points `hashes` at `session` until `until` (adds or replaces entries).
    fn index(
        &self,
        hashes: &[CookieHash],
        session: SessionId,
        until: u64,
    ) -> Result<(), TableError> {
        let entry = CookieRef { session, until };
        for (index, group) in group_by_shard(hashes) {
            update_raw(self.store, &cookie_key(index), |bytes| {
                for h in &group {
                    fixed_put(bytes, cookie_record(h, &entry));
                }
                (true, ())
            })?;
        }
        Ok(())
    }

    /// Removes the index entries of `hashes` that point at `session`; with `until`,
    /// shortens them to that time instead.
    fn unindex(
        &self,
        hashes: &[CookieHash],
        session: SessionId,
        until: Option<u64>,
    ) -> Result<(), TableError> {
        for (index, group) in group_by_shard(hashes) {
            update_raw(self.store, &cookie_key(index), |bytes| {
                let mut changed = false;
                for h in &group {
                    let Some(r) = Cookies::new(bytes).get(h).filter(|r| r.session == session)
                    else {
                        continue;
                    };
                    match until {
                        None => {
                            fixed_take::<COOKIE_LEN>(bytes, h);
                            changed = true;
                        }
                        Some(t) if r.until > t => {
                            fixed_put(bytes, cookie_record(h, &CookieRef { until: t, ..r }));
                            changed = true;
                        }
                        Some(_) => {}
                    }
                }
                (changed, ())
            })?;
        }
        Ok(())
    }

    /// Records a new login under its cookie hash: its activity record, then its
    /// details, then its cookie entry (an index entry never points at nothing).
    /// Returns the sessions it evicted to stay within `max_sessions` and
    /// `max_sessions_per_user`.
    pub fn insert(&self, session: Session, cfg: &Config) -> Result<Vec<Session>, TableError> {
        let (id, cookie, until) = (session.id, session.cookie, session.deadline(cfg));
        let activity = Activity {
            id,
            login_ms: session.login_ms,
            last_ms: session.last_ms,
        };
        let added = update_raw(self.store, &seen_key(seen_shard_of(&id)), |bytes| {
            let fresh = Seen::new(bytes).get(&id).is_none();
            seen_put(bytes, &activity);
            (true, fresh)
        })?;
        let record = Record::of(&session);
        self.update_details(shard_of(&id), |shard| {
            shard.retain(|s| s.id != id);
            shard.push(record.clone());
            (true, ())
        })?;
        self.index(&[cookie], id, until)?;
        let mut evicted = Vec::new();
        if let Some(limit) = cfg.max_sessions_per_user {
            let older = self.user_index_add(&session, limit)?;
            for old in older {
                evicted.extend(self.remove_by_id(&old, cfg)?);
            }
        }
        let live = if added {
            self.count_add(1)?
        } else {
            self.live_count()?
        };
        if live > cfg.max_sessions {
            evicted.extend(self.evict(live - cfg.max_sessions, &id, cfg)?);
        }
        Ok(evicted)
    }

    /// Live sessions as counted on every insert and removal.
    pub fn live_count(&self) -> Result<u64, TableError> {
        Ok(record::load::<u64>(self.store, COUNT_KEY)?.0)
    }

    fn count_add(&self, delta: i64) -> Result<u64, TableError> {
        self.update::<u64, _>(COUNT_KEY, |n| {
            *n = n.saturating_add_signed(delta);
            (delta != 0, *n)
        })
    }

    /// Evicts the longest-idle sessions (about `n`) among those in the activity
    /// shard after `keep`'s own, until the live count is back at the cap (an
    /// approximate LRU, as Redis does: about 1/64 of the sessions): exact LRU would
    /// read every shard on every login at the cap.
    fn evict(&self, n: u64, keep: &SessionId, cfg: &Config) -> Result<Vec<Session>, TableError> {
        let start = seen_shard_of(keep);
        let mut candidates: Vec<(SessionId, u64)> = Vec::new();
        let want = usize::try_from(n).unwrap_or(usize::MAX);
        let read = |range: std::ops::Range<usize>,
                    into: &mut Vec<(SessionId, u64)>|
         -> Result<(), TableError> {
            for i in range {
                let bytes = self.seen_bytes((start + i) % SEEN_SHARDS)?;
                into.extend(
                    Seen::new(&bytes)
                        .iter()
                        .filter(|a| a.id != *keep)
                        .map(|a| (a.id, a.last_ms)),
                );
            }
            Ok(())
        };
        read(0..1, &mut candidates)?;
        // Too few sessions in the sample (few sessions, or a small cap): read all.
        if candidates.len() < want {
            read(1..SEEN_SHARDS, &mut candidates)?;
        }
        candidates.sort_by_key(|(_, last)| *last);
        let mut evicted = Vec::new();
        for (id, _) in candidates {
            // Other workers evict at the same time: stop once the count is back
            // at the cap, and skip a candidate someone else already removed, so
            // concurrent logins neither over- nor under-evict.
            if self.live_count()? <= cfg.max_sessions {
                break;
            }
            evicted.extend(self.remove_by_id(&id, cfg)?);
        }
        Ok(evicted)
    }

    /// Ends a session by id on an admin's request. With `enforce_revocation`,
    /// every cookie value known to lead to it (current, kept and recent rotations)
    /// is remembered as revoked until the session would have ended anyway.
    pub fn revoke(
        &self,
        id: &SessionId,
        now: u64,
        cfg: &Config,
    ) -> Result<Option<Session>, TableError> {
        let mut hashes = Vec::new();
        if cfg.enforce_revocation {
            for index in 0..SHARDS {
                let bytes = self.cookie_bytes(index)?;
                hashes.extend(
                    Cookies::new(&bytes)
                        .iter()
                        .filter(|(_, r)| r.session == *id && r.until >= now)
                        .map(|(h, _)| h),
                );
            }
        }
        let Some(session) = self.remove_by_id(id, cfg)? else {
            return Ok(None);
        };
        if cfg.enforce_revocation {
            hashes.extend(session.cookies(None));
            let until = session.deadline(cfg);
            record::update(self.store, REVOKED_KEY, |r: &mut Vec<(CookieHash, u64)>| {
                r.retain(|(h, t)| *t >= now && !hashes.contains(h));
                r.extend(hashes.iter().map(|h| (*h, until)));
                (true, ())
            })?;
        }
        Ok(Some(session))
    }

    /// Whether a cookie value belongs to a revoked session (one small read).
    pub fn is_revoked(&self, hash: &CookieHash, now: u64) -> Result<bool, TableError> {
        let (revoked, _) = self.read::<Vec<(CookieHash, u64)>>(REVOKED_KEY)?;
        Ok(revoked.iter().any(|(h, until)| h == hash && *until >= now))
    }

    /// Removes one session by id and everything that points at it.
    pub fn remove_by_id(
        &self,
        id: &SessionId,
        cfg: &Config,
    ) -> Result<Option<Session>, TableError> {
        self.remove(id, None, cfg)
    }

    /// Ends a session: its activity record first (whoever takes it owns the
    /// ending, so it is reported once), then its details and cookie entries.
    fn remove(
        &self,
        id: &SessionId,
        extra: Option<&CookieHash>,
        cfg: &Config,
    ) -> Result<Option<Session>, TableError> {
        let taken = update_raw(self.store, &seen_key(seen_shard_of(id)), |bytes| {
            let a = seen_take(bytes, id);
            (a.is_some(), a)
        })?;
        let Some(activity) = taken else {
            return Ok(None);
        };
        self.count_add(-1)?;
        let record = self.update_details(shard_of(id), |shard| {
            match shard.iter().position(|s| s.id == *id) {
                Some(pos) => (true, Some(shard.remove(pos))),
                None => (false, None),
            }
        })?;
        let Some(record) = record else {
            return Ok(None);
        };
        let session = record.into_session(activity.last_ms);
        self.forget(std::slice::from_ref(&session), extra, cfg)?;
        Ok(Some(session))
    }

    /// After sessions left the session shards: their cookie entries and the
    /// per-user index.
    fn forget(
        &self,
        gone: &[Session],
        extra: Option<&CookieHash>,
        cfg: &Config,
    ) -> Result<(), TableError> {
        for s in gone {
            self.unindex(&s.cookies(extra), s.id, None)?;
            if cfg.max_sessions_per_user.is_some() {
                self.user_index_remove(s)?;
            }
        }
        Ok(())
    }

    /// Adds `s` to its user's list; returns the ids of that user's oldest sessions
    /// beyond `limit` (to be ended).
    fn user_index_add(&self, s: &Session, limit: u32) -> Result<Vec<SessionId>, TableError> {
        let user = session::user_key(&s.user_id);
        self.update::<UserShard, _>(&user_key(shard_of(&user)), |shard| {
            if !shard.iter().any(|(u, _)| *u == user) {
                shard.push((user, Vec::new()));
            }
            let Some((_, list)) = shard.iter_mut().find(|(u, _)| *u == user) else {
                return (false, Vec::new());
            };
            list.retain(|(id, _)| *id != s.id);
            list.push((s.id, s.login_ms));
            list.sort_by_key(|(_, login)| *login);
            let extra = list.len().saturating_sub(limit as usize);
            let older: Vec<SessionId> = list.drain(..extra).map(|(id, _)| id).collect();
            (true, older)
        })
    }

    fn user_index_remove(&self, s: &Session) -> Result<(), TableError> {
        let user = session::user_key(&s.user_id);
        self.update::<UserShard, _>(&user_key(shard_of(&user)), |shard| {
            let before: usize = shard.iter().map(|(_, l)| l.len()).sum();
            for (_, list) in shard.iter_mut().filter(|(u, _)| *u == user) {
                list.retain(|(id, _)| *id != s.id);
            }
            shard.retain(|(_, l)| !l.is_empty());
            let after: usize = shard.iter().map(|(_, l)| l.len()).sum();
            (after != before, ())
        })
    }

    /// Marks the sessions behind `batch` (hash, time seen) as seen: one read per
    /// cookie shard and one in-place write per activity shard involved. Returns, per
    /// batch entry, whether it led to a live session. Sorting by shard number does
    /// the grouping (lookups inside a shard are binary searches): no maps, nothing
    /// decoded.
    pub fn touch(&self, batch: &[(CookieHash, u64)], now: u64) -> Result<Vec<bool>, TableError> {
        // (cookie shard, position in the batch): plain integers sort fast.
        let mut order: Vec<(usize, usize)> = batch
            .iter()
            .enumerate()
            .map(|(i, (h, _))| (shard_of(h), i))
            .collect();
        order.sort_unstable();
        // (activity shard, session id, time, position in the batch)
        let mut resolved: Vec<(usize, SessionId, u64, usize)> = Vec::with_capacity(batch.len());
        let mut current: Option<(usize, Vec<u8>)> = None;
        for (index, i) in order {
            let Some((h, t)) = batch.get(i) else {
                continue;
            };
            if current.as_ref().map(|(c, _)| *c) != Some(index) {
                current = Some((index, self.cookie_bytes(index)?));
            }
            let bytes = current.as_ref().map_or(&[][..], |(_, b)| b.as_slice());
            if let Some(r) = Cookies::new(bytes).get(h).filter(|r| r.until >= now) {
                resolved.push((seen_shard_of(&r.session), r.session, *t, i));
            }
        }
        resolved.sort_unstable_by_key(|(shard, _, _, _)| *shard);
        let mut hit = vec![false; batch.len()];
        for group in resolved.chunk_by(|a, b| a.0 == b.0) {
            let Some(index) = group.first().map(|g| g.0) else {
                continue;
            };
            let hits = update_raw(self.store, &seen_key(index), |bytes| {
                let mut changed = false;
                let mut hits = Vec::with_capacity(group.len());
                for (_, id, t, i) in group {
                    let (exists, moved) = seen_touch(bytes, id, *t);
                    if exists {
                        hits.push(*i);
                    }
                    changed |= moved;
                }
                (changed, hits)
            })?;
            for i in hits {
                if let Some(f) = hit.get_mut(i) {
                    *f = true;
                }
            }
        }
        Ok(hit)
    }

    /// Names session `id` as the app vouched for it (`whoami`): its user id,
    /// name and role. With `max_sessions_per_user`, the session moves to its new
    /// user's list, which may evict that user's oldest sessions (returned).
    /// `Ok(None)`: the session is gone (ended while the app was asked).
    pub fn identify(
        &self,
        id: &SessionId,
        who: &(String, String, String),
        cfg: &Config,
    ) -> Result<Option<(Session, Vec<Session>)>, TableError> {
        let Some(activity) = self.activity(id)? else {
            return Ok(None);
        };
        let (user_id, username, role) = who;
        let before = self.update_details(shard_of(id), |shard| {
            let Some(r) = shard.iter_mut().find(|r| r.id == *id) else {
                return (false, None);
            };
            let before = r.clone();
            r.user_id.clone_from(user_id);
            r.username.clone_from(username);
            r.role.clone_from(role);
            (*r != before, Some(before))
        })?;
        let Some(before) = before else {
            return Ok(None);
        };
        let old = before.into_session(activity.last_ms);
        let mut now = old.clone();
        now.user_id.clone_from(user_id);
        now.username.clone_from(username);
        now.role.clone_from(role);
        let mut evicted = Vec::new();
        if let Some(limit) = cfg
            .max_sessions_per_user
            .filter(|_| old.user_id != *user_id)
        {
            self.user_index_remove(&old)?;
            for gone in self.user_index_add(&now, limit)? {
                evicted.extend(self.remove_by_id(&gone, cfg)?);
            }
        }
        Ok(Some((now, evicted)))
    }

    /// Follows a cookie rotation `from` -> `to`. Returns the session if `from` was known.
    pub fn rotate(
        &self,
        from: &CookieHash,
        to: &CookieHash,
        now: u64,
        cfg: &Config,
    ) -> Result<Option<Session>, TableError> {
        let Some(r) = self.cookie_ref(from, now)? else {
            return Ok(None);
        };
        // Index the new value first: from here on it resolves.
        let deadline = match self.activity(&r.session)? {
            Some(a) => a.login_ms.saturating_add(cfg.max_lifetime_ms),
            None => return Ok(None),
        };
        self.index(&[*to], r.session, deadline)?;
        let (record, dropped) = self.update_details(shard_of(&r.session), |shard| {
            let Some(s) = shard.iter_mut().find(|s| s.id == r.session) else {
                return (false, (None, Vec::new()));
            };
            match session::rotate_cookie(&mut s.cookie, &mut s.aliases, *to) {
                None => (false, (Some(s.clone()), Vec::new())),
                Some(dropped) => (true, (Some(s.clone()), dropped)),
            }
        })?;
        // The rotating request is activity.
        let activity = update_raw(self.store, &seen_key(seen_shard_of(&r.session)), |bytes| {
            let (_, moved) = seen_touch(bytes, &r.session, now);
            (moved, Seen::new(bytes).get(&r.session))
        })?;
        match (record, activity) {
            (Some(s), Some(a)) => {
                // Old values beyond the newest few keep working for a grace period only.
                self.unindex(&dropped, s.id, Some(now.saturating_add(ROTATION_GRACE_MS)))?;
                Ok(Some(s.into_session(a.last_ms)))
            }
            // Ended while we rotated: take the new entry back out.
            _ => {
                self.unindex(&[*to], r.session, None)?;
                Ok(None)
            }
        }
    }

    /// Ends the session behind `hash` (logout): removes it and its cookie entries.
    pub fn end(
        &self,
        hash: &CookieHash,
        now: u64,
        cfg: &Config,
    ) -> Result<Option<Session>, TableError> {
        let Some(r) = self.cookie_ref(hash, now)? else {
            return Ok(None);
        };
        self.remove(&r.session, Some(hash), cfg)
    }

    /// Removes expired sessions (all of them: the activity shards are small and
    /// fixed-width), then cleans the session and cookie shards in `range` of
    /// stale cookie entries and of orphaned details (an insert or removal that
    /// failed half-way). Returns the sessions it ended; only one caller removes a
    /// given session (CAS), so each expiry is reported once.
    pub fn sweep(
        &self,
        range: std::ops::Range<usize>,
        now: u64,
        cfg: &Config,
    ) -> Result<Vec<Session>, TableError> {
        let mut expired: BTreeMap<usize, BTreeMap<SessionId, u64>> = BTreeMap::new();
        let mut shards: Vec<Vec<u8>> = Vec::with_capacity(SEEN_SHARDS);
        let mut taken = 0i64;
        for index in 0..SEEN_SHARDS {
            let (gone, left) = update_raw(self.store, &seen_key(index), |bytes| {
                let gone: Vec<Activity> = Seen::new(bytes)
                    .iter()
                    .filter(|a| session::expired(a.login_ms, a.last_ms, now, cfg))
                    .collect();
                for a in &gone {
                    seen_take(bytes, &a.id);
                }
                (!gone.is_empty(), (gone, bytes.clone()))
            })?;
            shards.push(left);
            taken += i64::try_from(gone.len()).unwrap_or(0);
            for a in gone {
                expired
                    .entry(shard_of(&a.id))
                    .or_default()
                    .insert(a.id, a.last_ms);
            }
        }
        if taken > 0 {
            self.count_add(-taken)?;
        }
        let mut ended = Vec::new();
        for (index, ids) in &expired {
            let gone = self.update_details(*index, |shard| {
                let (gone, keep): (Vec<Record>, Vec<Record>) = std::mem::take(shard)
                    .into_iter()
                    .partition(|s| ids.contains_key(&s.id));
                *shard = keep;
                (!gone.is_empty(), gone)
            })?;
            ended.extend(gone.into_iter().map(|r| {
                let last = ids.get(&r.id).copied().unwrap_or(r.login_ms);
                r.into_session(last)
            }));
        }
        self.forget(&ended, None, cfg)?;
        let mut orphans = Vec::new();
        for index in range.clone() {
            let seen = shards
                .get(index % SEEN_SHARDS)
                .map(|b| Seen::new(b))
                .unwrap_or(Seen::new(&[]));
            let gone = self.update_details(index, |shard| {
                let (gone, keep): (Vec<Record>, Vec<Record>) =
                    std::mem::take(shard).into_iter().partition(|s| {
                        seen.get(&s.id).is_none()
                            && now.saturating_sub(s.login_ms) > ORPHAN_GRACE_MS
                    });
                *shard = keep;
                (!gone.is_empty(), gone)
            })?;
            orphans.extend(gone.into_iter().map(|r| r.into_session(0)));
        }
        self.forget(&orphans, None, cfg)?;
        record::update(self.store, REVOKED_KEY, |r: &mut Vec<(CookieHash, u64)>| {
            let before = r.len();
            r.retain(|(_, until)| *until >= now);
            (r.len() != before, ())
        })?;
        for index in range {
            update_raw(self.store, &cookie_key(index), |bytes| {
                let gone = fixed_retain::<COOKIE_LEN>(bytes, |r| u64_at(r, 32) >= now);
                (gone, ())
            })?;
        }
        Ok(ended)
    }

    /// Every live session, read shard by shard.
    pub fn sessions(&self) -> Result<Vec<Session>, TableError> {
        let mut out = Vec::new();
        for a in 0..SEEN_SHARDS {
            let bytes = self.seen_bytes(a)?;
            let seen = Seen::new(&bytes);
            for index in (a..SHARDS).step_by(SEEN_SHARDS) {
                let (shard, _) = self.read::<SessionShard>(&session_key(index))?;
                out.extend(
                    shard
                        .into_iter()
                        .filter_map(|r| seen.get(&r.id).map(|x| r.into_session(x.last_ms))),
                );
            }
        }
        Ok(out)
    }

    /// Bytes of shared data the table holds (keys and values), for memory checks.
    pub fn footprint(&self) -> Result<usize, TableError> {
        let mut total = 0;
        let keys = (0..SHARDS)
            .flat_map(|i| [session_key(i), cookie_key(i)])
            .chain((0..SEEN_SHARDS).map(seen_key))
            .chain([GENERATIONS_KEY.to_string()]);
        for key in keys {
            if let Some((bytes, _)) = self.store.get(&key)? {
                total += bytes.len() + key.len();
            }
        }
        Ok(total)
    }
}

/// Items by shard, as sets: lookups inside a shard stay O(log n) for big batches.
fn group_by_shard<T: Id16 + Copy + Ord>(items: &[T]) -> BTreeMap<usize, BTreeSet<T>> {
    let mut groups: BTreeMap<usize, BTreeSet<T>> = BTreeMap::new();
    for item in items {
        groups.entry(shard_of(item)).or_default().insert(*item);
    }
    groups
}

#[cfg(test)]
mod tests;
