//! A bounded per-VM memo of cookie hashes, so a cookie seen before costs a SipHash
//! and a lookup instead of an HMAC-SHA-256.
//!
//! The stored form of a cookie stays the HMAC ([`CookieHasher`]); this cache only
//! remembers, for cookie values this VM has already hashed, which HMAC they gave. It
//! is keyed by a 128-bit SipHash-2-4 tag of the value under a random per-VM key, so
//! no raw cookie value is kept, and a tag collision (which would make one cookie
//! answer for another) needs a 2^-128 chance or the key. Its size is fixed: a
//! two-way set-associative array of `capacity` slots, allocated on first use; a
//! flood of random cookies only evicts entries, it never grows memory.

use crate::session::{CookieHash, CookieHasher};
use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// SipHash tag of the cookie value; 0 marks an empty slot.
    tag: u128,
    hash: CookieHash,
}

/// Cookie value → HMAC cookie hash, for the values seen most recently.
pub struct CookieCache {
    sip: SipHasher24,
    /// Two slots per set; the first is the more recently used.
    slots: Vec<Slot>,
    sets: usize,
    pub hits: u64,
    pub misses: u64,
}

/// Bytes one cached cookie takes (capacity × this is the cache's whole memory).
pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>();

impl CookieCache {
    /// `capacity` slots (rounded up to a power of two, at least 2); `key` must be
    /// secret and random per VM.
    pub fn new(key: [u8; 16], capacity: usize) -> Self {
        let sets = (capacity.max(2) / 2).next_power_of_two();
        Self {
            sip: SipHasher24::new_with_key(&key),
            slots: Vec::new(),
            sets,
            hits: 0,
            misses: 0,
        }
    }

    /// Slots the cache holds once in use.
    pub fn capacity(&self) -> usize {
        self.sets * 2
    }

    /// Bytes of memory the slots take (0 until the first insertion).
    pub fn allocated_bytes(&self) -> usize {
        self.slots.capacity() * SLOT_BYTES
    }

    fn tag(&self, value: &[u8]) -> u128 {
        let mut h = self.sip;
        h.write(value);
        h.finish128().as_u128()
    }

    /// `hasher.hash(value)`, from the cache when `value` was hashed recently.
    pub fn hash(&mut self, hasher: &CookieHasher, value: &[u8]) -> CookieHash {
        let tag = self.tag(value);
        if tag == 0 {
            // The empty marker: never cached (a 2^-128 event).
            self.misses += 1;
            return hasher.hash(value);
        }
        let set = (tag as usize) & (self.sets - 1);
        let first = set * 2;
        if let Some([a, b]) = self.slots.get_mut(first..first + 2) {
            if a.tag == tag {
                self.hits += 1;
                return a.hash;
            }
            if b.tag == tag {
                self.hits += 1;
                std::mem::swap(a, b);
                return a.hash;
            }
        }
        self.misses += 1;
        let hash = hasher.hash(value);
        if self.slots.is_empty() {
            self.slots = vec![Slot::default(); self.sets * 2];
        }
        if let Some([a, b]) = self.slots.get_mut(first..first + 2) {
            // The older way goes; the new entry becomes the most recent.
            *b = *a;
            *a = Slot { tag, hash };
        }
        hash
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn gives_the_hmac_and_hits_on_repeats() {
        let h = CookieHasher::new(b"secret");
        let mut c = CookieCache::new([7; 16], 64);
        assert_eq!(c.allocated_bytes(), 0);
        for _ in 0..3 {
            for v in [&b"one"[..], b"two", b"three"] {
                assert_eq!(c.hash(&h, v), h.hash(v));
            }
        }
        assert_eq!((c.misses, c.hits), (3, 6));
    }

    #[test]
    fn a_flood_of_random_cookies_does_not_grow_it() {
        let h = CookieHasher::new(b"secret");
        let mut c = CookieCache::new([1; 16], 1000);
        assert_eq!(c.capacity(), 1024);
        c.hash(&h, b"warm");
        let bytes = c.allocated_bytes();
        assert_eq!(bytes, 1024 * SLOT_BYTES);
        for i in 0..50_000u32 {
            let v = format!("random-{i}-{}", i.wrapping_mul(2_654_435_761));
            assert_eq!(c.hash(&h, v.as_bytes()), h.hash(v.as_bytes()));
        }
        assert_eq!(c.allocated_bytes(), bytes);
        // Still right (and cached again) after the flood.
        assert_eq!(c.hash(&h, b"warm"), h.hash(b"warm"));
        assert_eq!(c.hash(&h, b"warm"), h.hash(b"warm"));
        assert!(c.hits >= 1);
    }

    #[test]
    fn a_working_set_under_capacity_stays_cached() {
        let h = CookieHasher::new(b"secret");
        let mut c = CookieCache::new([3; 16], 4096);
        let values: Vec<String> = (0..1000).map(|i| format!("session-{i}")).collect();
        for v in &values {
            c.hash(&h, v.as_bytes());
        }
        let before = c.misses;
        for v in &values {
            assert_eq!(c.hash(&h, v.as_bytes()), h.hash(v.as_bytes()));
        }
        // Two ways per set: the few sets that drew three or more values miss, the
        // rest (over 90 %) hit.
        assert!(c.misses - before < 100, "{} misses", c.misses - before);
    }

    #[test]
    fn the_key_changes_the_tags() {
        let a = CookieCache::new([1; 16], 8);
        let b = CookieCache::new([2; 16], 8);
        assert_ne!(a.tag(b"v"), b.tag(b"v"));
    }
}
