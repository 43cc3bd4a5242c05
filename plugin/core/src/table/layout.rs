//! The byte layout of Envoy's shared-data table: shard keys, fixed-width
//! activity and cookie records (sorted, found by binary search), the session
//! details as postcard records, and the in-place edits the table makes to them.
//! `mod.rs` holds the operations over this layout.

use crate::ids::Id16;
use crate::session::{CookieHash, Session, SessionId, UserKey};
use serde::{Deserialize, Serialize};

/// Shard keys for session details and for cookies. More shards make each write
/// smaller and a full read longer; see bench/PERFORMANCE.md.
pub const SHARDS: usize = 512;

/// Shard keys for activity records; session shard `i` has its activity in
/// `i % SEEN_SHARDS`. Few and fixed-width: a flush touching thousands of
/// sessions writes at most this many keys, and a full read is this many calls.
pub const SEEN_SHARDS: usize = 64;

/// Bytes of one activity record: session id, login and last activity (u64 LE ms).
pub const SEEN_LEN: usize = 32;

/// A cookie value's index entry: which session it leads to, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CookieRef {
    pub session: SessionId,
    pub until: u64,
}

/// Bytes of one cookie entry: cookie hash, session id, valid until (u64 LE ms).
pub const COOKIE_LEN: usize = 40;

/// A session's details as stored: `Session` without its last activity (kept in
/// the activity record) and with the user agent packed (`agent::pack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: SessionId,
    pub user_id: String,
    pub username: String,
    pub role: String,
    pub ip: String,
    pub agent: String,
    pub login_ms: u64,
    pub cookie: CookieHash,
    pub aliases: Vec<CookieHash>,
}

/// A `Record` borrowed from its encoded shard (same layout).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecordRef<'a> {
    pub id: SessionId,
    pub user_id: &'a str,
    pub username: &'a str,
    pub role: &'a str,
    pub ip: &'a str,
    pub agent: &'a str,
    pub login_ms: u64,
    pub cookie: CookieHash,
    pub aliases: Vec<CookieHash>,
}

impl Record {
    pub fn of(s: &Session) -> Record {
        Record {
            id: s.id,
            user_id: s.user_id.clone(),
            username: s.username.clone(),
            role: s.role.clone(),
            ip: s.ip.clone(),
            agent: crate::agent::pack(&s.user_agent),
            login_ms: s.login_ms,
            cookie: s.cookie,
            aliases: s.aliases.clone(),
        }
    }

    pub fn into_session(self, last_ms: u64) -> Session {
        Session {
            id: self.id,
            user_agent: crate::agent::unpack(&self.agent),
            user_id: self.user_id,
            username: self.username,
            role: self.role,
            ip: self.ip,
            login_ms: self.login_ms,
            last_ms,
            cookie: self.cookie,
            aliases: self.aliases,
        }
    }
}

pub(super) type SessionShard = Vec<Record>;

pub fn shard_of(id: &impl Id16) -> usize {
    let bytes = id.bytes();
    usize::from(u16::from_le_bytes([bytes[0], bytes[1]])) % SHARDS
}

pub fn seen_shard_of(id: &SessionId) -> usize {
    shard_of(id) % SEEN_SHARDS
}

pub fn session_key(index: usize) -> String {
    format!("headcount.v2.sessions.{index}")
}

pub fn seen_key(index: usize) -> String {
    format!("headcount.v2.seen.{index}")
}

pub fn cookie_key(index: usize) -> String {
    format!("headcount.v2.cookies.{index}")
}

pub fn user_key(index: usize) -> String {
    format!("headcount.v2.users.{index}")
}

/// Cookie hashes of revoked sessions with the time they may be forgotten.
pub const REVOKED_KEY: &str = "headcount.v2.revoked";

/// A little-endian u32 epoch, then one u32 per details shard, bumped after every
/// write to that shard: a reader keeping shards decoded copies this one 2 KB key
/// and then only the shards whose generation moved, instead of all 512 to compare
/// CAS values. The epoch moves if the key ever has to be rebuilt, so generations
/// from before never match again.
pub const GENERATIONS_KEY: &str = "headcount.v2.generations";
pub(super) const GENERATIONS_LEN: usize = 4 + SHARDS * 4;

/// Shard `index`'s generation (with the key's epoch) in the generations key's
/// bytes; `None` if the key is missing or malformed: readers then check every
/// shard.
pub fn generation(bytes: &[u8], index: usize) -> Option<u64> {
    if bytes.len() != GENERATIONS_LEN {
        return None;
    }
    let epoch = generation_at(bytes);
    let g = generation_at(bytes.get(4 + index * 4..)?);
    Some(u64::from(epoch) << 32 | u64::from(g))
}

/// The live-session count (a postcard `u64`).
pub const COUNT_KEY: &str = "headcount.v2.count";

/// Per-user session lists (only kept when `max_sessions_per_user` is set).
pub(super) type UserShard = Vec<(UserKey, Vec<(SessionId, u64)>)>;

/// A shard of fixed-width records sorted by their first 16 bytes (a session id or
/// a cookie hash). Bytes that are not whole records (another version) read as empty.
#[derive(Debug, Clone, Copy)]
pub struct Fixed<'b, const LEN: usize>(&'b [u8]);

/// An activity shard: `SEEN_LEN`-byte records sorted by session id.
pub type Seen<'b> = Fixed<'b, SEEN_LEN>;

/// A cookie shard: `COOKIE_LEN`-byte entries sorted by cookie hash.
pub type Cookies<'b> = Fixed<'b, COOKIE_LEN>;

/// One activity record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    pub id: SessionId,
    pub login_ms: u64,
    pub last_ms: u64,
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(src) = b.get(at..at + 8) {
        w.copy_from_slice(src);
    }
    u64::from_le_bytes(w)
}

pub(super) fn id_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut id = [0u8; 16];
    if let Some(src) = b.get(at..at + 16) {
        id.copy_from_slice(src);
    }
    id
}

impl<'b, const LEN: usize> Fixed<'b, LEN> {
    pub fn new(bytes: &'b [u8]) -> Self {
        Fixed(if bytes.len() % LEN == 0 { bytes } else { &[] })
    }

    pub fn len(&self) -> usize {
        self.0.len() / LEN
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Record `i`'s bytes.
    pub fn record(&self, i: usize) -> Option<&'b [u8]> {
        self.0.get(i * LEN..(i + 1) * LEN)
    }

    /// Binary search by key: `Ok(index)` if present, else where it would go.
    pub fn find(&self, key: &impl Id16) -> Result<usize, usize> {
        let key = key.bytes();
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let k = self.0.get(mid * LEN..mid * LEN + 16).unwrap_or_default();
            match k.cmp(&key[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    pub fn records(&self) -> impl Iterator<Item = &'b [u8]> + 'b {
        self.0.chunks_exact(LEN)
    }
}

impl<'b> Seen<'b> {
    pub fn at(&self, i: usize) -> Option<Activity> {
        self.record(i).map(activity)
    }

    pub fn get(&self, id: &SessionId) -> Option<Activity> {
        self.find(id).ok().and_then(|i| self.at(i))
    }

    pub fn iter(&self) -> impl Iterator<Item = Activity> + 'b {
        self.records().map(activity)
    }
}

pub(super) fn activity(r: &[u8]) -> Activity {
    Activity {
        id: SessionId(id_at(r, 0)),
        login_ms: u64_at(r, 16),
        last_ms: u64_at(r, 24),
    }
}

pub(super) fn cookie_entry(r: &[u8]) -> (CookieHash, CookieRef) {
    (
        CookieHash(id_at(r, 0)),
        CookieRef {
            session: SessionId(id_at(r, 16)),
            until: u64_at(r, 32),
        },
    )
}

impl<'b> Cookies<'b> {
    pub fn get(&self, hash: &CookieHash) -> Option<CookieRef> {
        let i = self.find(hash).ok()?;
        self.record(i).map(|r| cookie_entry(r).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (CookieHash, CookieRef)> + 'b {
        self.records().map(cookie_entry)
    }
}

pub(super) fn seen_record(a: &Activity) -> [u8; SEEN_LEN] {
    let mut r = [0u8; SEEN_LEN];
    r[..16].copy_from_slice(&a.id.0);
    r[16..24].copy_from_slice(&a.login_ms.to_le_bytes());
    r[24..].copy_from_slice(&a.last_ms.to_le_bytes());
    r
}

pub(super) fn cookie_record(hash: &CookieHash, r: &CookieRef) -> [u8; COOKIE_LEN] {
    let mut b = [0u8; COOKIE_LEN];
    b[..16].copy_from_slice(&hash.0);
    b[16..32].copy_from_slice(&r.session.0);
    b[32..].copy_from_slice(&r.until.to_le_bytes());
    b
}

/// Sets a record (insert, or replace the one with the same key) in a shard's bytes.
pub(super) fn fixed_put<const LEN: usize>(bytes: &mut Vec<u8>, rec: [u8; LEN]) {
    if bytes.len() % LEN != 0 {
        bytes.clear();
    }
    let key = id_at(&rec, 0);
    match Fixed::<LEN>::new(bytes).find(&key) {
        Ok(i) => {
            if let Some(dst) = bytes.get_mut(i * LEN..(i + 1) * LEN) {
                dst.copy_from_slice(&rec);
            }
        }
        Err(i) => {
            let at = (i * LEN).min(bytes.len());
            bytes.splice(at..at, rec);
        }
    }
}

/// Removes the record with `key`, returning its bytes.
pub(super) fn fixed_take<const LEN: usize>(
    bytes: &mut Vec<u8>,
    key: &impl Id16,
) -> Option<Vec<u8>> {
    let i = Fixed::<LEN>::new(bytes).find(key).ok()?;
    Some(bytes.drain(i * LEN..(i + 1) * LEN).collect())
}

/// Keeps only the records `keep` accepts; whether any went.
pub(super) fn fixed_retain<const LEN: usize>(
    bytes: &mut Vec<u8>,
    mut keep: impl FnMut(&[u8]) -> bool,
) -> bool {
    if bytes.len() % LEN != 0 {
        bytes.clear();
        return true;
    }
    let before = bytes.len();
    let kept: Vec<u8> = bytes
        .chunks_exact(LEN)
        .filter(|r| keep(r))
        .flatten()
        .copied()
        .collect();
    *bytes = kept;
    bytes.len() != before
}

/// The little-endian u32 at the start of `b` (missing bytes read as zero).
pub(super) fn generation_at(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.iter_mut().zip(b).for_each(|(d, s)| *d = *s);
    u32::from_le_bytes(w)
}

pub(super) fn seen_put(bytes: &mut Vec<u8>, a: &Activity) {
    fixed_put(bytes, seen_record(a));
}

/// Moves a record's last activity forward to `t`: (the record exists, it moved).
pub(super) fn seen_touch(bytes: &mut [u8], id: &SessionId, t: u64) -> (bool, bool) {
    let Ok(i) = Seen::new(bytes).find(id) else {
        return (false, false);
    };
    let at = i * SEEN_LEN + 24;
    if u64_at(bytes, at) >= t {
        return (true, false);
    }
    if let Some(dst) = bytes.get_mut(at..at + 8) {
        dst.copy_from_slice(&t.to_le_bytes());
    }
    (true, true)
}

/// Removes and returns an activity record.
pub(super) fn seen_take(bytes: &mut Vec<u8>, id: &SessionId) -> Option<Activity> {
    fixed_take::<SEEN_LEN>(bytes, id).map(|r| activity(&r))
}
