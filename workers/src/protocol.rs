//! What the Worker and the Durable Object say to each other. Internal to this
//! crate: both ends are built from the same code, so the format can change freely.

use headcount_core::traffic::{Bucket, Traffic};
use headcount_core::{CookieHash, Session};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A keyed cookie hash (never a cookie), as 32 lower-case hex digits on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub CookieHash);

impl Hash {
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Hash> {
        let bytes = decode_hex(s)?;
        CookieHash::try_from(bytes.as_slice()).ok().map(Hash)
    }

    /// Which Durable Object holds the entry for this hash: the first four bytes of
    /// the (keyed, uniformly distributed) hash modulo the shard count.
    pub fn shard(&self, shards: u32) -> u32 {
        let [a, b, c, d, ..] = self.0;
        u32::from_le_bytes([a, b, c, d]) % shards.max(1)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight hex digits are enough to follow one session through the logs.
        write!(f, "{}", &self.hex()[..8])
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("not a 32-digit hex hash"))
    }
}

pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

/// One state change, in the order the Worker saw it. The Worker sends `Login`,
/// `Touch`, `Rotate` and `Logout`. The table has the core's layout (`table.rs`):
/// sessions by session id, and a cookie index (hash -> session id, until) by
/// cookie hash, so an op on a cookie leads to an op on its session, and an op on a
/// session to index updates. A Durable Object applies the follow-ups that belong
/// to its own shard at once and returns the others, which the Worker delivers next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A login succeeded: the session, with its first cookie in `session.cookie`.
    Login { session: Session },
    /// `requests` requests carried this cookie, the last one at `last_ms`.
    /// `retry`: the second attempt for a cookie that was unknown the first time.
    Touch {
        hash: Hash,
        last_ms: u64,
        requests: u64,
        retry: bool,
    },
    /// The app re-issued the cookie: `from` -> each of `via` -> `to` (several
    /// rotations seen by one isolate between two flushes, oldest first).
    Rotate {
        from: Hash,
        via: Vec<Hash>,
        to: Hash,
        at: u64,
    },
    /// The session behind this cookie is over.
    Logout { hash: Hash, at: u64 },
    /// `Touch` once the cookie led to session `id`.
    TouchSession {
        id: Hash,
        hash: Hash,
        last_ms: u64,
        requests: u64,
        retry: bool,
    },
    /// `Rotate` once the cookie led to session `id`.
    RotateSession {
        id: Hash,
        via: Vec<Hash>,
        to: Hash,
        at: u64,
    },
    /// `Logout` once the cookie led to session `id`.
    EndSession { id: Hash, hash: Hash },
    /// Cookie `hash` leads to session `id` until `until`.
    Index { hash: Hash, id: Hash, until: u64 },
    /// Cookie `hash` leads to session `id` no longer than `until`.
    Shorten { hash: Hash, id: Hash, until: u64 },
    /// Cookie `hash` no longer leads to session `id`.
    Unindex { hash: Hash, id: Hash },
}

impl Op {
    /// The hash that decides which shard applies this op: the session id for ops
    /// on sessions, the cookie hash for ops on the cookie index.
    pub fn key(&self) -> Hash {
        match self {
            Op::Login { session } => Hash(session.id),
            Op::Touch { hash, .. }
            | Op::Logout { hash, .. }
            | Op::Index { hash, .. }
            | Op::Shorten { hash, .. }
            | Op::Unindex { hash, .. } => *hash,
            Op::Rotate { from, .. } => *from,
            Op::TouchSession { id, .. }
            | Op::RotateSession { id, .. }
            | Op::EndSession { id, .. } => *id,
        }
    }
}

/// Traffic counted in an isolate since its last flush, before the session table
/// tells which cookies were real (the Durable Object adds those counts itself).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficPart {
    pub anonymous: u64,
    pub buckets: Vec<Bucket>,
}

impl TrafficPart {
    pub fn is_empty(&self) -> bool {
        self.anonymous == 0 && self.buckets.is_empty()
    }
}

/// `POST /batch` to shard `shard` of `shards`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch {
    pub shard: u32,
    pub shards: u32,
    pub now: u64,
    pub ops: Vec<Op>,
    pub traffic: TrafficPart,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BatchReply {
    /// Touches of cookies nobody knows yet: the Worker sends them once more later
    /// (a rotation seen by another isolate may not have landed).
    pub missing: Vec<Op>,
    /// Follow-ups for other shards.
    pub forward: Vec<Op>,
}

/// `POST /resolve`: the live session behind a cookie (`hash`, on the cookie's
/// shard) or with an id (`id`, on the session's shard), for the stats route.
#[derive(Debug, Serialize, Deserialize)]
pub struct Resolve {
    pub hash: Option<Hash>,
    pub id: Option<Hash>,
    pub shard: u32,
    pub shards: u32,
    pub now: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ResolveReply {
    pub session: Option<Session>,
    /// The cookie leads to this session id, kept on another shard.
    pub id: Option<Hash>,
}

/// `POST /stats`: one shard's share of the report.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatsQuery {
    pub now: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StatsReply {
    /// Sessions seen within the active window (the report applies the exact rule).
    pub sessions: Vec<Session>,
    pub traffic: Traffic,
    /// Rows held, for operators and the tests: live sessions and cookie entries
    /// (current cookies, rotated aliases, and orphans).
    pub stored_sessions: u64,
    pub stored_cookies: u64,
}

/// `POST /secret` (shard 0 only): the cookie hash key, made on first use.
#[derive(Debug, Serialize, Deserialize)]
pub struct SecretReply {
    pub secret: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_as_hex() {
        let h = Hash([0xab; 16]);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(16)));
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), h);
        assert!(serde_json::from_str::<Hash>("\"abc\"").is_err());
        assert!(Hash::from_hex(&"zz".repeat(16)).is_none());
    }

    #[test]
    fn shards_spread_and_stay_in_range() {
        let mut seen = [0u32; 4];
        for i in 0..=255u8 {
            let mut h = [0u8; 16];
            h[0] = i;
            h[1] = i.wrapping_mul(7);
            let s = Hash(h).shard(4);
            seen[s as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 0), "{seen:?}");
        assert_eq!(Hash([9; 16]).shard(1), 0);
        assert_eq!(Hash([9; 16]).shard(0), 0);
    }

    #[test]
    fn ops_are_tagged_json() {
        let op = Op::Logout {
            hash: Hash([1; 16]),
            at: 5,
        };
        let json = serde_json::to_string(&op).unwrap();
        assert!(json.contains("\"op\":\"logout\""), "{json}");
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), op);
    }
}
