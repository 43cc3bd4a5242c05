//! One ledger shard's rows in Redis, as the core's `LedgerStore`, over one
//! step's `Overlay`. Every key of shard `n` of app `a` starts with
//! `hc:{a/shard-n}:` (the Durable Object name of that shard): the braces are a
//! Redis Cluster hash tag, so a shard's keys share one slot (its commit is one
//! script) and shards spread over the slots.
//!
//! | key | type | what |
//! |---|---|---|
//! | `g` | string | the generation, bumped by every commit (`overlay.rs`) |
//! | `s` | hash | session id (hex) -> the session (JSON; its last activity is `l`'s) |
//! | `l`, `i` | sorted sets | session id -> last activity, login time (ms) |
//! | `c` | hash | cookie hash -> the cookie row (JSON) |
//! | `cu` | sorted set | cookie hash -> until (ms) |
//! | `sc` | hash | session id -> the cookie hashes here that lead to it (JSON) |
//! | `u` | hash | user key -> its sessions, `[[login, id], ...]` (JSON) |
//! | `r` | hash | revoked cookie hash -> until (ms); `rv` its revision (string) |
//! | `m` | hash | small named values (`LedgerStore::meta`) |
//! | `ev`, `hi`, `tr` | strings | events, history, traffic (JSON) |
//! | `ap` | hash | node id -> its last applied batch (JSON) |

use super::overlay::{Overlay, StoreError, R};
use headcount_core::events::Events;
use headcount_core::history::History;
use headcount_core::ids::{CookieHash, NodeId, SessionId, UserKey};
use headcount_core::ledger::address;
use headcount_core::ledger::store::{Applied, CookieRow, LedgerStore, Minima, Rows};
use headcount_core::ledger::wire::Op;
use headcount_core::session::Session;
use headcount_core::traffic::Traffic;
use headcount_core::AppName;
use redis::ConnectionLike;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The prefix of every key of shard `shard` of `app`.
pub fn prefix(app: &AppName, shard: u32) -> String {
    format!("hc:{{{}}}:", address::shard_name(app, shard))
}

/// A cookie row as stored.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredRow {
    Session { s: SessionId, u: u64 },
    Orphan { n: Option<CookieHash>, u: u64 },
}

#[derive(Serialize, Deserialize)]
struct StoredApplied {
    seq: u64,
    reply: String,
    at: u64,
}

fn decode<T: DeserializeOwned>(what: &str, v: &str) -> R<T> {
    serde_json::from_str(v).map_err(|e| StoreError(format!("stored {what} unreadable: {e}")))
}

fn encode<T: Serialize>(v: &T) -> R<String> {
    serde_json::to_string(v).map_err(|e| StoreError(e.to_string()))
}

/// Shard rows over a step (`Overlay`) whose keys start with `prefix`.
pub struct RedisShard<'o, 'c, C: ConnectionLike> {
    pub step: &'o mut Overlay<'c, C>,
    keys: Keys,
}

struct Keys {
    s: String,
    l: String,
    i: String,
    c: String,
    cu: String,
    sc: String,
    u: String,
    r: String,
    rv: String,
    m: String,
    ev: String,
    hi: String,
    tr: String,
    ap: String,
}

impl Keys {
    fn new(p: &str) -> Keys {
        let k = |s: &str| format!("{p}{s}");
        Keys {
            s: k("s"),
            l: k("l"),
            i: k("i"),
            c: k("c"),
            cu: k("cu"),
            sc: k("sc"),
            u: k("u"),
            r: k("r"),
            rv: k("rv"),
            m: k("m"),
            ev: k("ev"),
            hi: k("hi"),
            tr: k("tr"),
            ap: k("ap"),
        }
    }
}

impl<'o, 'c, C: ConnectionLike> RedisShard<'o, 'c, C> {
    pub fn new(step: &'o mut Overlay<'c, C>, prefix: &str) -> Self {
        RedisShard {
            step,
            keys: Keys::new(prefix),
        }
    }

    fn sessions_by_hex(&mut self, ids: &[String]) -> R<Vec<Session>> {
        let rows = self.step.hmget(&self.keys.s, ids)?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, row) in ids.iter().zip(rows) {
            if let Some(row) = row {
                let mut s: Session = decode("session", &row)?;
                if let Some(last) = self.step.zscore(&self.keys.l, id)? {
                    s.last_ms = last as u64;
                }
                out.push(s);
            }
        }
        out.sort_by_key(|s| s.id);
        Ok(out)
    }

    /// The cookie hashes here that lead to session `id` (`sc`).
    fn session_cookies(&mut self, id: &SessionId) -> R<Vec<CookieHash>> {
        match self.step.hget(&self.keys.sc, &id.hex())? {
            Some(v) => decode("cookie list", &v),
            None => Ok(Vec::new()),
        }
    }

    fn put_session_cookies(&mut self, id: &SessionId, list: &[CookieHash]) -> R<()> {
        if list.is_empty() {
            self.step.hdel(&self.keys.sc, &id.hex());
        } else {
            let v = encode(&list)?;
            self.step.hset(&self.keys.sc, &id.hex(), v);
        }
        Ok(())
    }

    fn link(&mut self, id: &SessionId, hash: &CookieHash) -> R<()> {
        let mut list = self.session_cookies(id)?;
        if !list.contains(hash) {
            list.push(*hash);
            list.sort();
        }
        self.put_session_cookies(id, &list)
    }

    fn unlink(&mut self, id: &SessionId, hash: &CookieHash) -> R<()> {
        let mut list = self.session_cookies(id)?;
        list.retain(|h| h != hash);
        self.put_session_cookies(id, &list)
    }

    fn put_row(&mut self, hash: &CookieHash, row: CookieRow) -> R<()> {
        if let Some(CookieRow::Session { id: old, .. }) = self.cookie(hash)? {
            let still = matches!(row, CookieRow::Session { id, .. } if id == old);
            if !still {
                self.unlink(&old, hash)?;
            }
        }
        let (stored, until) = match row {
            CookieRow::Session { id, until } => (StoredRow::Session { s: id, u: until }, until),
            CookieRow::Orphan { next, until } => (StoredRow::Orphan { n: next, u: until }, until),
        };
        let v = encode(&stored)?;
        self.step.hset(&self.keys.c, &hash.hex(), v);
        self.step.zadd(&self.keys.cu, &hash.hex(), until);
        if let CookieRow::Session { id, .. } = row {
            self.link(&id, hash)?;
        }
        Ok(())
    }

    fn users(&mut self, user: &UserKey) -> R<Vec<(u64, SessionId)>> {
        match self.step.hget(&self.keys.u, &user.hex())? {
            Some(v) => decode("user list", &v),
            None => Ok(Vec::new()),
        }
    }

    fn put_users(&mut self, user: &UserKey, list: &[(u64, SessionId)]) -> R<()> {
        if list.is_empty() {
            self.step.hdel(&self.keys.u, &user.hex());
        } else {
            let v = encode(&list)?;
            self.step.hset(&self.keys.u, &user.hex(), v);
        }
        Ok(())
    }

    fn revoked_all(&mut self) -> R<Vec<(CookieHash, u64)>> {
        let all = self.step.hgetall(&self.keys.r)?;
        all.into_iter()
            .map(|(h, t)| {
                let hash = CookieHash::from_hex(&h)
                    .ok_or_else(|| StoreError(format!("bad revoked hash {h:?}")))?;
                let until = t
                    .parse()
                    .map_err(|_| StoreError(format!("bad revoked time {t:?}")))?;
                Ok((hash, until))
            })
            .collect()
    }

    fn bump_revoked_rev(&mut self) -> R<()> {
        let rev = self.revoked_rev()? + 1;
        self.step.set(&self.keys.rv, rev.to_string());
        Ok(())
    }

    fn whole<T: DeserializeOwned + Default>(&mut self, key: &str, what: &str) -> R<T> {
        match self.step.get(key)? {
            Some(v) => decode(what, &v),
            None => Ok(T::default()),
        }
    }

    fn applied_all(&mut self) -> R<Vec<(String, StoredApplied)>> {
        let all = self.step.hgetall(&self.keys.ap)?;
        all.into_iter()
            .map(|(k, v)| Ok((k, decode("applied batch", &v)?)))
            .collect()
    }

    fn zmin(&mut self, key: &str) -> R<Option<u64>> {
        let key = key.to_string();
        Ok(self.step.zlowest(&key, 1)?.first().map(|(_, s)| *s))
    }
}

fn hexes(list: &[(String, u64)]) -> Vec<String> {
    list.iter().map(|(m, _)| m.clone()).collect()
}

impl<C: ConnectionLike> LedgerStore for RedisShard<'_, '_, C> {
    type Error = StoreError;

    fn session(&mut self, id: &SessionId) -> R<Option<Session>> {
        Ok(self.sessions_by_hex(&[id.hex()])?.pop())
    }

    fn put_session(&mut self, s: &Session) -> R<()> {
        let (id, v) = (s.id.hex(), encode(s)?);
        self.step.hset(&self.keys.s, &id, v);
        self.step.zadd(&self.keys.l, &id, s.last_ms);
        self.step.zadd(&self.keys.i, &id, s.login_ms);
        Ok(())
    }

    /// From the sorted sets the touch and the sweep read anyway (prefetched
    /// for a batch's touches), not the session's JSON.
    fn times(&mut self, id: &SessionId) -> R<Option<(u64, u64)>> {
        let hex = id.hex();
        let (l, i) = (self.keys.l.clone(), self.keys.i.clone());
        let last = self.step.zscore(&l, &hex)?;
        let login = self.step.zscore(&i, &hex)?;
        Ok(login.zip(last).map(|(a, b)| (a as u64, b as u64)))
    }

    fn touch(&mut self, id: &SessionId, last_ms: u64) -> R<bool> {
        let hex = id.hex();
        Ok(match self.step.zscore(&self.keys.l, &hex)? {
            Some(cur) => {
                if last_ms as f64 > cur {
                    self.step.zadd(&self.keys.l, &hex, last_ms);
                }
                true
            }
            None => false,
        })
    }

    fn delete_session(&mut self, id: &SessionId) -> R<Option<Session>> {
        let s = self.session(id)?;
        if s.is_some() {
            let hex = id.hex();
            self.step.hdel(&self.keys.s, &hex);
            self.step.zrem(&self.keys.l, &hex);
            self.step.zrem(&self.keys.i, &hex);
        }
        Ok(s)
    }

    fn session_count(&mut self) -> R<u64> {
        let key = self.keys.l.clone();
        self.step.zcard(&key)
    }

    fn longest_idle(&mut self, n: u64, keep: &SessionId) -> R<Vec<SessionId>> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let key = self.keys.l.clone();
        let lowest = self.step.zlowest(&key, n.saturating_add(1))?;
        let mut all: Vec<(u64, u64, SessionId)> = self
            .sessions_by_hex(&hexes(&lowest))?
            .into_iter()
            .filter(|s| s.id != *keep)
            .map(|s| (s.last_ms, s.login_ms, s.id))
            .collect();
        all.sort();
        Ok(all.into_iter().take(n).map(|(_, _, id)| id).collect())
    }

    fn sessions_seen_since(&mut self, since: u64) -> R<Vec<Session>> {
        let key = self.keys.l.clone();
        let seen = self.step.zrange_by_score(&key, since, u64::MAX >> 11)?;
        self.sessions_by_hex(&hexes(&seen))
    }

    fn expiry_candidates(&mut self, idle_before: u64, login_before: u64) -> R<Vec<Session>> {
        let mut ids = Vec::new();
        for (key, before) in [(&self.keys.l, idle_before), (&self.keys.i, login_before)] {
            if before > 0 {
                let key = key.clone();
                ids.extend(hexes(&self.step.zrange_by_score(&key, 0, before - 1)?));
            }
        }
        ids.sort();
        ids.dedup();
        self.sessions_by_hex(&ids)
    }

    fn cookie(&mut self, hash: &CookieHash) -> R<Option<CookieRow>> {
        let Some(v) = self.step.hget(&self.keys.c, &hash.hex())? else {
            return Ok(None);
        };
        Ok(Some(match decode::<StoredRow>("cookie row", &v)? {
            StoredRow::Session { s, u } => CookieRow::Session { id: s, until: u },
            StoredRow::Orphan { n, u } => CookieRow::Orphan { next: n, until: u },
        }))
    }

    fn index(&mut self, hash: &CookieHash, id: &SessionId, until: u64) -> R<()> {
        self.put_row(hash, CookieRow::Session { id: *id, until })
    }

    fn put_orphan(&mut self, hash: &CookieHash, next: Option<CookieHash>, until: u64) -> R<()> {
        self.put_row(hash, CookieRow::Orphan { next, until })
    }

    fn shorten(&mut self, hash: &CookieHash, id: &SessionId, until: u64) -> R<()> {
        if let Some(CookieRow::Session { id: s, until: u }) = self.cookie(hash)? {
            if s == *id && until < u {
                self.put_row(hash, CookieRow::Session { id: s, until })?;
            }
        }
        Ok(())
    }

    fn unindex(&mut self, hash: &CookieHash, id: &SessionId) -> R<()> {
        if matches!(self.cookie(hash)?, Some(CookieRow::Session { id: s, .. }) if s == *id) {
            self.delete_cookie(hash)?;
        }
        Ok(())
    }

    fn delete_cookie(&mut self, hash: &CookieHash) -> R<()> {
        if let Some(CookieRow::Session { id, .. }) = self.cookie(hash)? {
            self.unlink(&id, hash)?;
        }
        let hex = hash.hex();
        self.step.hdel(&self.keys.c, &hex);
        self.step.zrem(&self.keys.cu, &hex);
        Ok(())
    }

    fn delete_cookies_before(&mut self, now: u64) -> R<u64> {
        if now == 0 {
            return Ok(0);
        }
        let key = self.keys.cu.clone();
        let old = self.step.zrange_by_score(&key, 0, now - 1)?;
        for (hex, _) in &old {
            let hash = CookieHash::from_hex(hex)
                .ok_or_else(|| StoreError(format!("bad cookie hash {hex:?}")))?;
            self.delete_cookie(&hash)?;
        }
        Ok(old.len() as u64)
    }

    fn cookies_of_session(&mut self, id: &SessionId, now: u64) -> R<Vec<CookieHash>> {
        let mut out = Vec::new();
        for hash in self.session_cookies(id)? {
            if matches!(self.cookie(&hash)?, Some(CookieRow::Session { id: s, until }) if s == *id && until >= now)
            {
                out.push(hash);
            }
        }
        Ok(out)
    }

    fn user_add(&mut self, user: &UserKey, id: &SessionId, login_ms: u64) -> R<Vec<SessionId>> {
        let mut list = self.users(user)?;
        list.retain(|(_, s)| s != id);
        list.push((login_ms, *id));
        list.sort();
        self.put_users(user, &list)?;
        Ok(list.into_iter().map(|(_, s)| s).collect())
    }

    fn user_remove(&mut self, user: &UserKey, id: &SessionId) -> R<()> {
        let mut list = self.users(user)?;
        let before = list.len();
        list.retain(|(_, s)| s != id);
        if list.len() != before {
            self.put_users(user, &list)?;
        }
        Ok(())
    }

    fn users_prune(&mut self, login_before: u64) -> R<()> {
        let key = self.keys.u.clone();
        for (user, v) in self.step.hgetall(&key)? {
            let list: Vec<(u64, SessionId)> = decode("user list", &v)?;
            let kept: Vec<(u64, SessionId)> = list
                .iter()
                .copied()
                .filter(|(login, _)| *login >= login_before)
                .collect();
            if kept.len() != list.len() {
                let user = UserKey::from_hex(&user)
                    .ok_or_else(|| StoreError(format!("bad user key {user:?}")))?;
                self.put_users(&user, &kept)?;
            }
        }
        Ok(())
    }

    fn revoke(&mut self, hashes: &[CookieHash], until: u64) -> R<()> {
        for h in hashes {
            let cur = self
                .step
                .hget(&self.keys.r, &h.hex())?
                .and_then(|t| t.parse::<u64>().ok());
            let t = cur.map_or(until, |c| c.max(until));
            self.step.hset(&self.keys.r, &h.hex(), t.to_string());
        }
        self.bump_revoked_rev()
    }

    fn is_revoked(&mut self, hash: &CookieHash, now: u64) -> R<bool> {
        Ok(self
            .step
            .hget(&self.keys.r, &hash.hex())?
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|t| t >= now))
    }

    fn revoked_rev(&mut self) -> R<u64> {
        let key = self.keys.rv.clone();
        Ok(self
            .step
            .get(&key)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    fn revoked(&mut self, limit: usize) -> R<Vec<(CookieHash, u64)>> {
        let mut all = self.revoked_all()?;
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(limit);
        Ok(all)
    }

    fn delete_revoked_before(&mut self, now: u64) -> R<u64> {
        let mut gone = 0;
        for (h, t) in self.revoked_all()? {
            if t < now {
                self.step.hdel(&self.keys.r, &h.hex());
                gone += 1;
            }
        }
        if gone > 0 {
            self.bump_revoked_rev()?;
        }
        Ok(gone)
    }

    fn events(&mut self) -> R<Events> {
        let key = self.keys.ev.clone();
        self.whole(&key, "events")
    }

    fn put_events(&mut self, e: &Events) -> R<()> {
        let v = encode(e)?;
        self.step.set(&self.keys.ev, v);
        Ok(())
    }

    fn history(&mut self) -> R<History> {
        let key = self.keys.hi.clone();
        self.whole(&key, "history")
    }

    fn put_history(&mut self, h: &History) -> R<()> {
        let v = encode(h)?;
        self.step.set(&self.keys.hi, v);
        Ok(())
    }

    fn traffic(&mut self) -> R<Traffic> {
        let key = self.keys.tr.clone();
        self.whole(&key, "traffic")
    }

    fn put_traffic(&mut self, t: &Traffic) -> R<()> {
        let v = encode(t)?;
        self.step.set(&self.keys.tr, v);
        Ok(())
    }

    fn meta(&mut self, key: &str) -> R<Option<String>> {
        self.step.hget(&self.keys.m, key)
    }

    fn put_meta(&mut self, key: &str, value: &str) -> R<()> {
        self.step.hset(&self.keys.m, key, value.to_string());
        Ok(())
    }

    fn applied(&mut self, origin: &NodeId) -> R<Option<Applied>> {
        Ok(match self.step.hget(&self.keys.ap, &origin.hex())? {
            Some(v) => {
                let a: StoredApplied = decode("applied batch", &v)?;
                Some(Applied {
                    seq: a.seq,
                    reply: a.reply,
                    at: a.at,
                })
            }
            None => None,
        })
    }

    fn put_applied(&mut self, origin: &NodeId, applied: &Applied) -> R<()> {
        let v = encode(&StoredApplied {
            seq: applied.seq,
            reply: applied.reply.clone(),
            at: applied.at,
        })?;
        self.step.hset(&self.keys.ap, &origin.hex(), v);
        Ok(())
    }

    fn forget_applied_before(&mut self, before: u64) -> R<u64> {
        let mut gone = 0;
        for (origin, a) in self.applied_all()? {
            if a.at < before {
                self.step.hdel(&self.keys.ap, &origin);
                gone += 1;
            }
        }
        Ok(gone)
    }

    /// Touches read their session's last activity (or their cookie's row):
    /// one round trip for all of a batch's, instead of one each.
    fn prefetch(&mut self, ops: &[Op]) -> R<()> {
        let (mut ids, mut cookies, mut logins) = (Vec::new(), Vec::new(), Vec::new());
        for op in ops {
            match op {
                Op::TouchSession { id, .. } => ids.push(id.hex()),
                Op::Touch { hash, .. } => cookies.push(hash.hex()),
                // A login reads whether its session exists, its cookie's row and
                // the session's cookie list, and counts the sessions (the cap).
                Op::Login { session } | Op::Bearer { session, .. } => {
                    ids.push(session.id.hex());
                    logins.push(session.id.hex());
                    cookies.push(session.cookie.hex());
                }
                // The cookie index's ops read the row and the session's list.
                Op::Index { hash, id, .. }
                | Op::Shorten { hash, id, .. }
                | Op::Unindex { hash, id } => {
                    cookies.push(hash.hex());
                    logins.push(id.hex());
                }
                _ => {}
            }
        }
        if !logins.is_empty() {
            let (s, sc) = (self.keys.s.clone(), self.keys.sc.clone());
            if ops
                .iter()
                .any(|op| matches!(op, Op::Login { .. } | Op::Bearer { .. }))
            {
                self.step.hmget(&s, &logins)?;
            }
            self.step.hmget(&sc, &logins)?;
        }
        if !cookies.is_empty() {
            // The sessions these cookies lead to, when they are kept here too.
            let key = self.keys.c.clone();
            for row in self.step.hmget(&key, &cookies)?.into_iter().flatten() {
                if let Ok(StoredRow::Session { s, .. }) = serde_json::from_str(&row) {
                    ids.push(s.hex());
                }
            }
        }
        if !ids.is_empty() {
            let (l, i) = (self.keys.l.clone(), self.keys.i.clone());
            self.step.zprefetch(&l, &ids)?;
            // A touch also reads the login time (its session may be past its lifetime).
            self.step.zprefetch(&i, &ids)?;
        }
        Ok(())
    }

    fn minima(&mut self) -> R<Minima> {
        let (l, i, cu) = (
            self.keys.l.clone(),
            self.keys.i.clone(),
            self.keys.cu.clone(),
        );
        Ok(Minima {
            last_ms: self.zmin(&l)?,
            login_ms: self.zmin(&i)?,
            cookie_until: self.zmin(&cu)?,
            revoked_until: self.revoked_all()?.iter().map(|(_, t)| *t).min(),
            applied_at: self.applied_all()?.iter().map(|(_, a)| a.at).min(),
        })
    }

    fn rows(&mut self) -> R<Rows> {
        let (l, cu) = (self.keys.l.clone(), self.keys.cu.clone());
        Ok(Rows {
            sessions: self.step.zcard(&l)?,
            cookies: self.step.zcard(&cu)?,
            revoked: self.revoked_all()?.len() as u64,
        })
    }
}
