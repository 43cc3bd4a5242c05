//! Bearer identity: users named by a verified JWT rather than by a login the
//! gateway watched.
//!
//! A token is attacker-controlled bytes until [`crate::jwt::verify`] accepts it.
//! Verifying costs up to a millisecond or more (RS256/ES256), so each host VM keeps a
//! [`TokenCache`] of verdicts keyed by the token's keyed hash, valid until the
//! token's `exp`. A verified token maps to a session key in the same namespace as
//! session cookie hashes, so the session table, activity, logout, revocation and
//! the stats treat JWT users and cookie users alike:
//! - a token carrying `sid` maps to one session per (user, `sid`), so refreshed
//!   access tokens continue the same session;
//! - a token without `sid` is its own session (it ends by idle expiry).
//!
//! The first request seen with a token starts the session (the "login"); no
//! session is started for a key the table reports as revoked.

use crate::config::{Config, ConfigError};
use crate::gateway::LoginFacts;
use crate::identity::Identity;
use crate::ids::TokenKey;
use crate::jwt::{self, JwtConfig, JwtError, Key};
use crate::session::{CookieHash, CookieHasher, Session};
use serde::Deserialize;
use std::collections::HashMap;

/// Verdicts a VM remembers; when full, expired ones go first, then everything.
pub const MAX_CACHED: usize = 4096;
/// How long a refused token stays refused without re-verifying (floods of one
/// forged token then cost a hash, not a signature check).
pub const REFUSED_TTL_MS: u64 = 60_000;
/// How long a verified token's session is taken as present in the table before
/// the host looks again (so a session ended meanwhile is started again).
pub const CONFIRM_MS: u64 = 30_000;

/// The `jwt` section of the plugin config, as written.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwt {
    hs256_secret: Option<String>,
    public_keys: Option<Vec<String>>,
    jwks: Option<serde_json::Value>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_seconds: Option<u64>,
    user_id_claim: Option<String>,
    username_claim: Option<String>,
    role_claim: Option<String>,
    header: Option<String>,
    cookie: Option<String>,
}

/// Validated JWT identity settings.
#[derive(Debug, Clone)]
pub struct BearerConfig {
    pub verify: JwtConfig,
    /// Request header holding `Bearer <token>` (lower-case), if tokens come in a header.
    pub header: Option<String>,
    /// Cookie holding the bare token, if tokens come in a cookie.
    pub cookie: Option<String>,
    /// The section as configured, for equality (keys have no `PartialEq`).
    source: String,
}

impl PartialEq for BearerConfig {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for BearerConfig {}

fn err(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        message: message.into(),
    }
}

fn claim_name(field: &str, v: Option<String>, default: &str) -> Result<String, ConfigError> {
    let v = v.unwrap_or_else(|| default.to_string());
    if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
        return Err(err(field, "must be a claim name or a JSON pointer"));
    }
    Ok(v)
}

impl BearerConfig {
    pub(crate) fn from_raw(raw: RawJwt) -> Result<BearerConfig, ConfigError> {
        let source = serde_json::to_string(&raw).unwrap_or_default();
        let mut keys: Vec<Key> = Vec::new();
        if let Some(secret) = &raw.hs256_secret {
            keys.push(Key::hs256(secret.as_bytes()).map_err(|e| err("jwt.hs256_secret", e.0))?);
        }
        for (i, pem) in raw.public_keys.iter().flatten().enumerate() {
            keys.push(
                Key::public_pem(pem).map_err(|e| err(&format!("jwt.public_keys[{i}]"), e.0))?,
            );
        }
        if let Some(jwks) = &raw.jwks {
            let bytes = serde_json::to_vec(jwks).unwrap_or_default();
            keys.extend(Key::from_jwks(&bytes).map_err(|e| err("jwt.jwks", e.0))?);
        }
        if keys.is_empty() {
            return Err(err(
                "jwt",
                "needs at least one key: hs256_secret, public_keys or jwks",
            ));
        }
        if keys.len() > jwt::MAX_KEYS {
            return Err(err("jwt", format!("at most {} keys in all", jwt::MAX_KEYS)));
        }
        let mut verify = JwtConfig::new(keys);
        for (field, value, slot) in [
            ("jwt.issuer", raw.issuer, &mut verify.issuer),
            ("jwt.audience", raw.audience, &mut verify.audience),
        ] {
            if let Some(v) = value {
                if v.is_empty() || v.len() > 256 {
                    return Err(err(field, "must be 1 to 256 characters"));
                }
                *slot = Some(v);
            }
        }
        if let Some(l) = raw.leeway_seconds {
            if l > 600 {
                return Err(err("jwt.leeway_seconds", "must be at most 600"));
            }
            verify.leeway_s = l;
        }
        verify.user_id_claim = claim_name("jwt.user_id_claim", raw.user_id_claim, "sub")?;
        verify.username_claim = claim_name(
            "jwt.username_claim",
            raw.username_claim,
            "preferred_username",
        )?;
        verify.role_claim = claim_name("jwt.role_claim", raw.role_claim, "role")?;
        let cookie = match raw.cookie {
            Some(c) => {
                crate::config::token("jwt.cookie", &c)?;
                Some(c)
            }
            None => None,
        };
        let header = match raw.header {
            Some(h) if h.is_empty() => None,
            Some(h) => {
                crate::config::token("jwt.header", &h)?;
                Some(h.to_ascii_lowercase())
            }
            None => Some("authorization".to_string()),
        };
        if header.is_none() && cookie.is_none() {
            return Err(err(
                "jwt.header",
                "tokens must come from a header or a cookie",
            ));
        }
        Ok(BearerConfig {
            verify,
            header,
            cookie,
            source,
        })
    }

    /// The token a request carries: `Bearer <token>` in the configured header, else
    /// the configured cookie. `header` is that header's value, `cookies` the
    /// request's `Cookie` header.
    pub fn token<'a>(
        &self,
        header: Option<&'a [u8]>,
        cookies: Option<&'a [u8]>,
    ) -> Option<&'a [u8]> {
        header
            .filter(|_| self.header.is_some())
            .and_then(crate::gateway::bearer)
            .filter(|t| looks_like_jwt(t))
            .or_else(|| {
                let name = self.cookie.as_deref()?;
                crate::identity::request_cookie(cookies?, name)
            })
    }
}

/// Three dot-separated parts: an opaque bearer token (an API key, the admin
/// token) is not a JWT and is left alone.
fn looks_like_jwt(t: &[u8]) -> bool {
    t.iter().filter(|b| **b == b'.').count() == 2
}

/// The session key a verified token maps to (see the module docs).
/// `token_hash` is the token's keyed hash, which is the key itself for a token without `sid`.
pub fn session_key(
    hasher: &CookieHasher,
    claims: &jwt::Claims,
    token_hash: &TokenKey,
) -> CookieHash {
    match &claims.sid {
        Some(sid) => {
            let mut input = Vec::with_capacity(8 + claims.user_id.len() + sid.len());
            input.extend_from_slice(b"jwt-sid\0");
            input.extend_from_slice(claims.user_id.as_bytes());
            input.push(0);
            input.extend_from_slice(sid.as_bytes());
            hasher.hash(&input)
        }
        // Without `sid`, the token is its own session: keyed by its own hash.
        None => CookieHash(token_hash.0),
    }
}

/// The session id for a bearer session: derived from its key, so two VMs that
/// start the same session at once write the same record rather than two.
pub fn session_id_seed(hasher: &CookieHasher, key: &CookieHash) -> [u8; 16] {
    hasher.hash(&[&b"id\0"[..], &key.0[..]].concat()).0
}

/// The session a verified token starts (its first request is its "login"). Its id
/// derives from the key, so every worker or isolate builds the same id. `None`
/// when the token names nobody.
pub fn start_session(
    cfg: &Config,
    hasher: &CookieHasher,
    key: CookieHash,
    who: Identity,
    ip: String,
    user_agent: String,
    now: u64,
) -> Option<Session> {
    let facts = LoginFacts {
        cookie: key,
        ip,
        user_agent,
        now,
        random: session_id_seed(hasher, &key),
    };
    crate::gateway::new_session(cfg, who, facts)
}

/// A verified token's user as a session that is never stored: admin routes start
/// no session, but an admin's token authorizes them.
pub fn transient_session(cfg: &Config, who: Identity, now: u64) -> Option<Session> {
    let facts = LoginFacts {
        cookie: CookieHash([0; 16]),
        ip: String::new(),
        user_agent: String::new(),
        now,
        random: [0; 16],
    };
    crate::gateway::new_session(cfg, who, facts)
}

/// What a store does with a verified token whose session may need starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The session is live: nothing to do (another worker or node, or an
    /// earlier request, started it).
    Live,
    /// The key belongs to a revoked session: it never comes back.
    Revoked,
    /// No such session: start it (a login: limits, event, counters).
    New,
    /// The session is over but not yet removed: end it as an expiry, then start
    /// it again.
    Restart,
}

/// The decision for a verified token, given the stored session with its id (if
/// any) and whether its key is revoked.
pub fn start(existing: Option<&Session>, revoked: bool, now: u64, cfg: &Config) -> Start {
    match existing {
        Some(s) if !s.is_expired(now, cfg) => Start::Live,
        _ if revoked => Start::Revoked,
        Some(_) => Start::Restart,
        None => Start::New,
    }
}

#[derive(Debug, Clone)]
enum Verdict {
    Valid {
        key: CookieHash,
        identity: Identity,
        /// The token's `exp` (plus leeway), Unix ms: the verdict's end.
        until: u64,
        /// Until when the session is taken as present in the table.
        confirmed_until: u64,
    },
    Refused {
        until: u64,
    },
}

/// What a request's token means for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bearer {
    /// Verified, and its session was seen in the table recently: record activity
    /// under `key`.
    Known(CookieHash),
    /// Verified: the host makes sure a session exists under `key` (starting one
    /// from `identity` unless the key is revoked), then calls [`TokenCache::confirm`].
    Unconfirmed {
        key: CookieHash,
        token: TokenKey,
        identity: Identity,
    },
    /// Forged, expired, unsigned, or otherwise not acceptable: nobody. `None` when
    /// the verdict came from the cache.
    Refused(Option<JwtError>),
}

/// Per-VM memory of token verdicts, keyed by the token's keyed hash (the token
/// itself is never kept).
#[derive(Debug, Default)]
pub struct TokenCache {
    verdicts: HashMap<TokenKey, Verdict>,
}

impl TokenCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.verdicts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.verdicts.is_empty()
    }

    /// Verifies `token` at `now` (Unix ms), or recalls the verdict.
    pub fn check(
        &mut self,
        cfg: &BearerConfig,
        hasher: &CookieHasher,
        token: &[u8],
        now: u64,
    ) -> Bearer {
        self.check_hashed(cfg, hasher, token, hasher.hash_token(token), now)
    }

    /// As [`TokenCache::check`], for a host that already has `hasher.hash(token)`
    /// (e.g. from its cache of cookie HMACs), so a known token costs no HMAC.
    pub fn check_hashed(
        &mut self,
        cfg: &BearerConfig,
        hasher: &CookieHasher,
        token: &[u8],
        token_hash: TokenKey,
        now: u64,
    ) -> Bearer {
        match self.verdicts.get(&token_hash) {
            Some(Verdict::Valid {
                key,
                identity,
                until,
                confirmed_until,
            }) if now < *until => {
                return if now < *confirmed_until {
                    Bearer::Known(*key)
                } else {
                    Bearer::Unconfirmed {
                        key: *key,
                        token: token_hash,
                        identity: identity.clone(),
                    }
                };
            }
            Some(Verdict::Refused { until }) if now < *until => return Bearer::Refused(None),
            _ => {}
        }
        let verdict = jwt::verify(token, &cfg.verify, now / 1000);
        self.make_room(now);
        match verdict {
            Ok(claims) => {
                let key = session_key(hasher, &claims, &token_hash);
                let identity = claims.identity();
                let until = claims
                    .exp
                    .saturating_add(cfg.verify.leeway_s)
                    .saturating_mul(1000);
                self.verdicts.insert(
                    token_hash,
                    Verdict::Valid {
                        key,
                        identity: identity.clone(),
                        until,
                        confirmed_until: 0,
                    },
                );
                Bearer::Unconfirmed {
                    key,
                    token: token_hash,
                    identity,
                }
            }
            Err(e) => {
                self.verdicts.insert(
                    token_hash,
                    Verdict::Refused {
                        until: now.saturating_add(REFUSED_TTL_MS),
                    },
                );
                Bearer::Refused(Some(e))
            }
        }
    }

    /// The token's session is in the table as of `now`.
    pub fn confirm(&mut self, token: &TokenKey, now: u64) {
        if let Some(Verdict::Valid {
            confirmed_until, ..
        }) = self.verdicts.get_mut(token)
        {
            *confirmed_until = now.saturating_add(CONFIRM_MS);
        }
    }

    /// Forgets every verdict that maps to `key` (its session ended here), so the
    /// next request looks at the table again.
    pub fn forget_session(&mut self, key: &CookieHash) {
        self.verdicts
            .retain(|_, v| !matches!(v, Verdict::Valid { key: k, .. } if k == key));
    }

    fn make_room(&mut self, now: u64) {
        if self.verdicts.len() < MAX_CACHED {
            return;
        }
        self.verdicts.retain(|_, v| match v {
            Verdict::Valid { until, .. } | Verdict::Refused { until } => now < *until,
        });
        if self.verdicts.len() >= MAX_CACHED {
            self.verdicts.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::field_of;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    const SECRET: &str = "bearer-test-secret-0123456789abcdef";
    const NOW_S: u64 = 1_800_000_000;

    fn sign(claims: serde_json::Value) -> String {
        let enc = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let head = enc(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = enc(claims.to_string().as_bytes());
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{head}.{body}").as_bytes());
        format!("{head}.{body}.{}", enc(&mac.finalize().into_bytes()))
    }

    fn cfg(extra: &str) -> BearerConfig {
        let json = format!(r#"{{"jwt": {{"hs256_secret": "{SECRET}"{extra}}}}}"#);
        Config::from_json(json.as_bytes()).unwrap().jwt.unwrap()
    }

    #[test]
    fn a_store_starts_a_session_once_and_never_a_revoked_one() {
        let full = Config::from_json(b"{}").unwrap();
        let hasher = CookieHasher::new(b"secret");
        let now = NOW_S * 1000;
        let who = Identity {
            user_id: Some("7".into()),
            ..Identity::default()
        };
        let s = start_session(
            &full,
            &hasher,
            crate::ids::CookieHash([3; 16]),
            who,
            String::new(),
            String::new(),
            now,
        )
        .unwrap();
        assert_eq!(start(None, false, now, &full), Start::New);
        assert_eq!(start(Some(&s), false, now + 1, &full), Start::Live);
        assert_eq!(start(None, true, now, &full), Start::Revoked);
        // Idle past the timeout, not yet swept: ended and started again.
        let idle = now + full.idle_timeout_ms + 1;
        assert_eq!(start(Some(&s), false, idle, &full), Start::Restart);
        assert_eq!(start(Some(&s), true, idle, &full), Start::Revoked);
    }

    #[test]
    fn config_errors_name_the_field() {
        assert_eq!(field_of(r#"{"jwt": {}}"#), "jwt");
        assert_eq!(
            field_of(r#"{"jwt": {"hs256_secret": "short"}}"#),
            "jwt.hs256_secret"
        );
        assert_eq!(
            field_of(r#"{"jwt": {"public_keys": ["not a pem"]}}"#),
            "jwt.public_keys[0]"
        );
        assert_eq!(field_of(r#"{"jwt": {"jwks": {"keys": []}}}"#), "jwt.jwks");
        assert_eq!(field_of(r#"{"jwt": {"jwks": 7}}"#), "jwt.jwks");
        assert_eq!(
            field_of(&format!(
                r#"{{"jwt": {{"hs256_secret": "{SECRET}", "leeway_seconds": 9999}}}}"#
            )),
            "jwt.leeway_seconds"
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"jwt": {{"hs256_secret": "{SECRET}", "cookie": "a b"}}}}"#
            )),
            "jwt.cookie"
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"jwt": {{"hs256_secret": "{SECRET}", "header": ""}}}}"#
            )),
            "jwt.header"
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"jwt": {{"hs256_secret": "{SECRET}", "bogus": 1}}}}"#
            )),
            "jwt.bogus"
        );
        assert_eq!(field_of(r#"{"jwt": {"issuer": 5}}"#), "jwt.issuer");
        let c = cfg(
            r#", "issuer": "https://idp", "audience": "hc", "role_claim": "/realm/roles", "header": "X-Token", "cookie": "at""#,
        );
        assert_eq!(c.verify.issuer.as_deref(), Some("https://idp"));
        assert_eq!(c.verify.audience.as_deref(), Some("hc"));
        assert_eq!(c.verify.role_claim, "/realm/roles");
        assert_eq!(c.header.as_deref(), Some("x-token"));
        assert_eq!(c.cookie.as_deref(), Some("at"));
        assert_eq!(cfg("").header.as_deref(), Some("authorization"));
        assert_eq!(cfg(""), cfg(""));
        assert_ne!(cfg(""), cfg(r#", "issuer": "x""#));
    }

    #[test]
    fn token_comes_from_the_header_or_the_cookie() {
        let c = cfg(r#", "cookie": "access_token""#);
        assert_eq!(c.token(Some(b"Bearer a.b.c"), None), Some(&b"a.b.c"[..]));
        assert_eq!(c.token(Some(b"bearer a.b.c "), None), Some(&b"a.b.c"[..]));
        // An opaque bearer token (an API key, the admin token) is not a JWT.
        assert_eq!(c.token(Some(b"Bearer opaque-admin-token"), None), None);
        assert_eq!(c.token(Some(b"Basic dXNlcjpwYXNz"), None), None);
        assert_eq!(
            c.token(Some(b"Basic x"), Some(b"a=1; access_token=x.y.z")),
            Some(&b"x.y.z"[..])
        );
        assert_eq!(cfg("").token(None, Some(b"access_token=x.y.z")), None);
        assert_eq!(c.token(Some(b"\xff\xfe"), Some(b"\xff=\xfe")), None);
    }

    #[test]
    fn a_verified_token_is_recalled_until_exp_and_reconfirmed() {
        let c = cfg("");
        let h = CookieHasher::new(b"k");
        let t = sign(
            serde_json::json!({"sub": "7", "preferred_username": "ann", "role": "teacher", "exp": NOW_S + 600}),
        );
        let now = NOW_S * 1000;
        let mut cache = TokenCache::new();
        let Bearer::Unconfirmed {
            key,
            token,
            identity,
        } = cache.check(&c, &h, t.as_bytes(), now)
        else {
            panic!("not verified");
        };
        assert_eq!(identity.username.as_deref(), Some("ann"));
        assert_eq!(identity.role.as_deref(), Some("teacher"));
        assert_eq!(key, h.hash(t.as_bytes()));
        // Unconfirmed until the host says the session is there.
        assert!(matches!(
            cache.check(&c, &h, t.as_bytes(), now + 1),
            Bearer::Unconfirmed { .. }
        ));
        cache.confirm(&token, now + 1);
        assert_eq!(
            cache.check(&c, &h, t.as_bytes(), now + 2),
            Bearer::Known(key)
        );
        assert_eq!(
            cache.check(&c, &h, t.as_bytes(), now + 1 + CONFIRM_MS - 1),
            Bearer::Known(key)
        );
        assert!(matches!(
            cache.check(&c, &h, t.as_bytes(), now + 1 + CONFIRM_MS),
            Bearer::Unconfirmed { .. }
        ));
        cache.confirm(&token, now + 2 + CONFIRM_MS);
        cache.forget_session(&key);
        assert!(matches!(
            cache.check(&c, &h, t.as_bytes(), now + 3 + CONFIRM_MS),
            Bearer::Unconfirmed { .. }
        ));
        // Past exp + leeway the token is verified again, and refused.
        let late = (NOW_S + 600 + c.verify.leeway_s) * 1000;
        assert_eq!(
            cache.check(&c, &h, t.as_bytes(), late),
            Bearer::Refused(Some(JwtError::Expired))
        );
        assert_eq!(
            cache.check(&c, &h, t.as_bytes(), late + 1),
            Bearer::Refused(None)
        );
    }

    #[test]
    fn forged_unsigned_and_expired_tokens_are_nobody() {
        let c = cfg("");
        let h = CookieHasher::new(b"k");
        let now = NOW_S * 1000;
        let good = sign(serde_json::json!({"sub": "7", "exp": NOW_S + 600}));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_body = URL_SAFE_NO_PAD.encode(br#"{"sub":"1","role":"admin","exp":4102444800}"#);
        parts[1] = &forged_body;
        let forged = parts.join(".");
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            forged_body
        );
        let expired = sign(serde_json::json!({"sub": "7", "exp": NOW_S - 3600}));
        let mut cache = TokenCache::new();
        assert_eq!(
            cache.check(&c, &h, forged.as_bytes(), now),
            Bearer::Refused(Some(JwtError::BadSignature))
        );
        assert_eq!(
            cache.check(&c, &h, none.as_bytes(), now),
            Bearer::Refused(Some(JwtError::AlgNone))
        );
        assert_eq!(
            cache.check(&c, &h, expired.as_bytes(), now),
            Bearer::Refused(Some(JwtError::Expired))
        );
        // A refusal is remembered for a while, then checked again.
        assert_eq!(
            cache.check(&c, &h, forged.as_bytes(), now + 1),
            Bearer::Refused(None)
        );
        assert_eq!(
            cache.check(&c, &h, forged.as_bytes(), now + REFUSED_TTL_MS),
            Bearer::Refused(Some(JwtError::BadSignature))
        );
    }

    #[test]
    fn sid_tokens_share_a_session_and_the_cache_is_bounded() {
        let c = cfg("");
        let h = CookieHasher::new(b"k");
        let now = NOW_S * 1000;
        let key_of = |cache: &mut TokenCache, t: &str| match cache.check(&c, &h, t.as_bytes(), now)
        {
            Bearer::Unconfirmed { key, .. } | Bearer::Known(key) => key,
            other => panic!("{other:?}"),
        };
        let mut cache = TokenCache::new();
        let a = sign(serde_json::json!({"sub": "7", "sid": "s1", "jti": "1", "exp": NOW_S + 60}));
        let b = sign(serde_json::json!({"sub": "7", "sid": "s1", "jti": "2", "exp": NOW_S + 900}));
        let other_user = sign(serde_json::json!({"sub": "8", "sid": "s1", "exp": NOW_S + 60}));
        assert_eq!(key_of(&mut cache, &a), key_of(&mut cache, &b));
        assert_ne!(key_of(&mut cache, &a), key_of(&mut cache, &other_user));
        assert_ne!(
            session_id_seed(&h, &key_of(&mut cache, &a)),
            key_of(&mut cache, &a).0
        );
        for i in 0..(MAX_CACHED + 10) {
            cache.check(&c, &h, format!("x.{i}.y").as_bytes(), now);
        }
        assert!(cache.len() <= MAX_CACHED);
    }
}
