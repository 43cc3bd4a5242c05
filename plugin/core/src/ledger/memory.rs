//! `MemoryLedger`: one shard's rows in ordered maps. For one process (the
//! collector's `--store memory`, the demo) and for testing the ledger's rules
//! natively; it keeps nothing across a restart.

use super::store::{Applied, CookieRow, LedgerStore, Minima, Rows};
use crate::events::Events;
use crate::history::History;
use crate::ids::{CookieHash, NodeId, SessionId, UserKey};
use crate::session::Session;
use crate::traffic::Traffic;
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

/// Nothing can fail in memory.
type R<T> = Result<T, Infallible>;

#[derive(Debug, Default, Clone)]
pub struct MemoryLedger {
    sessions: BTreeMap<SessionId, Session>,
    cookies: BTreeMap<CookieHash, CookieRow>,
    /// user -> (login, session)
    users: BTreeMap<UserKey, BTreeSet<(u64, SessionId)>>,
    revoked: BTreeMap<CookieHash, u64>,
    revoked_rev: u64,
    events: Events,
    history: History,
    traffic: Traffic,
    meta: BTreeMap<String, String>,
    applied: BTreeMap<NodeId, Applied>,
}

fn until_of(row: &CookieRow) -> u64 {
    match row {
        CookieRow::Session { until, .. } | CookieRow::Orphan { until, .. } => *until,
    }
}

impl LedgerStore for MemoryLedger {
    type Error = Infallible;

    fn session(&mut self, id: &SessionId) -> R<Option<Session>> {
        Ok(self.sessions.get(id).cloned())
    }

    fn put_session(&mut self, s: &Session) -> R<()> {
        self.sessions.insert(s.id, s.clone());
        Ok(())
    }

    fn touch(&mut self, id: &SessionId, last_ms: u64) -> R<bool> {
        Ok(match self.sessions.get_mut(id) {
            Some(s) => {
                s.last_ms = s.last_ms.max(last_ms);
                true
            }
            None => false,
        })
    }

    fn delete_session(&mut self, id: &SessionId) -> R<Option<Session>> {
        Ok(self.sessions.remove(id))
    }

    fn session_count(&mut self) -> R<u64> {
        Ok(self.sessions.len() as u64)
    }

    fn longest_idle(&mut self, n: u64, keep: &SessionId) -> R<Vec<SessionId>> {
        let mut all: Vec<(u64, u64, SessionId)> = self
            .sessions
            .values()
            .filter(|s| s.id != *keep)
            .map(|s| (s.last_ms, s.login_ms, s.id))
            .collect();
        all.sort();
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        Ok(all.into_iter().take(n).map(|(_, _, id)| id).collect())
    }

    fn sessions_seen_since(&mut self, since: u64) -> R<Vec<Session>> {
        Ok(self
            .sessions
            .values()
            .filter(|s| s.last_ms >= since)
            .cloned()
            .collect())
    }

    fn expiry_candidates(&mut self, idle_before: u64, login_before: u64) -> R<Vec<Session>> {
        Ok(self
            .sessions
            .values()
            .filter(|s| s.last_ms < idle_before || s.login_ms < login_before)
            .cloned()
            .collect())
    }

    fn cookie(&mut self, hash: &CookieHash) -> R<Option<CookieRow>> {
        Ok(self.cookies.get(hash).copied())
    }

    fn index(&mut self, hash: &CookieHash, id: &SessionId, until: u64) -> R<()> {
        self.cookies
            .insert(*hash, CookieRow::Session { id: *id, until });
        Ok(())
    }

    fn put_orphan(&mut self, hash: &CookieHash, next: Option<CookieHash>, until: u64) -> R<()> {
        self.cookies
            .insert(*hash, CookieRow::Orphan { next, until });
        Ok(())
    }

    fn shorten(&mut self, hash: &CookieHash, id: &SessionId, until: u64) -> R<()> {
        if let Some(CookieRow::Session { id: s, until: u }) = self.cookies.get_mut(hash) {
            if s == id {
                *u = (*u).min(until);
            }
        }
        Ok(())
    }

    fn unindex(&mut self, hash: &CookieHash, id: &SessionId) -> R<()> {
        if matches!(self.cookies.get(hash), Some(CookieRow::Session { id: s, .. }) if s == id) {
            self.cookies.remove(hash);
        }
        Ok(())
    }

    fn delete_cookie(&mut self, hash: &CookieHash) -> R<()> {
        self.cookies.remove(hash);
        Ok(())
    }

    fn delete_cookies_before(&mut self, now: u64) -> R<u64> {
        let before = self.cookies.len();
        self.cookies.retain(|_, r| until_of(r) >= now);
        Ok((before - self.cookies.len()) as u64)
    }

    fn cookies_of_session(&mut self, id: &SessionId, now: u64) -> R<Vec<CookieHash>> {
        Ok(self
            .cookies
            .iter()
            .filter(|(_, r)| matches!(r, CookieRow::Session { id: s, until } if s == id && *until >= now))
            .map(|(h, _)| *h)
            .collect())
    }

    fn user_add(&mut self, user: &UserKey, id: &SessionId, login_ms: u64) -> R<Vec<SessionId>> {
        let list = self.users.entry(*user).or_default();
        list.retain(|(_, s)| s != id);
        list.insert((login_ms, *id));
        Ok(list.iter().map(|(_, s)| *s).collect())
    }

    fn user_remove(&mut self, user: &UserKey, id: &SessionId) -> R<()> {
        if let Some(list) = self.users.get_mut(user) {
            list.retain(|(_, s)| s != id);
            if list.is_empty() {
                self.users.remove(user);
            }
        }
        Ok(())
    }

    fn users_prune(&mut self, login_before: u64) -> R<()> {
        for list in self.users.values_mut() {
            list.retain(|(login, _)| *login >= login_before);
        }
        self.users.retain(|_, l| !l.is_empty());
        Ok(())
    }

    fn revoke(&mut self, hashes: &[CookieHash], until: u64) -> R<()> {
        for h in hashes {
            let t = self.revoked.entry(*h).or_insert(until);
            *t = (*t).max(until);
        }
        self.revoked_rev += 1;
        Ok(())
    }

    fn is_revoked(&mut self, hash: &CookieHash, now: u64) -> R<bool> {
        Ok(self.revoked.get(hash).is_some_and(|t| *t >= now))
    }

    fn revoked_rev(&mut self) -> R<u64> {
        Ok(self.revoked_rev)
    }

    fn revoked(&mut self, limit: usize) -> R<Vec<(CookieHash, u64)>> {
        let mut all: Vec<(CookieHash, u64)> = self.revoked.iter().map(|(h, t)| (*h, *t)).collect();
        all.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
        all.truncate(limit);
        Ok(all)
    }

    fn delete_revoked_before(&mut self, now: u64) -> R<u64> {
        let before = self.revoked.len();
        self.revoked.retain(|_, t| *t >= now);
        let gone = (before - self.revoked.len()) as u64;
        if gone > 0 {
            self.revoked_rev += 1;
        }
        Ok(gone)
    }

    fn events(&mut self) -> R<Events> {
        Ok(self.events.clone())
    }

    fn put_events(&mut self, e: &Events) -> R<()> {
        self.events = e.clone();
        Ok(())
    }

    fn history(&mut self) -> R<History> {
        Ok(self.history.clone())
    }

    fn put_history(&mut self, h: &History) -> R<()> {
        self.history = h.clone();
        Ok(())
    }

    fn traffic(&mut self) -> R<Traffic> {
        Ok(self.traffic.clone())
    }

    fn put_traffic(&mut self, t: &Traffic) -> R<()> {
        self.traffic = t.clone();
        Ok(())
    }

    fn meta(&mut self, key: &str) -> R<Option<String>> {
        Ok(self.meta.get(key).cloned())
    }

    fn put_meta(&mut self, key: &str, value: &str) -> R<()> {
        self.meta.insert(key.to_string(), value.to_string());
        Ok(())
    }

    fn applied(&mut self, origin: &NodeId) -> R<Option<Applied>> {
        Ok(self.applied.get(origin).cloned())
    }

    fn put_applied(&mut self, origin: &NodeId, applied: &Applied) -> R<()> {
        self.applied.insert(*origin, applied.clone());
        Ok(())
    }

    fn forget_applied_before(&mut self, before: u64) -> R<u64> {
        let n = self.applied.len();
        self.applied.retain(|_, a| a.at >= before);
        Ok((n - self.applied.len()) as u64)
    }

    fn minima(&mut self) -> R<Minima> {
        Ok(Minima {
            last_ms: self.sessions.values().map(|s| s.last_ms).min(),
            login_ms: self.sessions.values().map(|s| s.login_ms).min(),
            cookie_until: self.cookies.values().map(until_of).min(),
            revoked_until: self.revoked.values().copied().min(),
            applied_at: self.applied.values().map(|a| a.at).min(),
        })
    }

    fn rows(&mut self) -> R<Rows> {
        Ok(Rows {
            sessions: self.sessions.len() as u64,
            cookies: self.cookies.len() as u64,
            revoked: self.revoked.len() as u64,
        })
    }
}
