//! The session table kept in a host's shared key/value store (Envoy shared data).
//!
//! The proxy-wasm ABI can neither list nor delete keys, and Envoy never frees one,
//! so the table lives in a fixed set of shard keys: `SHARDS` values, each a
//! postcard-encoded list of entries keyed by cookie hash. Memory is bounded by the
//! live sessions, never by the sessions ever seen. Every write is a CAS
//! read-modify-write, retried on mismatch, so concurrent VMs never lose an update.
//!
//! A rotated cookie leaves an `Alias` entry under its old hash pointing at the new
//! one, so requests still in flight with the old value keep finding the session.

use crate::config::Config;
use crate::session::{CookieHash, Session, MAX_ALIASES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Number of shard keys. More shards make each write smaller and the stats read
/// longer; see README "Performance".
pub const SHARDS: usize = 512;

/// Attempts of one CAS read-modify-write before giving up.
const MAX_RETRIES: usize = 64;

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    Live(Session),
    /// A rotated-away cookie: follow to `target`; dropped after `until`.
    Alias {
        target: CookieHash,
        until: u64,
    },
}

type Shard = Vec<(CookieHash, Entry)>;

pub fn shard_of(hash: &CookieHash) -> usize {
    usize::from(u16::from_le_bytes([hash[0], hash[1]])) % SHARDS
}

pub fn shard_key(index: usize) -> String {
    format!("headcount.v1.sessions.{index}")
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

    /// Reads one shard; an undecodable value (e.g. from another version) reads as empty
    /// and is replaced by the next write.
    fn read(&self, index: usize) -> Result<(Shard, Option<u32>), TableError> {
        match self.store.get(&shard_key(index))? {
            None => Ok((Vec::new(), None)),
            Some((bytes, cas)) => Ok((postcard::from_bytes(&bytes).unwrap_or_default(), Some(cas))),
        }
    }

    /// CAS read-modify-write of one shard. `f` returns whether it changed anything.
    fn update<R>(
        &self,
        index: usize,
        mut f: impl FnMut(&mut Shard) -> (bool, R),
    ) -> Result<R, TableError> {
        let key = shard_key(index);
        for _ in 0..MAX_RETRIES {
            let (mut shard, cas) = self.read(index)?;
            let (changed, out) = f(&mut shard);
            if !changed {
                return Ok(out);
            }
            let bytes =
                postcard::to_allocvec(&shard).map_err(|e| StoreError::Host(e.to_string()))?;
            match self.store.set(&key, &bytes, cas) {
                Ok(()) => return Ok(out),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(TableError::Contended(key))
    }

    fn lookup(&self, hash: &CookieHash) -> Result<Option<Entry>, TableError> {
        let (shard, _) = self.read(shard_of(hash))?;
        Ok(shard.into_iter().find(|(h, _)| h == hash).map(|(_, e)| e))
    }

    /// Follows aliases from `hash` to the live session: (its current hash, the session).
    pub fn resolve(
        &self,
        hash: &CookieHash,
        now: u64,
    ) -> Result<Option<(CookieHash, Session)>, TableError> {
        let mut at = *hash;
        for _ in 0..=MAX_ALIASES + 1 {
            match self.lookup(&at)? {
                Some(Entry::Live(s)) => return Ok(Some((at, s))),
                Some(Entry::Alias { target, until }) if until >= now => at = target,
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Records a new login under its cookie hash.
    pub fn insert(&self, hash: &CookieHash, session: Session) -> Result<(), TableError> {
        self.update(shard_of(hash), |shard| {
            shard.retain(|(h, _)| h != hash);
            shard.push((*hash, Entry::Live(session.clone())));
            (true, ())
        })
    }

    /// Marks the sessions behind `batch` (hash, time seen) as seen, one write per shard.
    /// Aliases are followed, so activity under a just-rotated cookie still lands.
    pub fn touch(&self, batch: &[(CookieHash, u64)], now: u64) -> Result<TouchOutcome, TableError> {
        let mut by_shard: BTreeMap<usize, Vec<(CookieHash, u64)>> = BTreeMap::new();
        for (h, t) in batch {
            by_shard.entry(shard_of(h)).or_default().push((*h, *t));
        }
        let mut outcome = TouchOutcome::default();
        for (index, items) in by_shard {
            // Hashes that turned out to be aliases, resolved after this shard's write.
            let (found, aliased) = self.update(index, |shard| {
                let mut found = Vec::new();
                let mut aliased = Vec::new();
                let mut changed = false;
                for (h, t) in &items {
                    match shard.iter_mut().find(|(k, _)| k == h).map(|(_, e)| e) {
                        Some(Entry::Live(s)) => {
                            if *t > s.last_ms {
                                s.last_ms = *t;
                                changed = true;
                            }
                            found.push(*h);
                        }
                        Some(Entry::Alias { until, .. }) if *until >= now => aliased.push((*h, *t)),
                        _ => {}
                    }
                }
                (changed, (found, aliased))
            })?;
            for (h, _) in &items {
                if !found.contains(h) && !aliased.iter().any(|(a, _)| a == h) {
                    outcome.missing.push(*h);
                }
            }
            outcome.found.extend(found);
            for (h, t) in aliased {
                match self.resolve(&h, now)? {
                    Some((head, _)) => {
                        self.touch_one(&head, t)?;
                        outcome.found.push(h);
                    }
                    None => outcome.missing.push(h),
                }
            }
        }
        Ok(outcome)
    }

    fn touch_one(&self, hash: &CookieHash, t: u64) -> Result<(), TableError> {
        self.update(shard_of(hash), |shard| {
            match shard.iter_mut().find(|(k, _)| k == hash).map(|(_, e)| e) {
                Some(Entry::Live(s)) if t > s.last_ms => {
                    s.last_ms = t;
                    (true, ())
                }
                _ => (false, ()),
            }
        })
    }

    /// Follows a cookie rotation `from` -> `to`. Returns the session if `from` was known.
    pub fn rotate(
        &self,
        from: &CookieHash,
        to: &CookieHash,
        now: u64,
        cfg: &Config,
    ) -> Result<Option<Session>, TableError> {
        for _ in 0..MAX_RETRIES {
            let Some((head, _)) = self.resolve(from, now)? else {
                return Ok(None);
            };
            if head == *to {
                return Ok(self.resolve(to, now)?.map(|(_, s)| s));
            }
            // Take the record out, leaving an alias, in one CAS write.
            let taken = self.update(shard_of(&head), |shard| {
                let Some(pos) = shard
                    .iter()
                    .position(|(h, e)| *h == head && matches!(e, Entry::Live(_)))
                else {
                    return (false, None);
                };
                let Some((_, Entry::Live(s))) = shard.get(pos).cloned() else {
                    return (false, None);
                };
                if let Some(slot) = shard.get_mut(pos) {
                    slot.1 = Entry::Alias {
                        target: *to,
                        until: s.deadline(cfg),
                    };
                }
                (true, Some(s))
            })?;
            // Lost a race with another rotation or a logout: resolve again.
            let Some(mut session) = taken else { continue };
            session.last_ms = session.last_ms.max(now);
            session.aliases.insert(0, head);
            let dropped = if session.aliases.len() > MAX_ALIASES {
                session.aliases.split_off(MAX_ALIASES)
            } else {
                Vec::new()
            };
            self.insert(to, session.clone())?;
            for old in dropped {
                self.remove_alias(&old)?;
            }
            return Ok(Some(session));
        }
        Err(TableError::Contended("rotation".into()))
    }

    fn remove_alias(&self, hash: &CookieHash) -> Result<(), TableError> {
        self.update(shard_of(hash), |shard| {
            let before = shard.len();
            shard.retain(|(h, e)| !(h == hash && matches!(e, Entry::Alias { .. })));
            (shard.len() != before, ())
        })
    }

    /// Ends the session behind `hash` (logout): removes it and its aliases.
    pub fn end(&self, hash: &CookieHash, now: u64) -> Result<Option<Session>, TableError> {
        for _ in 0..MAX_RETRIES {
            let Some((head, _)) = self.resolve(hash, now)? else {
                return Ok(None);
            };
            let removed = self.update(shard_of(&head), |shard| {
                match shard
                    .iter()
                    .position(|(h, e)| *h == head && matches!(e, Entry::Live(_)))
                {
                    Some(pos) => match shard.remove(pos) {
                        (_, Entry::Live(s)) => (true, Some(s)),
                        _ => (false, None),
                    },
                    None => (false, None),
                }
            })?;
            let Some(session) = removed else { continue };
            for alias in &session.aliases {
                self.remove_alias(alias)?;
            }
            if *hash != head {
                self.remove_alias(hash)?;
            }
            return Ok(Some(session));
        }
        Err(TableError::Contended("logout".into()))
    }

    /// Removes expired sessions and stale aliases from shards `range`; returns the
    /// sessions it ended. Only one caller removes a given session (CAS), so each
    /// expiry is reported once.
    pub fn sweep(
        &self,
        range: std::ops::Range<usize>,
        now: u64,
        cfg: &Config,
    ) -> Result<Vec<Session>, TableError> {
        let mut ended = Vec::new();
        for index in range {
            let gone = self.update(index, |shard| {
                let mut gone = Vec::new();
                let before = shard.len();
                shard.retain(|(_, e)| match e {
                    Entry::Live(s) if s.is_expired(now, cfg) => {
                        gone.push(s.clone());
                        false
                    }
                    Entry::Alias { until, .. } => *until >= now,
                    Entry::Live(_) => true,
                });
                (shard.len() != before, gone)
            })?;
            ended.extend(gone);
        }
        for s in &ended {
            for alias in &s.aliases {
                self.remove_alias(alias)?;
            }
        }
        Ok(ended)
    }

    /// Every live session, read shard by shard.
    pub fn sessions(&self) -> Result<Vec<Session>, TableError> {
        let mut out = Vec::new();
        for index in 0..SHARDS {
            let (shard, _) = self.read(index)?;
            out.extend(shard.into_iter().filter_map(|(_, e)| match e {
                Entry::Live(s) => Some(s),
                Entry::Alias { .. } => None,
            }));
        }
        Ok(out)
    }

    /// Bytes of shared data the table holds (keys and values), for memory checks.
    pub fn footprint(&self) -> Result<usize, TableError> {
        let mut total = 0;
        for index in 0..SHARDS {
            if let Some((bytes, _)) = self.store.get(&shard_key(index))? {
                total += bytes.len() + shard_key(index).len();
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;

    fn cfg() -> Config {
        Config::default()
    }

    fn session(id: u8, user: &str, now: u64) -> Session {
        Session {
            id: [id; 16],
            user_id: user.into(),
            username: user.into(),
            role: "student".into(),
            ip: "127.0.0.1".into(),
            user_agent: "ua".into(),
            login_ms: now,
            last_ms: now,
            aliases: vec![],
        }
    }

    fn h(n: u8) -> CookieHash {
        [n; 16]
    }

    #[test]
    fn insert_resolve_touch_end() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store);
        t.insert(&h(1), session(1, "a", 1_000)).unwrap();
        assert_eq!(
            t.resolve(&h(1), 1_000).unwrap().map(|(_, s)| s.username),
            Some("a".into())
        );
        assert_eq!(t.resolve(&h(2), 1_000).unwrap(), None);
        let out = t.touch(&[(h(1), 5_000), (h(2), 5_000)], 5_000).unwrap();
        assert_eq!(out.found, vec![h(1)]);
        assert_eq!(out.missing, vec![h(2)]);
        assert_eq!(
            t.resolve(&h(1), 5_000).unwrap().map(|(_, s)| s.last_ms),
            Some(5_000)
        );
        assert!(t.end(&h(1), 6_000).unwrap().is_some());
        assert_eq!(t.sessions().unwrap(), vec![]);
        assert!(t.end(&h(1), 6_000).unwrap().is_none());
    }

    #[test]
    fn rotation_is_followed_through_aliases_and_cleaned_on_logout() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store);
        let c = cfg();
        t.insert(&h(1), session(1, "a", 0)).unwrap();
        assert!(t.rotate(&h(1), &h(2), 10, &c).unwrap().is_some());
        assert!(t.rotate(&h(2), &h(3), 20, &c).unwrap().is_some());
        // A request still in flight with the first value rotates too: it lands on the head.
        assert!(t.rotate(&h(1), &h(4), 30, &c).unwrap().is_some());
        assert_eq!(t.sessions().unwrap().len(), 1);
        let (head, s) = t.resolve(&h(2), 40).unwrap().unwrap();
        assert_eq!(head, h(4));
        assert_eq!(s.aliases, vec![h(3), h(2)]);
        // Only MAX_ALIASES old values are kept.
        assert_eq!(t.resolve(&h(1), 40).unwrap(), None);
        assert!(t.end(&h(3), 50).unwrap().is_some());
        assert_eq!(t.sessions().unwrap(), vec![]);
        for n in 1..=4 {
            assert_eq!(t.resolve(&h(n), 60).unwrap(), None);
        }
        assert_eq!(t.footprint().unwrap(), shard_footprint_of_empty(&store));
    }

    fn shard_footprint_of_empty(store: &MemoryStore) -> usize {
        // Every written shard is back to an empty list (one byte) plus its key.
        (0..SHARDS)
            .filter(|i| store.get(&shard_key(*i)).unwrap().is_some())
            .map(|i| shard_key(i).len() + 1)
            .sum()
    }

    #[test]
    fn cas_mismatches_are_retried_not_lost() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store);
        t.insert(&h(1), session(1, "a", 0)).unwrap();
        store.fail_next_sets.set(5);
        t.insert(&h(1 + 1), session(2, "b", 0)).unwrap();
        assert_eq!(t.sessions().unwrap().len(), 2);
        store.fail_next_sets.set(1000);
        assert!(matches!(
            t.insert(&h(3), session(3, "c", 0)),
            Err(TableError::Contended(_))
        ));
    }

    #[test]
    fn sweep_removes_expired_once_and_memory_stays_flat() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store);
        let c = cfg();
        let mut peak = 0;
        for round in 0..3u64 {
            let start = round * 10_000_000;
            for i in 0..200u16 {
                let mut hash = [0u8; 16];
                hash[..2].copy_from_slice(&i.to_le_bytes());
                hash[2] = round as u8;
                t.insert(&hash, session(i as u8, &format!("u{i}"), start))
                    .unwrap();
                if i % 3 == 0 {
                    let mut to = hash;
                    to[3] = 1;
                    t.rotate(&hash, &to, start + 1, &c).unwrap();
                }
            }
            peak = peak.max(store.bytes());
            let ended = t
                .sweep(0..SHARDS, start + c.idle_timeout_ms + 2, &c)
                .unwrap();
            assert_eq!(ended.len(), 200);
            assert!(t
                .sweep(0..SHARDS, start + c.idle_timeout_ms + 3, &c)
                .unwrap()
                .is_empty());
            let after = store.bytes();
            assert!(
                after < peak / 4,
                "round {round}: {after} bytes left of {peak}"
            );
        }
    }
}
