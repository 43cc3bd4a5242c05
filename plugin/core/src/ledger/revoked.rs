//! A node's copy of the revoked cookie values (`enforce_revocation`), so a
//! request with a revoked session's cookie is refused before it reaches the app
//! without a ledger request on the request path.
//!
//! Filled at once when the node handles a revocation, loaded from shard 0 once
//! (before its first request with a cookie is let through), and refreshed from
//! every flush reply: each batch says which revision of the shard's list the node
//! holds, and the shard sends its list when that changed. Plain data, no I/O.

use super::wire::RevokedList;
use crate::ids::CookieHash;
use std::collections::HashMap;

/// Revoked values kept per node (the shards send at most `MAX_REVOKED_SYNC`);
/// when full, the ones that would be forgotten soonest go first.
pub const MAX_REVOKED: usize = 20_000;

#[derive(Default)]
pub struct RevokedSet {
    /// Cookie hash -> until when it is revoked (the session's deadline).
    until: HashMap<CookieHash, u64>,
    /// Revision of each shard's list this node has merged.
    revs: HashMap<u32, u64>,
    /// Whether shard 0's list was loaded once (then refreshes come with flushes).
    pub loaded: bool,
    /// When loading last failed: retried at most once a second.
    pub failed_at: Option<u64>,
}

impl RevokedSet {
    pub fn is_revoked(&self, hash: &CookieHash, now: u64) -> bool {
        self.until.get(hash).is_some_and(|t| *t >= now)
    }

    /// The revision of `shard`'s list this node holds (0: none).
    pub fn rev(&self, shard: u32) -> u64 {
        self.revs.get(&shard).copied().unwrap_or(0)
    }

    /// Adds revoked values (a later `until` wins), within `MAX_REVOKED`.
    pub fn add(&mut self, entries: impl IntoIterator<Item = (CookieHash, u64)>, now: u64) {
        for (h, t) in entries {
            if t >= now {
                let e = self.until.entry(h).or_insert(t);
                *e = (*e).max(t);
            }
        }
        if self.until.len() > MAX_REVOKED {
            self.until.retain(|_, t| *t >= now);
        }
        if self.until.len() > MAX_REVOKED {
            let mut all: Vec<(CookieHash, u64)> = self.until.drain().collect();
            all.sort_by_key(|e| std::cmp::Reverse(e.1));
            all.truncate(MAX_REVOKED);
            self.until = all.into_iter().collect();
        }
    }

    /// Merges shard `shard`'s list at its revision. Lists of different shards
    /// overlap (every shard keeps all revocations), so they are added, not swapped;
    /// values past their time simply stop counting.
    pub fn sync(&mut self, shard: u32, list: RevokedList, now: u64) {
        self.revs.insert(shard, list.rev);
        self.add(list.entries, now);
    }

    /// Every value held, with until when.
    pub fn entries(&self) -> impl Iterator<Item = (CookieHash, u64)> + '_ {
        self.until.iter().map(|(h, t)| (*h, *t))
    }

    /// Revoked values held.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> CookieHash {
        CookieHash([n; 16])
    }

    #[test]
    fn revoked_until_the_deadline_inclusive() {
        let mut r = RevokedSet::default();
        r.add([(h(1), 100), (h(2), 50)], 10);
        assert!(r.is_revoked(&h(1), 100));
        assert!(!r.is_revoked(&h(1), 101));
        assert!(r.is_revoked(&h(2), 50));
        assert!(!r.is_revoked(&h(3), 10));
        // Already over: not even kept.
        r.add([(h(4), 5)], 10);
        assert_eq!(r.len(), 2);
        // A later deadline wins, an earlier one does not shorten.
        r.add([(h(2), 200), (h(1), 20)], 10);
        assert!(r.is_revoked(&h(2), 200));
        assert!(r.is_revoked(&h(1), 100));
    }

    #[test]
    fn sync_tracks_each_shards_revision_and_merges() {
        let mut r = RevokedSet::default();
        assert_eq!(r.rev(0), 0);
        r.sync(
            0,
            RevokedList {
                rev: 3,
                entries: vec![(h(1), 100)],
            },
            0,
        );
        r.sync(
            1,
            RevokedList {
                rev: 7,
                entries: vec![(h(2), 100)],
            },
            0,
        );
        assert_eq!((r.rev(0), r.rev(1), r.rev(2)), (3, 7, 0));
        assert!(r.is_revoked(&h(1), 1) && r.is_revoked(&h(2), 1));
    }

    #[test]
    fn bounded_keeping_the_longest_lasting() {
        let mut r = RevokedSet::default();
        let entries = (0..MAX_REVOKED as u64 + 10).map(|i| {
            let mut x = [0u8; 16];
            x[..8].copy_from_slice(&i.to_le_bytes());
            (CookieHash(x), 1_000 + i)
        });
        r.add(entries, 0);
        assert_eq!(r.len(), MAX_REVOKED);
        let mut first = [0u8; 16];
        first[..8].copy_from_slice(&0u64.to_le_bytes());
        assert!(
            !r.is_revoked(&CookieHash(first), 0),
            "the soonest-ending went first"
        );
        let mut last = [0u8; 16];
        last[..8].copy_from_slice(&(MAX_REVOKED as u64 + 9).to_le_bytes());
        assert!(r.is_revoked(&CookieHash(last), 0));
    }
}
