//! The 16-byte identifiers, each its own type so that mixing them is a compile
//! error: a session's id, a cookie value's keyed hash (also a verified token's
//! session key, which stands in for a cookie), a user's index key, and a bearer
//! token's keyed hash (the token cache's key).
//!
//! Each is stored and sent as its 16 bytes: in postcard (Envoy's shared data) as
//! the plain array, exactly as before these types existed; in JSON (the ledger
//! protocol, the Worker's stored events) as 32 lower-case hex digits, and an
//! array of 16 numbers is still read.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

macro_rules! id16 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// 32 lower-case hex digits.
            pub fn hex(&self) -> String {
                hex(&self.0)
            }

            pub fn from_hex(s: &str) -> Option<$name> {
                from_hex(s).map($name)
            }

            /// Which of `shards` keeps this id: its first four bytes modulo the
            /// count (the ids are random or keyed hashes, so uniform).
            pub fn shard(&self, shards: u32) -> u32 {
                shard(&self.0, shards)
            }
        }

        impl From<[u8; 16]> for $name {
            fn from(b: [u8; 16]) -> $name {
                $name(b)
            }
        }

        impl Id16 for $name {
            fn bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Eight hex digits are enough to follow one through the logs.
                write!(f, "{}({})", stringify!($name), self.hex().get(..8).unwrap_or_default())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    d.deserialize_any(Id16Visitor).map($name)
                } else {
                    <[u8; 16]>::deserialize(d).map($name)
                }
            }
        }
    };
}

id16!(
    /// A session's id: the bytes of its UUID (random, or derived from a
    /// bearer token's key).
    SessionId
);
id16!(
    /// A cookie value's keyed hash (HMAC-SHA-256 cut to 128 bits), the only
    /// form a cookie is kept in; a verified token's session key takes this role.
    CookieHash
);
id16!(
    /// The per-user index key (`max_sessions_per_user`): SHA-256 of the user id.
    UserKey
);
id16!(
    /// A bearer token's keyed hash: the token cache's key.
    TokenKey
);
id16!(
    /// A node of the ledger (a Worker isolate, an Envoy VM in fleet mode):
    /// random, for numbering its batches (`ledger::wire::Batch::origin`).
    NodeId
);

/// Hashes a map key that is a keyed MAC already (a [`CookieHash`]): its own
/// bytes, folded to 64 bits. std's SipHash over them again cost about 150 Wasm
/// instructions per request on the activity buffer and bought nothing: without
/// the deployment's secret nobody can aim cookie hashes at one bucket.
#[derive(Default, Clone, Copy)]
pub struct MacKeyHasher(u64);

impl Hasher for MacKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word.iter_mut().zip(chunk).for_each(|(w, b)| *w = *b);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }

    /// The length prefix of a key's bytes: always 16, nothing to mix in.
    fn write_usize(&mut self, _len: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by cookie hashes, hashed by [`MacKeyHasher`].
pub type MacMap<V> = HashMap<CookieHash, V, BuildHasherDefault<MacKeyHasher>>;

/// The 16 bytes behind any of the ids (and a bare array): for code that only
/// places or orders them, such as shard selection.
pub trait Id16 {
    fn bytes(&self) -> &[u8; 16];
}

impl Id16 for [u8; 16] {
    fn bytes(&self) -> &[u8; 16] {
        self
    }
}

fn hex(bytes: &[u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Which of `shards` keeps the key with these bytes (see `SessionId::shard`).
pub fn shard(bytes: &[u8; 16], shards: u32) -> u32 {
    let [a, b, c, d, ..] = *bytes;
    u32::from_le_bytes([a, b, c, d]) % shards.max(1)
}

/// Reads 32 hex digits, or (as stored before) an array of 16 numbers.
struct Id16Visitor;

impl<'de> Visitor<'de> for Id16Visitor {
    type Value = [u8; 16];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("32 hex digits or 16 bytes")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<[u8; 16], E> {
        from_hex(s).ok_or_else(|| E::custom("not a 32-digit hex id"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 16], A::Error> {
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<u8>()?.is_some() {
            return Err(de::Error::invalid_length(17, &self));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_key_hashes_from_all_its_bytes() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<MacKeyHasher>::default();
        let base = build.hash_one(CookieHash([0; 16]));
        for i in 0..16 {
            let mut bytes = [0u8; 16];
            bytes[i] = 1;
            assert_ne!(
                build.hash_one(CookieHash(bytes)),
                base,
                "byte {i} is not mixed in"
            );
        }
        let mut map = MacMap::default();
        map.insert(CookieHash([3; 16]), 1);
        assert_eq!(map.get(&CookieHash([3; 16])), Some(&1));
        assert_eq!(map.get(&CookieHash([4; 16])), None);
    }

    #[test]
    fn ids_are_hex_in_json_and_plain_bytes_in_postcard() {
        let id = SessionId([0xab; 16]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(16)));
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), id);
        // What the Worker stored before these types: an array of numbers.
        let old = serde_json::to_string(&[0xabu8; 16]).unwrap();
        assert_eq!(serde_json::from_str::<SessionId>(&old).unwrap(), id);
        assert!(serde_json::from_str::<SessionId>("\"abc\"").is_err());
        assert!(serde_json::from_str::<SessionId>("[1,2]").is_err());
        // Postcard: the same 16 bytes as a bare array, so shared data keeps its layout.
        let bytes = postcard::to_allocvec(&CookieHash([7; 16])).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&[7u8; 16]).unwrap());
        assert_eq!(
            postcard::from_bytes::<CookieHash>(&bytes).unwrap(),
            CookieHash([7; 16])
        );
        assert_eq!(format!("{:?}", UserKey([0x12; 16])), "UserKey(12121212)");
    }

    #[test]
    fn shards_spread_and_stay_in_range() {
        let mut seen = [0u32; 4];
        for i in 0..=255u8 {
            let mut h = [0u8; 16];
            h[0] = i;
            h[1] = i.wrapping_mul(7);
            seen[CookieHash(h).shard(4) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 0), "{seen:?}");
        assert_eq!(CookieHash([9; 16]).shard(1), 0);
        assert_eq!(CookieHash([9; 16]).shard(0), 0);
    }
}
