//! What the ledger needs from a store: rows by key and a few indexed queries.
//! A Durable Object implements it over SQLite, the collector over Redis, and
//! `MemoryLedger` over maps. Every rule lives in `apply.rs`; a store only keeps
//! rows and finds candidates, so the same rules hold whatever the store.

use crate::events::Events;
use crate::history::History;
use crate::ids::{CookieHash, NodeId, SessionId, UserKey};
use crate::session::Session;
use crate::traffic::Traffic;

/// A row of the cookie index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieRow {
    /// Leads to session `id` until `until`.
    Session { id: SessionId, until: u64 },
    /// Arrived before its session (from another node): it rotated on to `next`
    /// (`None`: logged out). Kept until `until`, waiting for the session's entry.
    Orphan {
        next: Option<CookieHash>,
        until: u64,
    },
}

/// The earliest times in a store, from which the ledger computes when something
/// next expires (`Ledger::next_expiry`). `None`: no such row.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Minima {
    pub last_ms: Option<u64>,
    pub login_ms: Option<u64>,
    pub cookie_until: Option<u64>,
    pub revoked_until: Option<u64>,
    /// The oldest remembered batch (`Applied::at`).
    pub applied_at: Option<u64>,
}

/// The last sequenced batch a shard applied for one node: its number, the reply
/// it gave (JSON), and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub seq: u64,
    pub reply: String,
    pub at: u64,
}

/// Rows held: sessions, cookie entries, revoked values.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    pub sessions: u64,
    pub cookies: u64,
    pub revoked: u64,
}

/// One shard's rows. Each call is one statement; a host runs a whole batch
/// without interleaving (a Durable Object is single-threaded; the collector
/// holds the shard's lock), so a batch sees its own writes and nobody else's.
pub trait LedgerStore {
    type Error: std::fmt::Display;

    // Sessions, by id.
    fn session(&mut self, id: &SessionId) -> Result<Option<Session>, Self::Error>;
    /// Adds or replaces the session with the same id.
    fn put_session(&mut self, s: &Session) -> Result<(), Self::Error>;
    /// Moves the session's last activity forward to `last_ms` (never back).
    /// Whether the session exists.
    fn touch(&mut self, id: &SessionId, last_ms: u64) -> Result<bool, Self::Error>;
    /// A session's login time and last activity (what its expiry depends on).
    /// Stores that keep them apart from the session override this.
    fn times(&mut self, id: &SessionId) -> Result<Option<(u64, u64)>, Self::Error> {
        Ok(self.session(id)?.map(|s| (s.login_ms, s.last_ms)))
    }
    fn delete_session(&mut self, id: &SessionId) -> Result<Option<Session>, Self::Error>;
    fn session_count(&mut self) -> Result<u64, Self::Error>;
    /// The `n` sessions seen longest ago (then longest logged in), other than `keep`.
    fn longest_idle(&mut self, n: u64, keep: &SessionId) -> Result<Vec<SessionId>, Self::Error>;
    /// Sessions seen at or after `since`.
    fn sessions_seen_since(&mut self, since: u64) -> Result<Vec<Session>, Self::Error>;
    /// Sessions seen before `idle_before` or logged in before `login_before`: a
    /// superset of the expired ones (the ledger decides with `Session::is_expired`).
    fn expiry_candidates(
        &mut self,
        idle_before: u64,
        login_before: u64,
    ) -> Result<Vec<Session>, Self::Error>;

    // The cookie index, by cookie hash.
    fn cookie(&mut self, hash: &CookieHash) -> Result<Option<CookieRow>, Self::Error>;
    /// Points `hash` at session `id` until `until` (adds or replaces the entry).
    fn index(&mut self, hash: &CookieHash, id: &SessionId, until: u64) -> Result<(), Self::Error>;
    fn put_orphan(
        &mut self,
        hash: &CookieHash,
        next: Option<CookieHash>,
        until: u64,
    ) -> Result<(), Self::Error>;
    /// Shortens the entry of `hash` for session `id` to end no later than `until`.
    fn shorten(&mut self, hash: &CookieHash, id: &SessionId, until: u64)
        -> Result<(), Self::Error>;
    /// Removes the entry of `hash` if it leads to session `id`.
    fn unindex(&mut self, hash: &CookieHash, id: &SessionId) -> Result<(), Self::Error>;
    fn delete_cookie(&mut self, hash: &CookieHash) -> Result<(), Self::Error>;
    /// Removes entries past their time (`until < now`); how many.
    fn delete_cookies_before(&mut self, now: u64) -> Result<u64, Self::Error>;
    /// Entries that lead to session `id` and are still valid at `now`.
    fn cookies_of_session(
        &mut self,
        id: &SessionId,
        now: u64,
    ) -> Result<Vec<CookieHash>, Self::Error>;

    // The per-user index (`max_sessions_per_user`), by user key.
    /// Adds `id` to `user`'s sessions; returns all of them, oldest login first.
    fn user_add(
        &mut self,
        user: &UserKey,
        id: &SessionId,
        login_ms: u64,
    ) -> Result<Vec<SessionId>, Self::Error>;
    fn user_remove(&mut self, user: &UserKey, id: &SessionId) -> Result<(), Self::Error>;
    /// Forgets entries of sessions that logged in before `login_before`.
    fn users_prune(&mut self, login_before: u64) -> Result<(), Self::Error>;

    // Revoked cookie values (`enforce_revocation`); every shard keeps them all.
    /// Remembers `hashes` until `until` (a later time wins) and bumps the revision.
    fn revoke(&mut self, hashes: &[CookieHash], until: u64) -> Result<(), Self::Error>;
    fn is_revoked(&mut self, hash: &CookieHash, now: u64) -> Result<bool, Self::Error>;
    /// The list's revision: 0 before any revocation, changed by every change.
    fn revoked_rev(&mut self) -> Result<u64, Self::Error>;
    /// The `limit` values that stay revoked longest.
    fn revoked(&mut self, limit: usize) -> Result<Vec<(CookieHash, u64)>, Self::Error>;
    /// Forgets values past their time (bumping the revision if any); how many.
    fn delete_revoked_before(&mut self, now: u64) -> Result<u64, Self::Error>;

    // Whole values.
    fn events(&mut self) -> Result<Events, Self::Error>;
    fn put_events(&mut self, e: &Events) -> Result<(), Self::Error>;
    fn history(&mut self) -> Result<History, Self::Error>;
    fn put_history(&mut self, h: &History) -> Result<(), Self::Error>;
    fn traffic(&mut self) -> Result<Traffic, Self::Error>;
    fn put_traffic(&mut self, t: &Traffic) -> Result<(), Self::Error>;
    /// Small named values: the cookie hash secret, whether history is sampled.
    fn meta(&mut self, key: &str) -> Result<Option<String>, Self::Error>;
    fn put_meta(&mut self, key: &str, value: &str) -> Result<(), Self::Error>;

    // The last sequenced batch of each node (`Batch::origin`).
    fn applied(&mut self, origin: &NodeId) -> Result<Option<Applied>, Self::Error>;
    fn put_applied(&mut self, origin: &NodeId, applied: &Applied) -> Result<(), Self::Error>;
    /// Forgets batches applied before `before`; how many.
    fn forget_applied_before(&mut self, before: u64) -> Result<u64, Self::Error>;

    /// A batch's ops before they are applied, for a store whose reads are round
    /// trips (Redis) to fetch what they will read in one go. Changes nothing;
    /// the default does nothing.
    fn prefetch(&mut self, _ops: &[super::wire::Op]) -> Result<(), Self::Error> {
        Ok(())
    }

    // For the alarm and operators.
    fn minima(&mut self) -> Result<Minima, Self::Error>;
    fn rows(&mut self) -> Result<Rows, Self::Error>;
}
