//! Lookups of credentials Headcount does not know (`whoami.begin_unknown`):
//! sessions that began before Headcount saw their login. A request's cookie or
//! opaque token is kept from its headers until a flush shows its session is
//! unknown (`Candidates`); then the app is asked, within a budget (`Window`
//! per second, `max_in_flight` by the host), unless it named nobody for that
//! credential lately (`Nobody`). Random or forged cookies thus cost the app at
//! most `lookups_per_second`; every outcome is counted (`Counts`).

use super::Credential;
use crate::ids::CookieHash;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Credentials kept per VM or isolate, waiting for a flush's verdict.
pub const MAX_CANDIDATES: usize = 512;
/// A candidate this recent is kept by `prune` even without pending activity:
/// its request may still be in flight (activity is buffered when it ends).
pub const CANDIDATE_GRACE_MS: u64 = 30_000;
/// Credentials remembered as nobody's, per VM or isolate.
pub const MAX_NOBODY: usize = 4096;

/// Lookups sent in the current second: shared by a node's workers (Envoy
/// shared data) or kept per isolate.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub second: u64,
    pub used: u32,
}

impl Window {
    /// Takes one lookup from this second's allowance, if any is left.
    pub fn admit(&mut self, now_ms: u64, per_second: u32) -> bool {
        let second = now_ms / 1000;
        if second != self.second {
            *self = Window { second, used: 0 };
        }
        if self.used >= per_second {
            return false;
        }
        self.used += 1;
        true
    }
}

/// What the host keeps of a request whose session may be unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub credential: Credential,
    pub ip: String,
    pub user_agent: String,
    /// The request's `:authority` (Envoy's call uses it).
    pub authority: Vec<u8>,
}

/// Candidates by credential hash, bounded: past `MAX_CANDIDATES` new ones are
/// not kept (their sessions begin at a later request).
#[derive(Debug, Default)]
pub struct Candidates {
    /// Each with when it was kept.
    by_hash: HashMap<CookieHash, (Candidate, u64)>,
}

impl Candidates {
    /// Whether a request with this credential should be kept (one per hash).
    pub fn wants(&self, hash: &CookieHash) -> bool {
        self.by_hash.len() < MAX_CANDIDATES && !self.by_hash.contains_key(hash)
    }

    pub fn add(&mut self, hash: CookieHash, candidate: Candidate, now: u64) {
        if self.wants(&hash) {
            self.by_hash.insert(hash, (candidate, now));
        }
    }

    /// Whether a request with this credential was kept.
    pub fn has(&self, hash: &CookieHash) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// The candidate of a credential the flush found unknown.
    pub fn take(&mut self, hash: &CookieHash) -> Option<Candidate> {
        self.by_hash.remove(hash).map(|(c, _)| c)
    }

    /// A credential the flush found known: nothing to ask.
    pub fn forget(&mut self, hash: &CookieHash) {
        self.by_hash.remove(hash);
    }

    /// Drops the candidates no flush will answer for: not `pending` (their
    /// activity left the buffer with a logout, a rotation or the buffer's
    /// bound) and older than `CANDIDATE_GRACE_MS`. So a raw credential is held
    /// until its flush, or that long.
    pub fn prune(&mut self, now: u64, pending: impl Fn(&CookieHash) -> bool) {
        self.by_hash
            .retain(|h, (_, at)| pending(h) || now.saturating_sub(*at) < CANDIDATE_GRACE_MS);
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// Credentials the app named nobody for, until their time is up. Bounded: at
/// the bound the expired go first, then the soonest to expire.
#[derive(Debug, Default)]
pub struct Nobody {
    until: HashMap<CookieHash, u64>,
}

impl Nobody {
    pub fn holds(&self, hash: &CookieHash, now: u64) -> bool {
        self.until.get(hash).is_some_and(|t| *t > now)
    }

    pub fn remember(&mut self, hash: CookieHash, until: u64, now: u64) {
        if self.until.len() >= MAX_NOBODY && !self.until.contains_key(&hash) {
            self.until.retain(|_, t| *t > now);
            if self.until.len() >= MAX_NOBODY {
                if let Some(first) = self.until.iter().min_by_key(|(_, t)| **t).map(|(h, _)| *h) {
                    self.until.remove(&first);
                }
            }
        }
        self.until.insert(hash, until);
    }
}

/// What an answer about an unknown credential leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The app named someone: start this session (as a token's first request
    /// does: its id derives from the key, so two workers that begin it at once
    /// write one session; a live or revoked key is left alone).
    Begin(crate::session::Session),
    /// The app named nobody (or did not answer): not asked again until `until`.
    Nobody { until: u64 },
}

/// The verdict on credential `hash` (its request's `(ip, user_agent)`) from the
/// app's `answer` (`Whoami::answer`; `None`: nobody, a failure or a timeout).
pub fn verdict(
    cfg: &crate::config::Config,
    hasher: &crate::session::CookieHasher,
    hash: CookieHash,
    (ip, ua): (String, String),
    answer: Option<crate::identity::Identity>,
    now: u64,
) -> Verdict {
    let ttl = cfg.whoami.as_ref().map_or(0, |w| w.unknown_ttl_ms);
    let session =
        answer.and_then(|who| crate::bearer::start_session(cfg, hasher, hash, who, ip, ua, now));
    match session {
        Some(s) => Verdict::Begin(s),
        None => Verdict::Nobody {
            until: now.saturating_add(ttl),
        },
    }
}

/// What the lookups of unknown credentials came to, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// The app named someone: a session began.
    pub begun: u64,
    /// The app named nobody, or did not answer in time.
    pub nobody: u64,
    /// Not asked: over `lookups_per_second` or `max_in_flight`.
    pub throttled: u64,
}

impl Counts {
    /// One lookup that named nobody.
    pub const NOBODY: Counts = Counts {
        begun: 0,
        nobody: 1,
        throttled: 0,
    };
    /// One lookup that began a session.
    pub const BEGUN: Counts = Counts {
        begun: 1,
        nobody: 0,
        throttled: 0,
    };

    pub fn add(&mut self, other: Counts) {
        self.begun += other.begun;
        self.nobody += other.nobody;
        self.throttled += other.throttled;
    }

    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> CookieHash {
        CookieHash([n; 16])
    }

    #[test]
    fn a_window_admits_its_rate_per_second() {
        let mut w = Window::default();
        let admitted = (0..10).filter(|_| w.admit(5_000, 3)).count();
        assert_eq!(admitted, 3);
        assert!(!w.admit(5_999, 3));
        assert!(w.admit(6_000, 3), "a new second, a new allowance");
    }

    #[test]
    fn candidates_are_bounded_and_one_per_credential() {
        let mut c = Candidates::default();
        let cand = Candidate {
            credential: Credential::cookie("sid", b"x"),
            ip: String::new(),
            user_agent: String::new(),
            authority: Vec::new(),
        };
        for i in 0..=MAX_CANDIDATES {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            c.add(CookieHash(bytes), cand.clone(), 1_000);
        }
        assert_eq!(c.len(), MAX_CANDIDATES);
        assert!(!c.wants(&h(255)));
        // Recent ones stay (their requests may be in flight); old ones go
        // unless their activity is pending.
        c.prune(1_000 + CANDIDATE_GRACE_MS - 1, |_| false);
        assert_eq!(c.len(), MAX_CANDIDATES);
        let first = CookieHash([0; 16]);
        c.prune(1_000 + CANDIDATE_GRACE_MS, |x| *x == first);
        assert_eq!(c.len(), 1);
        c.take(&first);
        assert!(c.is_empty() && c.wants(&h(1)));
        c.add(h(1), cand.clone(), 0);
        assert!(!c.wants(&h(1)));
        assert_eq!(c.take(&h(1)), Some(cand));
    }

    #[test]
    fn nobody_is_remembered_for_a_while_and_bounded() {
        let mut n = Nobody::default();
        n.remember(h(1), 2_000, 1_000);
        assert!(n.holds(&h(1), 1_999));
        assert!(!n.holds(&h(1), 2_000));
        for i in 0..(MAX_NOBODY as u64 + 10) {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&i.to_le_bytes());
            n.remember(CookieHash(bytes), 10_000 + i, 1_000);
        }
        assert!(n.until.len() <= MAX_NOBODY);
    }
}
