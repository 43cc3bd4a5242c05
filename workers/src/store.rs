//! The SQLite side of the `Sessions` Durable Object: schema, rows <-> `Session`.
//! Every statement is synchronous (`state.storage().sql()`), so one batch runs
//! without interleaving and its writes are committed together.

use crate::protocol::Hash;
use headcount_core::events::Events;
use headcount_core::history::History;
use headcount_core::traffic::Traffic;
use headcount_core::{Config, CookieHash, Session};
use worker::{Result, SqlCursor, SqlStorage, SqlStorageValue as V, State};

const SCHEMA: &[&str] = &[
    // One row per live session (the core's `Session`), by session id.
    "CREATE TABLE IF NOT EXISTS sessions (
        id BLOB PRIMARY KEY,
        cookie BLOB NOT NULL,
        user_id TEXT NOT NULL,
        username TEXT NOT NULL,
        role TEXT NOT NULL,
        ip TEXT NOT NULL,
        user_agent TEXT NOT NULL,
        login_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        aliases BLOB NOT NULL
    ) WITHOUT ROWID",
    // Idle expiry and the stats' active window scan by last activity; the
    // maximum lifetime by login time.
    "CREATE INDEX IF NOT EXISTS sessions_by_last ON sessions (last_ms)",
    "CREATE INDEX IF NOT EXISTS sessions_by_login ON sessions (login_ms)",
    // The cookie index (the core's `CookieRef`): every cookie value that leads to a
    // session (its current one and rotated aliases) until `until_ms`. Orphans
    // (session NULL) are rotations (`next`) or logouts (`next` NULL) that arrived
    // before the session's own cookie entry, from another isolate.
    "CREATE TABLE IF NOT EXISTS cookies (
        hash BLOB PRIMARY KEY,
        session BLOB,
        until_ms INTEGER NOT NULL,
        next BLOB
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS cookies_by_until ON cookies (until_ms)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    // Cookie values of revoked sessions (`enforce_revocation`), until the session
    // would have ended anyway; every shard keeps the whole list.
    "CREATE TABLE IF NOT EXISTS revoked (hash BLOB PRIMARY KEY, until_ms INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS revoked_by_until ON revoked (until_ms)",
    // The per-user index (`max_sessions_per_user`), on the user's shard.
    "CREATE TABLE IF NOT EXISTS users (
        user BLOB NOT NULL,
        session BLOB NOT NULL,
        login_ms INTEGER NOT NULL,
        PRIMARY KEY (user, session)
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS users_by_login ON users (login_ms)",
];

const SESSION_COLUMNS: &str =
    "id, cookie, user_id, username, role, ip, user_agent, login_ms, last_ms, aliases";

/// A row of the cookie index.
pub enum CookieRow {
    /// Leads to session `id` until `until`.
    Session { id: Hash, until: u64 },
    /// Arrived before its session: it rotated on to `next` (`None`: logged out).
    Orphan { next: Option<Hash>, until: u64 },
}

pub struct Store {
    sql: SqlStorage,
}

fn blob(h: &Hash) -> V {
    V::Blob(h.0.to_vec())
}

fn int(v: u64) -> V {
    // Unix milliseconds fit a JavaScript safe integer until the year 287396.
    V::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

fn as_u64(v: Option<&V>) -> u64 {
    match v {
        Some(V::Integer(i)) => u64::try_from(*i).unwrap_or(0),
        Some(V::Float(f)) if *f >= 0.0 => *f as u64,
        _ => 0,
    }
}

fn as_text(v: Option<&V>) -> String {
    match v {
        Some(V::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn as_hash(v: Option<&V>) -> Option<Hash> {
    match v {
        Some(V::Blob(b)) => CookieHash::try_from(b.as_slice()).ok().map(Hash),
        _ => None,
    }
}

fn row_session(row: &[V]) -> Option<Session> {
    let id = as_hash(row.first())?;
    let cookie = as_hash(row.get(1))?;
    let aliases = match row.get(9) {
        Some(V::Blob(b)) => b
            .chunks_exact(16)
            .filter_map(|c| CookieHash::try_from(c).ok())
            .collect(),
        _ => Vec::new(),
    };
    Some(Session {
        id: id.0,
        user_id: as_text(row.get(2)),
        username: as_text(row.get(3)),
        role: as_text(row.get(4)),
        ip: as_text(row.get(5)),
        user_agent: as_text(row.get(6)),
        login_ms: as_u64(row.get(7)),
        last_ms: as_u64(row.get(8)),
        cookie: cookie.0,
        aliases,
    })
}

impl Store {
    pub fn new(state: &State) -> Self {
        Store {
            sql: state.storage().sql(),
        }
    }

    pub fn migrate(&self) -> Result<()> {
        for stmt in SCHEMA {
            self.exec(stmt, Vec::new())?;
        }
        Ok(())
    }

    fn rows(&self, query: &str, bindings: Vec<V>) -> Result<Vec<Vec<V>>> {
        let cursor: SqlCursor = self.sql.exec(query, bindings)?;
        cursor.raw().collect()
    }

    fn exec(&self, query: &str, bindings: Vec<V>) -> Result<()> {
        let cursor = self.sql.exec(query, bindings)?;
        // A statement has run completely once its cursor is drained.
        for row in cursor.raw() {
            row?;
        }
        Ok(())
    }

    pub fn session(&self, id: &Hash) -> Result<Option<Session>> {
        let q = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?");
        Ok(self
            .rows(&q, vec![blob(id)])?
            .first()
            .and_then(|r| row_session(r)))
    }

    pub fn put_session(&self, s: &Session) -> Result<()> {
        let aliases: Vec<u8> = s.aliases.iter().flatten().copied().collect();
        let q = format!(
            "INSERT OR REPLACE INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        self.exec(
            &q,
            vec![
                V::Blob(s.id.to_vec()),
                V::Blob(s.cookie.to_vec()),
                V::String(s.user_id.clone()),
                V::String(s.username.clone()),
                V::String(s.role.clone()),
                V::String(s.ip.clone()),
                V::String(s.user_agent.clone()),
                int(s.login_ms),
                int(s.last_ms),
                V::Blob(aliases),
            ],
        )?;
        Ok(())
    }

    /// Marks the session seen at `last_ms` (never moves it back in time).
    /// Returns whether the session exists.
    pub fn touch(&self, id: &Hash, last_ms: u64) -> Result<bool> {
        let exists = !self
            .rows("SELECT 1 FROM sessions WHERE id = ?", vec![blob(id)])?
            .is_empty();
        if exists {
            self.exec(
                "UPDATE sessions SET last_ms = ? WHERE id = ? AND last_ms < ?",
                vec![int(last_ms), blob(id), int(last_ms)],
            )?;
        }
        Ok(exists)
    }

    pub fn delete_session(&self, id: &Hash) -> Result<Option<Session>> {
        let s = self.session(id)?;
        if s.is_some() {
            self.exec("DELETE FROM sessions WHERE id = ?", vec![blob(id)])?;
        }
        Ok(s)
    }

    pub fn cookie(&self, hash: &Hash) -> Result<Option<CookieRow>> {
        Ok(self
            .rows(
                "SELECT session, until_ms, next FROM cookies WHERE hash = ?",
                vec![blob(hash)],
            )?
            .first()
            .map(|r| {
                let until = as_u64(r.get(1));
                match as_hash(r.first()) {
                    Some(id) => CookieRow::Session { id, until },
                    None => CookieRow::Orphan {
                        next: as_hash(r.get(2)),
                        until,
                    },
                }
            }))
    }

    /// Points `hash` at session `id` until `until` (adds or replaces the entry).
    pub fn index(&self, hash: &Hash, id: &Hash, until: u64) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO cookies (hash, session, until_ms, next) VALUES (?, ?, ?, NULL)",
            vec![blob(hash), blob(id), int(until)],
        )?;
        Ok(())
    }

    pub fn put_orphan(&self, hash: &Hash, next: Option<&Hash>, until: u64) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO cookies (hash, session, until_ms, next) VALUES (?, NULL, ?, ?)",
            vec![blob(hash), int(until), next.map_or(V::Null, blob)],
        )?;
        Ok(())
    }

    /// Shortens the entry of `hash` for session `id` to end no later than `until`.
    pub fn shorten(&self, hash: &Hash, id: &Hash, until: u64) -> Result<()> {
        self.exec(
            "UPDATE cookies SET until_ms = MIN(until_ms, ?) WHERE hash = ? AND session = ?",
            vec![int(until), blob(hash), blob(id)],
        )?;
        Ok(())
    }

    /// Removes the entry of `hash` if it leads to session `id`.
    pub fn unindex(&self, hash: &Hash, id: &Hash) -> Result<()> {
        self.exec(
            "DELETE FROM cookies WHERE hash = ? AND session = ?",
            vec![blob(hash), blob(id)],
        )?;
        Ok(())
    }

    pub fn delete_cookie(&self, hash: &Hash) -> Result<()> {
        self.exec("DELETE FROM cookies WHERE hash = ?", vec![blob(hash)])?;
        Ok(())
    }

    /// Removes cookie entries past their time; returns how many.
    pub fn delete_cookies_before(&self, now: u64) -> Result<u64> {
        let n = self.rows(
            "SELECT COUNT(*) FROM cookies WHERE until_ms < ?",
            vec![int(now)],
        )?;
        let n = as_u64(n.first().and_then(|r| r.first()));
        if n > 0 {
            self.exec("DELETE FROM cookies WHERE until_ms < ?", vec![int(now)])?;
        }
        Ok(n)
    }

    /// Sessions seen at or after `since` (uses the `last_ms` index).
    pub fn sessions_seen_since(&self, since: u64) -> Result<Vec<Session>> {
        let q = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE last_ms >= ?");
        Ok(self
            .rows(&q, vec![int(since)])?
            .iter()
            .filter_map(|r| row_session(r))
            .collect())
    }

    /// Sessions idle past the timeout or older than the maximum lifetime, by index;
    /// the caller decides with `Session::is_expired`.
    pub fn expiry_candidates(&self, now: u64, cfg: &Config) -> Result<Vec<Session>> {
        let q = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE last_ms < ? OR login_ms < ?");
        Ok(self
            .rows(
                &q,
                vec![
                    int(now.saturating_sub(cfg.idle_timeout_ms)),
                    int(now.saturating_sub(cfg.max_lifetime_ms)),
                ],
            )?
            .iter()
            .filter_map(|r| row_session(r))
            .collect())
    }

    /// The earliest time anything here can be removed: a session idle past the
    /// timeout or past its lifetime deadline, a cookie entry or a revocation past
    /// its time.
    pub fn next_expiry(&self, cfg: &Config) -> Result<Option<u64>> {
        let mins = self.rows(
            "SELECT (SELECT MIN(last_ms) FROM sessions), (SELECT MIN(login_ms) FROM sessions),
                    (SELECT MIN(until_ms) FROM cookies), (SELECT MIN(until_ms) FROM revoked)",
            vec![],
        )?;
        let Some(row) = mins.first() else {
            return Ok(None);
        };
        let present = |i: usize| match row.get(i) {
            Some(V::Null) | None => None,
            v => Some(as_u64(v)),
        };
        let candidates = [
            present(0).map(|last| last.saturating_add(cfg.idle_timeout_ms)),
            present(1).map(|login| login.saturating_add(cfg.max_lifetime_ms)),
            present(2),
            present(3),
        ];
        // `is_expired` and alias validity are strict: one millisecond later.
        Ok(candidates.into_iter().flatten().min().map(|t| t + 1))
    }

    /// Rows held: sessions, cookie entries, revoked values.
    pub fn counts(&self) -> Result<(u64, u64, u64)> {
        let rows = self.rows(
            "SELECT (SELECT COUNT(*) FROM sessions), (SELECT COUNT(*) FROM cookies),
                    (SELECT COUNT(*) FROM revoked)",
            vec![],
        )?;
        let row = rows.first();
        Ok((
            as_u64(row.and_then(|r| r.first())),
            as_u64(row.and_then(|r| r.get(1))),
            as_u64(row.and_then(|r| r.get(2))),
        ))
    }

    pub fn session_count(&self) -> Result<u64> {
        let rows = self.rows("SELECT COUNT(*) FROM sessions", vec![])?;
        Ok(as_u64(rows.first().and_then(|r| r.first())))
    }

    /// The `n` sessions seen longest ago, other than `keep` (uses the `last_ms` index).
    pub fn longest_idle(&self, n: u64, keep: &Hash) -> Result<Vec<Hash>> {
        Ok(self
            .rows(
                "SELECT id FROM sessions WHERE id != ? ORDER BY last_ms ASC, login_ms ASC LIMIT ?",
                vec![blob(keep), int(n)],
            )?
            .iter()
            .filter_map(|r| as_hash(r.first()))
            .collect())
    }

    /// Cookie entries here that lead to session `id` and are still valid.
    pub fn cookies_of_session(&self, id: &Hash, now: u64) -> Result<Vec<Hash>> {
        Ok(self
            .rows(
                "SELECT hash FROM cookies WHERE session = ? AND until_ms >= ?",
                vec![blob(id), int(now)],
            )?
            .iter()
            .filter_map(|r| as_hash(r.first()))
            .collect())
    }

    /// Adds `id` to `user`'s sessions; returns all of them, oldest login first.
    pub fn user_add(&self, user: &Hash, id: &Hash, login_ms: u64) -> Result<Vec<Hash>> {
        self.exec(
            "INSERT OR REPLACE INTO users (user, session, login_ms) VALUES (?, ?, ?)",
            vec![blob(user), blob(id), int(login_ms)],
        )?;
        Ok(self
            .rows(
                "SELECT session FROM users WHERE user = ? ORDER BY login_ms ASC, session ASC",
                vec![blob(user)],
            )?
            .iter()
            .filter_map(|r| as_hash(r.first()))
            .collect())
    }

    pub fn user_remove(&self, user: &Hash, id: &Hash) -> Result<()> {
        self.exec(
            "DELETE FROM users WHERE user = ? AND session = ?",
            vec![blob(user), blob(id)],
        )
    }

    /// Forgets per-user entries of sessions that logged in before `login_before`
    /// (past their maximum lifetime: over, even if the news never arrived).
    pub fn users_prune(&self, login_before: u64) -> Result<()> {
        self.exec(
            "DELETE FROM users WHERE login_ms < ?",
            vec![int(login_before)],
        )
    }

    /// Remembers `hashes` as revoked until `until` (a later time wins); bumps the
    /// list's revision.
    pub fn revoke(&self, hashes: &[Hash], until: u64) -> Result<u64> {
        for h in hashes {
            self.exec(
                "INSERT INTO revoked (hash, until_ms) VALUES (?, ?)
                 ON CONFLICT (hash) DO UPDATE SET until_ms = MAX(until_ms, excluded.until_ms)",
                vec![blob(h), int(until)],
            )?;
        }
        self.bump_revoked_rev()
    }

    fn bump_revoked_rev(&self) -> Result<u64> {
        let rev = self.revoked_rev()? + 1;
        self.put_meta("revoked_rev", &rev.to_string())?;
        Ok(rev)
    }

    /// Whether `hash` is a revoked session's value at `now`.
    pub fn is_revoked(&self, hash: &Hash, now: u64) -> Result<bool> {
        Ok(!self
            .rows(
                "SELECT 1 FROM revoked WHERE hash = ? AND until_ms >= ?",
                vec![blob(hash), int(now)],
            )?
            .is_empty())
    }

    /// The revision of the revoked list (0 before any revocation).
    pub fn revoked_rev(&self) -> Result<u64> {
        Ok(self
            .meta("revoked_rev")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// The `limit` revoked values that stay revoked longest.
    pub fn revoked(&self, limit: usize) -> Result<Vec<(Hash, u64)>> {
        Ok(self
            .rows(
                "SELECT hash, until_ms FROM revoked ORDER BY until_ms DESC LIMIT ?",
                vec![int(limit as u64)],
            )?
            .iter()
            .filter_map(|r| Some((as_hash(r.first())?, as_u64(r.get(1)))))
            .collect())
    }

    /// Forgets revocations past their time; returns how many.
    pub fn delete_revoked_before(&self, now: u64) -> Result<u64> {
        let n = self.rows(
            "SELECT COUNT(*) FROM revoked WHERE until_ms < ?",
            vec![int(now)],
        )?;
        let n = as_u64(n.first().and_then(|r| r.first()));
        if n > 0 {
            self.exec("DELETE FROM revoked WHERE until_ms < ?", vec![int(now)])?;
            self.bump_revoked_rev()?;
        }
        Ok(n)
    }

    fn json_meta<T: serde::de::DeserializeOwned + Default>(&self, key: &str) -> Result<T> {
        Ok(self
            .meta(key)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }

    fn put_json_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let json =
            serde_json::to_string(value).map_err(|e| worker::Error::RustError(e.to_string()))?;
        self.put_meta(key, &json)
    }

    /// The event feed and lifetime counters (the core's `Events`, shard 0).
    pub fn events(&self) -> Result<Events> {
        self.json_meta("events")
    }

    pub fn put_events(&self, e: &Events) -> Result<()> {
        self.put_json_meta("events", e)
    }

    /// Per-minute peaks (the core's `History`, shard 0).
    pub fn history(&self) -> Result<History> {
        self.json_meta("history")
    }

    pub fn put_history(&self, h: &History) -> Result<()> {
        self.put_json_meta("history", h)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .rows("SELECT value FROM meta WHERE key = ?", vec![V::from(key)])?
            .first()
            .map(|r| as_text(r.first())))
    }

    pub fn put_meta(&self, key: &str, value: &str) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            vec![V::from(key), V::from(value)],
        )?;
        Ok(())
    }

    pub fn traffic(&self) -> Result<Traffic> {
        self.json_meta("traffic")
    }

    pub fn put_traffic(&self, t: &Traffic) -> Result<()> {
        self.put_json_meta("traffic", t)
    }
}
