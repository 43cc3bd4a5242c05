//! A tracked login session and the rules that decide whether it is active or over.

use crate::config::Config;
use hmac::{digest::KeyInit, Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::ids::{CookieHash, SessionId, TokenKey, UserKey};

/// Longest stored strings, in bytes; longer input is cut at a char boundary.
pub const MAX_NAME: usize = 128;
pub const MAX_ROLE: usize = 64;
pub const MAX_USER_AGENT: usize = 160;

/// Earlier cookie values a session keeps answering to for its whole life.
pub const MAX_ALIASES: usize = 2;

/// HMAC-SHA-256 keyed by a per-deployment secret, truncated to 128 bits.
#[derive(Clone)]
pub struct CookieHasher {
    mac: Hmac<Sha256>,
}

impl CookieHasher {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC's own key normalisation (RFC 2104): long keys are hashed, short ones
        // zero-padded to the block size; doing it here makes construction infallible.
        let mut key = [0u8; 64];
        let digest;
        let short: &[u8] = if secret.len() > key.len() {
            digest = Sha256::digest(secret);
            &digest
        } else {
            secret
        };
        key.iter_mut().zip(short).for_each(|(k, s)| *k = *s);
        Self {
            mac: <Hmac<Sha256> as KeyInit>::new(&key.into()),
        }
    }

    pub fn hash(&self, cookie_value: &[u8]) -> CookieHash {
        CookieHash(self.mac16(cookie_value))
    }

    /// A bearer token's keyed hash: the same HMAC, as the token cache's key.
    pub fn hash_token(&self, token: &[u8]) -> TokenKey {
        TokenKey(self.mac16(token))
    }

    fn mac16(&self, value: &[u8]) -> [u8; 16] {
        let mut mac = self.mac.clone();
        mac.update(value);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.iter_mut().zip(full.iter()).for_each(|(o, f)| *o = *f);
        out
    }
}

/// Who logged in, as seen at login time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// UUID bytes.
    pub id: SessionId,
    pub user_id: String,
    pub username: String,
    pub role: String,
    pub ip: String,
    pub user_agent: String,
    pub login_ms: u64,
    pub last_ms: u64,
    /// Hash of the current cookie value.
    pub cookie: CookieHash,
    /// Hashes of the newest earlier values, which keep leading here until the
    /// session ends (older ones only for a grace period), newest first.
    pub aliases: Vec<CookieHash>,
}

/// Seen within the window (inclusive: at exactly `window` ms it still counts) and not over.
pub fn active(login_ms: u64, last_ms: u64, now: u64, cfg: &Config) -> bool {
    now.saturating_sub(last_ms) <= cfg.active_window_ms && !expired(login_ms, last_ms, now, cfg)
}

/// Idle past the timeout, or older than the maximum lifetime.
pub fn expired(login_ms: u64, last_ms: u64, now: u64, cfg: &Config) -> bool {
    now.saturating_sub(last_ms) > cfg.idle_timeout_ms
        || now.saturating_sub(login_ms) > cfg.max_lifetime_ms
}

/// A session borrowed from its encoded shard: same layout as `Session`, so a scan
/// of every session allocates nothing for strings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SessionRef<'a> {
    pub id: SessionId,
    pub user_id: &'a str,
    pub username: &'a str,
    pub role: &'a str,
    pub ip: &'a str,
    pub user_agent: &'a str,
    pub login_ms: u64,
    pub last_ms: u64,
    pub cookie: CookieHash,
    pub aliases: Vec<CookieHash>,
}

impl SessionRef<'_> {
    pub fn is_active(&self, now: u64, cfg: &Config) -> bool {
        active(self.login_ms, self.last_ms, now, cfg)
    }

    pub fn to_session(&self) -> Session {
        Session {
            id: self.id,
            user_id: self.user_id.to_string(),
            username: self.username.to_string(),
            role: self.role.to_string(),
            ip: self.ip.to_string(),
            user_agent: self.user_agent.to_string(),
            login_ms: self.login_ms,
            last_ms: self.last_ms,
            cookie: self.cookie,
            aliases: self.aliases.clone(),
        }
    }
}

impl Session {
    pub fn is_active(&self, now: u64, cfg: &Config) -> bool {
        active(self.login_ms, self.last_ms, now, cfg)
    }

    pub fn is_expired(&self, now: u64, cfg: &Config) -> bool {
        expired(self.login_ms, self.last_ms, now, cfg)
    }

    pub fn as_ref(&self) -> SessionRef<'_> {
        SessionRef {
            id: self.id,
            user_id: &self.user_id,
            username: &self.username,
            role: &self.role,
            ip: &self.ip,
            user_agent: &self.user_agent,
            login_ms: self.login_ms,
            last_ms: self.last_ms,
            cookie: self.cookie,
            aliases: self.aliases.clone(),
        }
    }

    /// The latest time this session can still be alive; aliases need not outlive it.
    pub fn deadline(&self, cfg: &Config) -> u64 {
        self.login_ms.saturating_add(cfg.max_lifetime_ms)
    }

    /// The name for a log line: the username, or the user id of an unnamed
    /// session (`unnamed:<session id>`).
    pub fn name(&self) -> &str {
        if self.username.is_empty() {
            &self.user_id
        } else {
            &self.username
        }
    }

    pub fn uuid(&self) -> String {
        uuid::Uuid::from_bytes(self.id.0).hyphenated().to_string()
    }

    /// Every cookie value known to lead here: the current one, the kept aliases,
    /// and `extra` (the value a logout came with, say) if it is not among them.
    pub fn cookies(&self, extra: Option<&CookieHash>) -> Vec<CookieHash> {
        let mut all = vec![self.cookie];
        all.extend(self.aliases.iter().copied());
        if let Some(h) = extra.filter(|h| !all.contains(h)) {
            all.push(*h);
        }
        all
    }
}

/// The rotation rule, for every store: the app re-issued the cookie as `to`. The
/// current value becomes the newest alias; only the newest `MAX_ALIASES` aliases
/// are kept for the session's life. Returns `None` if `to` is already current,
/// else the aliases that fell off (they resolve for `ROTATION_GRACE_MS` only).
pub fn rotate_cookie(
    cookie: &mut CookieHash,
    aliases: &mut Vec<CookieHash>,
    to: CookieHash,
) -> Option<Vec<CookieHash>> {
    if *cookie == to {
        return None;
    }
    let old = std::mem::replace(cookie, to);
    aliases.retain(|a| *a != to && *a != old);
    aliases.insert(0, old);
    Some(aliases.split_off(aliases.len().min(MAX_ALIASES)))
}

/// The per-user index key (`max_sessions_per_user`): a plain SHA-256 of the user
/// id cut to 128 bits (user ids are not secrets), the same on every host.
pub fn user_key(user_id: &str) -> UserKey {
    let d = Sha256::digest(user_id.as_bytes());
    let mut out = [0u8; 16];
    out.iter_mut().zip(d.iter()).for_each(|(o, b)| *o = *b);
    UserKey(out)
}

/// Turns 16 random bytes into a version-4 UUID; the host supplies the randomness.
pub fn session_id_from_random(random: [u8; 16]) -> SessionId {
    SessionId(
        *uuid::Builder::from_random_bytes(random)
            .as_uuid()
            .as_bytes(),
    )
}

/// Cuts `s` to at most `max` bytes on a char boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(login: u64, last: u64) -> Session {
        Session {
            id: crate::ids::SessionId([0; 16]),
            user_id: "1".into(),
            username: "u".into(),
            role: "student".into(),
            ip: "127.0.0.1".into(),
            user_agent: "ua".into(),
            login_ms: login,
            last_ms: last,
            cookie: crate::ids::CookieHash([0; 16]),
            aliases: vec![],
        }
    }

    #[test]
    fn active_window_is_inclusive() {
        let cfg = Config::default();
        let s = session(0, 1_000);
        assert!(s.is_active(1_000 + 300_000, &cfg));
        assert!(!s.is_active(1_000 + 300_001, &cfg));
    }

    #[test]
    fn idle_timeout_and_max_lifetime_end_a_session() {
        let cfg = Config::default();
        assert!(!session(0, 0).is_expired(1_800_000, &cfg));
        assert!(session(0, 0).is_expired(1_800_001, &cfg));
        let busy = session(0, 43_200_001);
        assert!(busy.is_expired(43_200_001, &cfg));
        assert!(!busy.is_active(43_200_001, &cfg));
    }

    #[test]
    fn hash_is_keyed_and_stable() {
        let a = CookieHasher::new(b"secret-one");
        let b = CookieHasher::new(b"secret-two");
        assert_eq!(a.hash(b"v"), a.hash(b"v"));
        assert_ne!(a.hash(b"v"), a.hash(b"w"));
        assert_ne!(a.hash(b"v"), b.hash(b"v"));
    }

    #[test]
    fn session_ids_are_v4_uuids() {
        let id = session_id_from_random([0xff; 16]);
        let s = uuid::Uuid::from_bytes(id.0);
        assert_eq!(s.get_version_num(), 4);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ééé".into(), 3), "é");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }
}
