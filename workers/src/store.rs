//! The SQLite side of the `Sessions` Durable Object: the core's `LedgerStore`
//! over the schema below, rows <-> `Session`. Every statement is synchronous
//! (`state.storage().sql()`), so one batch runs without interleaving and its
//! writes are committed together. No rule lives here: the ledger decides.

use headcount_core::events::Events;
use headcount_core::history::History;
use headcount_core::ids::{Id16, NodeId, SessionId, UserKey};
use headcount_core::ledger::store::{Applied, Minima, Rows};
use headcount_core::ledger::{CookieRow, LedgerStore};
use headcount_core::traffic::Traffic;
use headcount_core::{CookieHash, Session};
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
    // The last sequenced batch of each isolate (its reply), so a retry is answered
    // from here instead of applied twice.
    "CREATE TABLE IF NOT EXISTS applied (
        origin BLOB PRIMARY KEY,
        seq INTEGER NOT NULL,
        reply TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    ) WITHOUT ROWID",
];

const SESSION_COLUMNS: &str =
    "id, cookie, user_id, username, role, ip, user_agent, login_ms, last_ms, aliases";

pub struct Store {
    sql: SqlStorage,
}

fn blob(h: &impl Id16) -> V {
    V::Blob(h.bytes().to_vec())
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

fn as_id<T: From<[u8; 16]>>(v: Option<&V>) -> Option<T> {
    match v {
        Some(V::Blob(b)) => <[u8; 16]>::try_from(b.as_slice()).ok().map(T::from),
        _ => None,
    }
}

fn row_session(row: &[V]) -> Option<Session> {
    let id = as_id(row.first())?;
    let cookie: CookieHash = as_id(row.get(1))?;
    let aliases = match row.get(9) {
        Some(V::Blob(b)) => b
            .chunks_exact(16)
            .filter_map(|c| <[u8; 16]>::try_from(c).ok().map(CookieHash))
            .collect(),
        _ => Vec::new(),
    };
    Some(Session {
        id,
        user_id: as_text(row.get(2)),
        username: as_text(row.get(3)),
        role: as_text(row.get(4)),
        ip: as_text(row.get(5)),
        user_agent: as_text(row.get(6)),
        login_ms: as_u64(row.get(7)),
        last_ms: as_u64(row.get(8)),
        cookie,
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

    fn query(&self, query: &str, bindings: Vec<V>) -> Result<Vec<Vec<V>>> {
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

    /// The first column of each row, as hashes.
    fn ids<T: From<[u8; 16]>>(&self, query: &str, bindings: Vec<V>) -> Result<Vec<T>> {
        let rows = self.query(query, bindings)?;
        Ok(rows.iter().filter_map(|r| as_id(r.first())).collect())
    }

    fn sessions_where(&self, condition: &str, bindings: Vec<V>) -> Result<Vec<Session>> {
        let q = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE {condition}");
        let rows = self.query(&q, bindings)?;
        Ok(rows.iter().filter_map(|r| row_session(r)).collect())
    }

    /// Deletes the rows of `table` whose `column` is before `t`; how many.
    fn delete_before(&self, table: &str, column: &str, t: u64) -> Result<u64> {
        let q = format!("SELECT COUNT(*) FROM {table} WHERE {column} < ?");
        let n = as_u64(
            self.query(&q, vec![int(t)])?
                .first()
                .and_then(|r| r.first()),
        );
        if n > 0 {
            let q = format!("DELETE FROM {table} WHERE {column} < ?");
            self.exec(&q, vec![int(t)])?;
        }
        Ok(n)
    }

    fn bump_revoked_rev(&self) -> Result<()> {
        let rev = self.revoked_revision()? + 1;
        self.put_meta_value("revoked_rev", &rev.to_string())
    }

    fn revoked_revision(&self) -> Result<u64> {
        Ok(self
            .meta_value("revoked_rev")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    fn meta_value(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .query("SELECT value FROM meta WHERE key = ?", vec![V::from(key)])?
            .first()
            .map(|r| as_text(r.first())))
    }

    fn put_meta_value(&self, key: &str, value: &str) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            vec![V::from(key), V::from(value)],
        )
    }

    fn json_meta<T: serde::de::DeserializeOwned + Default>(&self, key: &str) -> Result<T> {
        Ok(self
            .meta_value(key)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }

    fn put_json_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let json =
            serde_json::to_string(value).map_err(|e| worker::Error::RustError(e.to_string()))?;
        self.put_meta_value(key, &json)
    }
}

/// The trait documents each call; the SQL says which index it uses.
impl LedgerStore for Store {
    type Error = worker::Error;

    fn session(&mut self, id: &SessionId) -> Result<Option<Session>> {
        let q = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?");
        Ok(self
            .query(&q, vec![blob(id)])?
            .first()
            .and_then(|r| row_session(r)))
    }

    fn put_session(&mut self, s: &Session) -> Result<()> {
        let aliases: Vec<u8> = s.aliases.iter().flat_map(|a| a.0).collect();
        let q = format!(
            "INSERT OR REPLACE INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        self.exec(
            &q,
            vec![
                blob(&s.id),
                blob(&s.cookie),
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

    fn touch(&mut self, id: &SessionId, last_ms: u64) -> Result<bool> {
        let exists = !self
            .query("SELECT 1 FROM sessions WHERE id = ?", vec![blob(id)])?
            .is_empty();
        if exists {
            self.exec(
                "UPDATE sessions SET last_ms = ? WHERE id = ? AND last_ms < ?",
                vec![int(last_ms), blob(id), int(last_ms)],
            )?;
        }
        Ok(exists)
    }

    fn delete_session(&mut self, id: &SessionId) -> Result<Option<Session>> {
        let s = self.session(id)?;
        if s.is_some() {
            self.exec("DELETE FROM sessions WHERE id = ?", vec![blob(id)])?;
        }
        Ok(s)
    }

    fn cookie(&mut self, hash: &CookieHash) -> Result<Option<CookieRow>> {
        Ok(self
            .query(
                "SELECT session, until_ms, next FROM cookies WHERE hash = ?",
                vec![blob(hash)],
            )?
            .first()
            .map(|r| {
                let until = as_u64(r.get(1));
                match as_id(r.first()) {
                    Some(id) => CookieRow::Session { id, until },
                    None => CookieRow::Orphan {
                        next: as_id(r.get(2)),
                        until,
                    },
                }
            }))
    }

    fn index(&mut self, hash: &CookieHash, id: &SessionId, until: u64) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO cookies (hash, session, until_ms, next) VALUES (?, ?, ?, NULL)",
            vec![blob(hash), blob(id), int(until)],
        )?;
        Ok(())
    }

    fn put_orphan(
        &mut self,
        hash: &CookieHash,
        next: Option<CookieHash>,
        until: u64,
    ) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO cookies (hash, session, until_ms, next) VALUES (?, NULL, ?, ?)",
            vec![blob(hash), int(until), next.as_ref().map_or(V::Null, blob)],
        )?;
        Ok(())
    }

    fn shorten(&mut self, hash: &CookieHash, id: &SessionId, until: u64) -> Result<()> {
        self.exec(
            "UPDATE cookies SET until_ms = MIN(until_ms, ?) WHERE hash = ? AND session = ?",
            vec![int(until), blob(hash), blob(id)],
        )?;
        Ok(())
    }

    fn unindex(&mut self, hash: &CookieHash, id: &SessionId) -> Result<()> {
        self.exec(
            "DELETE FROM cookies WHERE hash = ? AND session = ?",
            vec![blob(hash), blob(id)],
        )?;
        Ok(())
    }

    fn delete_cookie(&mut self, hash: &CookieHash) -> Result<()> {
        self.exec("DELETE FROM cookies WHERE hash = ?", vec![blob(hash)])?;
        Ok(())
    }

    fn delete_cookies_before(&mut self, now: u64) -> Result<u64> {
        self.delete_before("cookies", "until_ms", now)
    }

    fn sessions_seen_since(&mut self, since: u64) -> Result<Vec<Session>> {
        self.sessions_where("last_ms >= ?", vec![int(since)])
    }

    fn expiry_candidates(&mut self, idle_before: u64, login_before: u64) -> Result<Vec<Session>> {
        let bindings = vec![int(idle_before), int(login_before)];
        self.sessions_where("last_ms < ? OR login_ms < ?", bindings)
    }

    fn minima(&mut self) -> Result<Minima> {
        let mins = self.query(
            "SELECT (SELECT MIN(last_ms) FROM sessions), (SELECT MIN(login_ms) FROM sessions),
                    (SELECT MIN(until_ms) FROM cookies), (SELECT MIN(until_ms) FROM revoked),
                    (SELECT MIN(at_ms) FROM applied)",
            vec![],
        )?;
        let row = mins.first();
        let present = |i: usize| match row.and_then(|r| r.get(i)) {
            Some(V::Null) | None => None,
            v => Some(as_u64(v)),
        };
        Ok(Minima {
            last_ms: present(0),
            login_ms: present(1),
            cookie_until: present(2),
            revoked_until: present(3),
            applied_at: present(4),
        })
    }

    fn applied(&mut self, origin: &NodeId) -> Result<Option<Applied>> {
        Ok(self
            .query(
                "SELECT seq, reply, at_ms FROM applied WHERE origin = ?",
                vec![blob(origin)],
            )?
            .first()
            .map(|r| Applied {
                seq: as_u64(r.first()),
                reply: as_text(r.get(1)),
                at: as_u64(r.get(2)),
            }))
    }

    fn put_applied(&mut self, origin: &NodeId, a: &Applied) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO applied (origin, seq, reply, at_ms) VALUES (?, ?, ?, ?)",
            vec![
                blob(origin),
                int(a.seq),
                V::from(a.reply.as_str()),
                int(a.at),
            ],
        )
    }

    fn forget_applied_before(&mut self, before: u64) -> Result<u64> {
        self.delete_before("applied", "at_ms", before)
    }

    fn rows(&mut self) -> Result<Rows> {
        let rows = self.query(
            "SELECT (SELECT COUNT(*) FROM sessions), (SELECT COUNT(*) FROM cookies),
                    (SELECT COUNT(*) FROM revoked)",
            vec![],
        )?;
        let count = |i: usize| as_u64(rows.first().and_then(|r| r.get(i)));
        Ok(Rows {
            sessions: count(0),
            cookies: count(1),
            revoked: count(2),
        })
    }

    fn session_count(&mut self) -> Result<u64> {
        let rows = self.query("SELECT COUNT(*) FROM sessions", vec![])?;
        Ok(as_u64(rows.first().and_then(|r| r.first())))
    }

    fn longest_idle(&mut self, n: u64, keep: &SessionId) -> Result<Vec<SessionId>> {
        self.ids(
            "SELECT id FROM sessions WHERE id != ? ORDER BY last_ms ASC, login_ms ASC LIMIT ?",
            vec![blob(keep), int(n)],
        )
    }

    fn cookies_of_session(&mut self, id: &SessionId, now: u64) -> Result<Vec<CookieHash>> {
        self.ids(
            "SELECT hash FROM cookies WHERE session = ? AND until_ms >= ?",
            vec![blob(id), int(now)],
        )
    }

    fn user_add(
        &mut self,
        user: &UserKey,
        id: &SessionId,
        login_ms: u64,
    ) -> Result<Vec<SessionId>> {
        self.exec(
            "INSERT OR REPLACE INTO users (user, session, login_ms) VALUES (?, ?, ?)",
            vec![blob(user), blob(id), int(login_ms)],
        )?;
        self.ids(
            "SELECT session FROM users WHERE user = ? ORDER BY login_ms ASC, session ASC",
            vec![blob(user)],
        )
    }

    fn user_remove(&mut self, user: &UserKey, id: &SessionId) -> Result<()> {
        self.exec(
            "DELETE FROM users WHERE user = ? AND session = ?",
            vec![blob(user), blob(id)],
        )
    }

    fn users_prune(&mut self, login_before: u64) -> Result<()> {
        self.exec(
            "DELETE FROM users WHERE login_ms < ?",
            vec![int(login_before)],
        )
    }

    fn revoke(&mut self, hashes: &[CookieHash], until: u64) -> Result<()> {
        for h in hashes {
            self.exec(
                "INSERT INTO revoked (hash, until_ms) VALUES (?, ?)
                 ON CONFLICT (hash) DO UPDATE SET until_ms = MAX(until_ms, excluded.until_ms)",
                vec![blob(h), int(until)],
            )?;
        }
        self.bump_revoked_rev()
    }

    fn is_revoked(&mut self, hash: &CookieHash, now: u64) -> Result<bool> {
        Ok(!self
            .query(
                "SELECT 1 FROM revoked WHERE hash = ? AND until_ms >= ?",
                vec![blob(hash), int(now)],
            )?
            .is_empty())
    }

    fn revoked_rev(&mut self) -> Result<u64> {
        self.revoked_revision()
    }

    fn revoked(&mut self, limit: usize) -> Result<Vec<(CookieHash, u64)>> {
        Ok(self
            .query(
                "SELECT hash, until_ms FROM revoked ORDER BY until_ms DESC LIMIT ?",
                vec![int(limit as u64)],
            )?
            .iter()
            .filter_map(|r| Some((as_id(r.first())?, as_u64(r.get(1)))))
            .collect())
    }

    fn delete_revoked_before(&mut self, now: u64) -> Result<u64> {
        let n = self.delete_before("revoked", "until_ms", now)?;
        if n > 0 {
            self.bump_revoked_rev()?;
        }
        Ok(n)
    }

    fn events(&mut self) -> Result<Events> {
        self.json_meta("events")
    }

    fn put_events(&mut self, e: &Events) -> Result<()> {
        self.put_json_meta("events", e)
    }

    fn history(&mut self) -> Result<History> {
        self.json_meta("history")
    }

    fn put_history(&mut self, h: &History) -> Result<()> {
        self.put_json_meta("history", h)
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>> {
        self.meta_value(key)
    }

    fn put_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.put_meta_value(key, value)
    }

    fn traffic(&mut self) -> Result<Traffic> {
        self.json_meta("traffic")
    }

    fn put_traffic(&mut self, t: &Traffic) -> Result<()> {
        self.put_json_meta("traffic", t)
    }
}

impl Store {
    /// Where this object sits among the shards, as last recorded.
    pub fn placement(&self) -> Result<Option<(u32, u32)>> {
        Ok(self.meta_value("placement")?.and_then(|v| {
            let (a, b) = v.split_once('/')?;
            Some((a.parse().ok()?, b.parse::<u32>().ok()?.max(1)))
        }))
    }

    pub fn put_placement(&self, (shard, shards): (u32, u32)) -> Result<()> {
        self.put_meta_value("placement", &format!("{shard}/{shards}"))
    }

    /// The app this object keeps (`address::admit`); `None` before its first
    /// request. A shard from before apps existed adopts the first app asked.
    pub fn app(&self) -> Result<Option<headcount_core::AppName>> {
        Ok(self
            .meta_value("app")?
            .and_then(|a| headcount_core::AppName::parse("app", &a).ok()))
    }

    pub fn put_app(&self, app: &headcount_core::AppName) -> Result<()> {
        self.put_meta_value("app", app.as_str())
    }
}
