//! The session table kept in a host's shared key/value store (Envoy shared data).
//!
//! The proxy-wasm ABI can neither list nor delete keys, and Envoy never frees one,
//! so the table lives in two fixed sets of shard keys, each value a postcard list:
//!
//! - `headcount.v1.sessions.{i}`: the sessions, sharded by session id;
//! - `headcount.v1.cookies.{i}`: cookie hash -> session id, sharded by cookie hash.
//!
//! Memory follows the live sessions, never the sessions ever seen. Every write is
//! a CAS read-modify-write, retried on mismatch, so concurrent VMs lose no update.
//! A rotated cookie is one more index entry pointing at the same session: any
//! value the app handed out recently resolves in two reads, however fast it rotates.

use crate::config::Config;
use crate::record::{self, MAX_RETRIES};
use crate::session::{CookieHash, Session, SessionRef, MAX_ALIASES};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Shard keys per kind. More shards make each write smaller and the stats read
/// longer; see README "Performance".
pub const SHARDS: usize = 512;

/// How long a cookie value rotated away (beyond the newest `MAX_ALIASES`) keeps
/// resolving: requests still in flight, or buffered activity not yet flushed.
pub const ROTATION_GRACE_MS: u64 = 30_000;

/// What the table needs from a host: a shared byte store with compare-and-swap.
pub trait SharedStore {
    /// The value and its CAS token, or `None` if the key was never written.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes `value` if the key's CAS is still `cas`; `None` writes only if the
    /// key does not exist yet.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
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

/// A cookie value's index entry: which session it leads to, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CookieRef {
    pub session: [u8; 16],
    pub until: u64,
}

type CookieShard = Vec<(CookieHash, CookieRef)>;
type SessionShard = Vec<Session>;

fn shard_of(bytes: &[u8; 16]) -> usize {
    usize::from(u16::from_le_bytes([bytes[0], bytes[1]])) % SHARDS
}

pub fn session_key(index: usize) -> String {
    format!("headcount.v1.sessions.{index}")
}

pub fn cookie_key(index: usize) -> String {
    format!("headcount.v1.cookies.{index}")
}

pub fn user_key(index: usize) -> String {
    format!("headcount.v1.users.{index}")
}

/// Cookie hashes of revoked sessions with the time they may be forgotten.
pub const REVOKED_KEY: &str = "headcount.v1.revoked";

/// The live-session count (a postcard `u64`).
pub const COUNT_KEY: &str = "headcount.v1.count";

/// Session shards sampled for the longest-idle session when over `max_sessions`.
const EVICTION_SAMPLE: usize = 8;

/// Per-user session lists (only kept when `max_sessions_per_user` is set).
type UserShard = Vec<([u8; 16], Vec<([u8; 16], u64)>)>;

/// Users are indexed by a plain hash of their id: ids are not secrets.
fn user_hash(user_id: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(user_id.as_bytes());
    let mut out = [0u8; 16];
    out.iter_mut().zip(d.iter()).for_each(|(o, b)| *o = *b);
    out
}

/// How a touch batch went: which hashes led to a live session.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TouchOutcome {
    pub found: Vec<CookieHash>,
    pub missing: Vec<CookieHash>,
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

    fn cookie_ref(&self, hash: &CookieHash, now: u64) -> Result<Option<CookieRef>, TableError> {
        let (shard, _) = self.read::<CookieShard>(&cookie_key(shard_of(hash)))?;
        Ok(shard
            .into_iter()
            .find(|(h, r)| h == hash && r.until >= now)
            .map(|(_, r)| r))
    }

    fn session_by_id(&self, id: &[u8; 16]) -> Result<Option<Session>, TableError> {
        let (shard, _) = self.read::<SessionShard>(&session_key(shard_of(id)))?;
        Ok(shard.into_iter().find(|s| s.id == *id))
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
        session: [u8; 16],
        until: u64,
    ) -> Result<(), TableError> {
        for (index, group) in group_by_shard(hashes) {
            self.update::<CookieShard, _>(&cookie_key(index), |shard| {
                shard.retain(|(h, _)| !group.contains(h));
                shard.extend(group.iter().map(|h| (*h, CookieRef { session, until })));
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
        session: [u8; 16],
        until: Option<u64>,
    ) -> Result<(), TableError> {
        for (index, group) in group_by_shard(hashes) {
            self.update::<CookieShard, _>(&cookie_key(index), |shard| {
                let before = shard.clone();
                match until {
                    None => shard.retain(|(h, r)| !(group.contains(h) && r.session == session)),
                    Some(t) => shard
                        .iter_mut()
                        .filter(|(h, r)| group.contains(h) && r.session == session)
                        .for_each(|(_, r)| r.until = r.until.min(t)),
                }
                (*shard != before, ())
            })?;
        }
        Ok(())
    }

    /// Records a new login under its cookie hash (the session first, so an index
    /// entry never points at nothing). Returns the sessions it evicted to stay
    /// within `max_sessions` and `max_sessions_per_user`.
    pub fn insert(&self, session: Session, cfg: &Config) -> Result<Vec<Session>, TableError> {
        let (id, cookie, until) = (session.id, session.cookie, session.deadline(cfg));
        let added = self.update::<SessionShard, _>(&session_key(shard_of(&id)), |shard| {
            let before = shard.len();
            shard.retain(|s| s.id != id);
            shard.push(session.clone());
            (true, shard.len() > before)
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

    /// Evicts the longest-idle sessions (about `n`) among those in `EVICTION_SAMPLE`
    /// shards after `keep`'s own, until the live count is back at the cap (an
    /// approximate LRU, as Redis does): exact LRU would read every shard on every
    /// login at the cap.
    fn evict(&self, n: u64, keep: &[u8; 16], cfg: &Config) -> Result<Vec<Session>, TableError> {
        let start = shard_of(keep);
        let mut candidates: Vec<([u8; 16], u64)> = Vec::new();
        let want = usize::try_from(n).unwrap_or(usize::MAX);
        let read = |range: std::ops::Range<usize>,
                    into: &mut Vec<([u8; 16], u64)>|
         -> Result<(), TableError> {
            for i in range {
                let (shard, _) = self.read::<SessionShard>(&session_key((start + i) % SHARDS))?;
                into.extend(
                    shard
                        .iter()
                        .filter(|s| s.id != *keep)
                        .map(|s| (s.id, s.last_ms)),
                );
            }
            Ok(())
        };
        read(0..EVICTION_SAMPLE, &mut candidates)?;
        // Too few sessions in the sample (few sessions, or a small cap): read all.
        if candidates.len() < want {
            read(EVICTION_SAMPLE..SHARDS, &mut candidates)?;
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
        id: &[u8; 16],
        now: u64,
        cfg: &Config,
    ) -> Result<Option<Session>, TableError> {
        let mut hashes = Vec::new();
        if cfg.enforce_revocation {
            for index in 0..SHARDS {
                let (shard, _) = self.read::<CookieShard>(&cookie_key(index))?;
                hashes.extend(
                    shard
                        .iter()
                        .filter(|(_, r)| r.session == *id && r.until >= now)
                        .map(|(h, _)| *h),
                );
            }
        }
        let Some(session) = self.remove_by_id(id, cfg)? else {
            return Ok(None);
        };
        if cfg.enforce_revocation {
            hashes.extend(cookies_of(&session, None));
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
    pub fn remove_by_id(&self, id: &[u8; 16], cfg: &Config) -> Result<Option<Session>, TableError> {
        let removed = self.update::<SessionShard, _>(&session_key(shard_of(id)), |shard| {
            match shard.iter().position(|s| s.id == *id) {
                Some(pos) => (true, Some(shard.remove(pos))),
                None => (false, None),
            }
        })?;
        if let Some(s) = &removed {
            self.forget(std::slice::from_ref(s), None, cfg)?;
        }
        Ok(removed)
    }

    /// After sessions left the session shards: their cookie entries, the live
    /// count and the per-user index.
    fn forget(
        &self,
        gone: &[Session],
        extra: Option<&CookieHash>,
        cfg: &Config,
    ) -> Result<(), TableError> {
        for s in gone {
            self.unindex(&cookies_of(s, extra), s.id, None)?;
            if cfg.max_sessions_per_user.is_some() {
                self.user_index_remove(s)?;
            }
        }
        if !gone.is_empty() {
            self.count_add(-i64::try_from(gone.len()).unwrap_or(i64::MAX))?;
        }
        Ok(())
    }

    /// Adds `s` to its user's list; returns the ids of that user's oldest sessions
    /// beyond `limit` (to be ended).
    fn user_index_add(&self, s: &Session, limit: u32) -> Result<Vec<[u8; 16]>, TableError> {
        let user = user_hash(&s.user_id);
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
            let older: Vec<[u8; 16]> = list.drain(..extra).map(|(id, _)| id).collect();
            (true, older)
        })
    }

    fn user_index_remove(&self, s: &Session) -> Result<(), TableError> {
        let user = user_hash(&s.user_id);
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
    /// cookie shard and one write per session shard involved.
    pub fn touch(&self, batch: &[(CookieHash, u64)], now: u64) -> Result<TouchOutcome, TableError> {
        let hashes: Vec<CookieHash> = batch.iter().map(|(h, _)| *h).collect();
        let mut refs: BTreeMap<CookieHash, [u8; 16]> = BTreeMap::new();
        for (index, group) in group_by_shard(&hashes) {
            let (shard, _) = self.read::<CookieShard>(&cookie_key(index))?;
            for (h, r) in shard {
                if r.until >= now && group.contains(&h) {
                    refs.insert(h, r.session);
                }
            }
        }
        // Latest time seen per session id.
        let mut seen: BTreeMap<[u8; 16], u64> = BTreeMap::new();
        for (h, t) in batch {
            if let Some(id) = refs.get(h) {
                let e = seen.entry(*id).or_insert(*t);
                *e = (*e).max(*t);
            }
        }
        let ids: Vec<[u8; 16]> = seen.keys().copied().collect();
        let mut live: BTreeSet<[u8; 16]> = BTreeSet::new();
        for (index, group) in group_by_shard(&ids) {
            let found = self.update::<SessionShard, _>(&session_key(index), |shard| {
                let mut changed = false;
                let mut found = Vec::new();
                for s in shard.iter_mut().filter(|s| group.contains(&s.id)) {
                    found.push(s.id);
                    if let Some(t) = seen.get(&s.id).filter(|t| **t > s.last_ms) {
                        s.last_ms = *t;
                        changed = true;
                    }
                }
                (changed, found)
            })?;
            live.extend(found);
        }
        let mut outcome = TouchOutcome::default();
        for h in hashes {
            if refs.get(&h).is_some_and(|id| live.contains(id)) {
                outcome.found.push(h);
            } else {
                outcome.missing.push(h);
            }
        }
        Ok(outcome)
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
        let deadline = match self.session_by_id(&r.session)? {
            Some(s) => s.deadline(cfg),
            None => return Ok(None),
        };
        self.index(&[*to], r.session, deadline)?;
        let (session, dropped) =
            self.update::<SessionShard, _>(&session_key(shard_of(&r.session)), |shard| {
                let Some(s) = shard.iter_mut().find(|s| s.id == r.session) else {
                    return (false, (None, Vec::new()));
                };
                s.last_ms = s.last_ms.max(now);
                if s.cookie == *to {
                    return (true, (Some(s.clone()), Vec::new()));
                }
                let old = std::mem::replace(&mut s.cookie, *to);
                s.aliases.retain(|a| a != to && *a != old);
                s.aliases.insert(0, old);
                let dropped = if s.aliases.len() > MAX_ALIASES {
                    s.aliases.split_off(MAX_ALIASES)
                } else {
                    Vec::new()
                };
                (true, (Some(s.clone()), dropped))
            })?;
        match session {
            Some(s) => {
                // Old values beyond the newest few keep working for a grace period only.
                self.unindex(&dropped, s.id, Some(now.saturating_add(ROTATION_GRACE_MS)))?;
                Ok(Some(s))
            }
            // Ended while we rotated: take the new entry back out.
            None => {
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
        let removed = self.update::<SessionShard, _>(
            &session_key(shard_of(&r.session)),
            |shard| match shard.iter().position(|s| s.id == r.session) {
                Some(pos) => (true, Some(shard.remove(pos))),
                None => (false, None),
            },
        )?;
        let Some(session) = removed else {
            return Ok(None);
        };
        self.forget(std::slice::from_ref(&session), Some(hash), cfg)?;
        Ok(Some(session))
    }

    /// Removes expired sessions and stale cookie entries from shards `range`;
    /// returns the sessions it ended. Only one caller removes a given session
    /// (CAS), so each expiry is reported once.
    pub fn sweep(
        &self,
        range: std::ops::Range<usize>,
        now: u64,
        cfg: &Config,
    ) -> Result<Vec<Session>, TableError> {
        let mut ended = Vec::new();
        for index in range.clone() {
            let gone = self.update::<SessionShard, _>(&session_key(index), |shard| {
                let (gone, keep): (Vec<Session>, Vec<Session>) = std::mem::take(shard)
                    .into_iter()
                    .partition(|s| s.is_expired(now, cfg));
                *shard = keep;
                (!gone.is_empty(), gone)
            })?;
            ended.extend(gone);
        }
        self.forget(&ended, None, cfg)?;
        record::update(self.store, REVOKED_KEY, |r: &mut Vec<(CookieHash, u64)>| {
            let before = r.len();
            r.retain(|(_, until)| *until >= now);
            (r.len() != before, ())
        })?;
        for index in range {
            self.update::<CookieShard, _>(&cookie_key(index), |shard| {
                let before = shard.len();
                shard.retain(|(_, r)| r.until >= now);
                (shard.len() != before, ())
            })?;
        }
        Ok(ended)
    }

    /// Every live session, read shard by shard.
    pub fn sessions(&self) -> Result<Vec<Session>, TableError> {
        let mut out = Vec::new();
        for index in 0..SHARDS {
            let (shard, _) = self.read::<SessionShard>(&session_key(index))?;
            out.extend(shard);
        }
        Ok(out)
    }

    /// Visits every session without decoding its strings into owned memory.
    pub fn scan(&self, mut visit: impl FnMut(&SessionRef<'_>)) -> Result<(), TableError> {
        for index in 0..SHARDS {
            if let Some((bytes, _)) = self.store.get(&session_key(index))? {
                // Undecodable (another version): skipped, as `read` would.
                let shard: Vec<SessionRef<'_>> = postcard::from_bytes(&bytes).unwrap_or_default();
                shard.iter().for_each(&mut visit);
            }
        }
        Ok(())
    }

    /// Bytes of shared data the table holds (keys and values), for memory checks.
    pub fn footprint(&self) -> Result<usize, TableError> {
        let mut total = 0;
        for index in 0..SHARDS {
            for key in [session_key(index), cookie_key(index)] {
                if let Some((bytes, _)) = self.store.get(&key)? {
                    total += bytes.len() + key.len();
                }
            }
        }
        Ok(total)
    }
}

/// The current cookie, the kept aliases, and `extra` if given.
fn cookies_of(s: &Session, extra: Option<&CookieHash>) -> Vec<CookieHash> {
    let mut all = vec![s.cookie];
    all.extend(s.aliases.iter().copied());
    if let Some(h) = extra.filter(|h| !all.contains(h)) {
        all.push(*h);
    }
    all
}

/// Items by shard, as sets: lookups inside a shard stay O(log n) for big batches.
fn group_by_shard(items: &[[u8; 16]]) -> BTreeMap<usize, BTreeSet<[u8; 16]>> {
    let mut groups: BTreeMap<usize, BTreeSet<[u8; 16]>> = BTreeMap::new();
    for item in items {
        groups.entry(shard_of(item)).or_default().insert(*item);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;

    fn h(n: u8) -> CookieHash {
        [n; 16]
    }

    fn session(id: u8, cookie: u8, user: &str, now: u64) -> Session {
        Session {
            id: [id; 16],
            user_id: user.into(),
            username: user.into(),
            role: "student".into(),
            ip: "127.0.0.1".into(),
            user_agent: "ua".into(),
            login_ms: now,
            last_ms: now,
            cookie: h(cookie),
            aliases: vec![],
        }
    }

    #[test]
    fn insert_resolve_touch_end() {
        let (store, cfg) = (MemoryStore::default(), Config::default());
        let t = SessionTable::new(&store);
        t.insert(session(1, 1, "a", 1_000), &cfg).unwrap();
        assert_eq!(
            t.resolve(&h(1), 1_000).unwrap().map(|s| s.username),
            Some("a".into())
        );
        assert_eq!(t.resolve(&h(2), 1_000).unwrap(), None);
        let out = t.touch(&[(h(1), 5_000), (h(2), 5_000)], 5_000).unwrap();
        assert_eq!(out.found, vec![h(1)]);
        assert_eq!(out.missing, vec![h(2)]);
        assert_eq!(
            t.resolve(&h(1), 5_000).unwrap().map(|s| s.last_ms),
            Some(5_000)
        );
        // An older time never moves last activity back.
        t.touch(&[(h(1), 4_000)], 5_000).unwrap();
        assert_eq!(
            t.resolve(&h(1), 5_000).unwrap().map(|s| s.last_ms),
            Some(5_000)
        );
        assert!(t.end(&h(1), 6_000, &cfg).unwrap().is_some());
        assert_eq!(t.sessions().unwrap(), vec![]);
        assert!(t.end(&h(1), 6_000, &cfg).unwrap().is_none());
    }

    #[test]
    fn fast_rotation_keeps_every_recent_value_resolving() {
        let (store, cfg) = (MemoryStore::default(), Config::default());
        let t = SessionTable::new(&store);
        t.insert(session(1, 1, "a", 0), &cfg).unwrap();
        for n in 1..20u8 {
            assert!(t
                .rotate(&h(n), &h(n + 1), u64::from(n), &cfg)
                .unwrap()
                .is_some());
        }
        // A request still in flight with an old value rotates onto the same session.
        assert!(t.rotate(&h(3), &h(99), 30, &cfg).unwrap().is_some());
        assert_eq!(t.sessions().unwrap().len(), 1);
        for n in (1..=20).chain([99]) {
            assert_eq!(
                t.resolve(&h(n), 40).unwrap().map(|s| s.id),
                Some([1; 16]),
                "value {n}"
            );
        }
        let s = t.resolve(&h(5), 40).unwrap().unwrap();
        assert_eq!(s.cookie, h(99));
        assert_eq!(s.aliases, vec![h(20), h(19)]);
        // After the grace period only the newest values still resolve.
        let later = 40 + ROTATION_GRACE_MS + 1;
        assert_eq!(t.resolve(&h(5), later).unwrap(), None);
        assert!(t.resolve(&h(19), later).unwrap().is_some());
        // A touch batch keyed by many of those values lands once, on the session.
        let out = t
            .touch(&[(h(2), 50), (h(10), 60), (h(99), 55)], 60)
            .unwrap();
        assert_eq!(out.found.len(), 3);
        assert_eq!(t.resolve(&h(99), 60).unwrap().map(|s| s.last_ms), Some(60));
        assert!(t.end(&h(20), 70, &cfg).unwrap().is_some());
        for n in (1..=20).chain([99]) {
            assert_eq!(t.resolve(&h(n), 80).unwrap(), None, "value {n}");
        }
        assert!(t.sweep(0..SHARDS, later + 1, &cfg).unwrap().is_empty());
        let empty_shards = (0..SHARDS)
            .flat_map(|i| [session_key(i), cookie_key(i)])
            .filter(|k| store.get(k).unwrap().is_some())
            .map(|k| k.len() + 1)
            .sum::<usize>();
        assert_eq!(t.footprint().unwrap(), empty_shards);
    }

    #[test]
    fn racing_rotations_both_resolve() {
        let (store, cfg) = (MemoryStore::default(), Config::default());
        let t = SessionTable::new(&store);
        t.insert(session(1, 1, "a", 0), &cfg).unwrap();
        t.rotate(&h(1), &h(2), 10, &cfg).unwrap();
        t.rotate(&h(1), &h(3), 10, &cfg).unwrap();
        assert!(t.resolve(&h(2), 20).unwrap().is_some());
        assert!(t.resolve(&h(3), 20).unwrap().is_some());
        assert_eq!(t.sessions().unwrap().len(), 1);
    }

    #[test]
    fn unknown_cookies_do_not_rotate_or_end() {
        let (store, cfg) = (MemoryStore::default(), Config::default());
        let t = SessionTable::new(&store);
        assert_eq!(t.rotate(&h(1), &h(2), 0, &cfg).unwrap(), None);
        assert_eq!(t.end(&h(1), 0, &cfg).unwrap(), None);
        assert_eq!(t.resolve(&h(2), 0).unwrap(), None);
    }

    #[test]
    fn cas_mismatches_are_retried_not_lost() {
        let (store, cfg) = (MemoryStore::default(), Config::default());
        let t = SessionTable::new(&store);
        t.insert(session(1, 1, "a", 0), &cfg).unwrap();
        store.fail_next_sets.set(5);
        t.insert(session(2, 2, "b", 0), &cfg).unwrap();
        assert_eq!(t.sessions().unwrap().len(), 2);
        store.fail_next_sets.set(1000);
        assert!(matches!(
            t.insert(session(3, 3, "c", 0), &cfg),
            Err(TableError::Contended(_))
        ));
    }

    #[test]
    fn sweep_removes_expired_once_and_memory_stays_flat() {
        let (store, cfg) = (MemoryStore::default(), Config::default());
        let t = SessionTable::new(&store);
        let mut after_first = None;
        for round in 0..3u64 {
            let start = round * 10_000_000;
            for i in 0..200u16 {
                let mut s = session(0, 0, &format!("u{i}"), start);
                s.id[..2].copy_from_slice(&i.to_le_bytes());
                s.id[2] = round as u8;
                s.cookie = s.id;
                s.cookie[3] = 7;
                let cookie = s.cookie;
                t.insert(s, &cfg).unwrap();
                if i % 3 == 0 {
                    let mut to = cookie;
                    to[4] = 1;
                    t.rotate(&cookie, &to, start + 1, &cfg).unwrap();
                }
            }
            let peak = store.bytes();
            let ended = t
                .sweep(0..SHARDS, start + cfg.idle_timeout_ms + 2, &cfg)
                .unwrap();
            assert_eq!(ended.len(), 200);
            assert!(t
                .sweep(0..SHARDS, start + cfg.idle_timeout_ms + 3, &cfg)
                .unwrap()
                .is_empty());
            let after = store.bytes();
            // Only the keys stay (Envoy cannot delete them); every value is an empty list.
            let (keys, values) = store.values();
            assert_eq!(values, keys, "round {round}: {after} bytes left of {peak}");
            // Every round ends where the first did: nothing accumulates.
            assert_eq!(*after_first.get_or_insert(after), after, "round {round}");
        }
    }

    #[test]
    fn the_cap_evicts_the_longest_idle_and_counts_stay_exact() {
        let store = MemoryStore::default();
        let cfg = Config {
            max_sessions: 3,
            ..Config::default()
        };
        let t = SessionTable::new(&store);
        for i in 0..3u8 {
            t.insert(
                session(i, 100 + i, &format!("u{i}"), u64::from(i) * 10),
                &cfg,
            )
            .unwrap();
        }
        t.touch(&[(h(100), 50)], 50).unwrap(); // u0 is now the most recent
        let evicted = t.insert(session(9, 109, "u9", 60), &cfg).unwrap();
        assert_eq!(
            evicted
                .iter()
                .map(|s| s.username.as_str())
                .collect::<Vec<_>>(),
            vec!["u1"]
        );
        assert_eq!(t.live_count().unwrap(), 3);
        assert_eq!(t.sessions().unwrap().len(), 3);
        assert_eq!(t.resolve(&h(101), 60).unwrap(), None);
        t.end(&h(100), 70, &cfg).unwrap();
        t.sweep(0..SHARDS, 70 + cfg.idle_timeout_ms + 1, &cfg)
            .unwrap();
        assert_eq!(t.live_count().unwrap(), 0);
    }

    #[test]
    fn per_user_limit_ends_the_oldest_session() {
        let store = MemoryStore::default();
        let cfg = Config {
            max_sessions_per_user: Some(2),
            ..Config::default()
        };
        let t = SessionTable::new(&store);
        t.insert(session(1, 1, "ann", 10), &cfg).unwrap();
        t.insert(session(2, 2, "ann", 20), &cfg).unwrap();
        t.insert(session(3, 3, "bob", 25), &cfg).unwrap();
        let evicted = t.insert(session(4, 4, "ann", 30), &cfg).unwrap();
        assert_eq!(
            evicted.iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![[1; 16]]
        );
        assert_eq!(t.sessions().unwrap().len(), 3);
        // Ending one frees a slot: no eviction on the next login.
        t.end(&h(2), 40, &cfg).unwrap();
        assert!(t.insert(session(5, 5, "ann", 50), &cfg).unwrap().is_empty());
        assert_eq!(t.live_count().unwrap(), 3);
    }

    #[test]
    fn revocation_covers_every_known_value_of_the_session() {
        let store = MemoryStore::default();
        let cfg = Config {
            enforce_revocation: true,
            ..Config::default()
        };
        let t = SessionTable::new(&store);
        t.insert(session(1, 1, "ann", 0), &cfg).unwrap();
        for n in 1..6u8 {
            t.rotate(&h(n), &h(n + 1), u64::from(n), &cfg).unwrap();
        }
        t.insert(session(2, 50, "bob", 0), &cfg).unwrap();
        assert_eq!(
            t.revoke(&[1; 16], 10, &cfg).unwrap().map(|s| s.username),
            Some("ann".into())
        );
        for n in 1..=6u8 {
            assert!(t.is_revoked(&h(n), 11).unwrap(), "value {n}");
            assert_eq!(t.resolve(&h(n), 11).unwrap(), None);
        }
        assert!(!t.is_revoked(&h(50), 11).unwrap());
        assert!(t.revoke(&[1; 16], 12, &cfg).unwrap().is_none());
        // Forgotten once the session could no longer have been alive.
        let later = cfg.max_lifetime_ms + 1;
        t.sweep(0..SHARDS, later, &cfg).unwrap();
        assert!(!t.is_revoked(&h(6), later).unwrap());
        assert_eq!(
            record::load::<Vec<(CookieHash, u64)>>(&store, REVOKED_KEY)
                .unwrap()
                .0,
            vec![]
        );
    }
}
