//! Bearer identity (the `jwt` config section) in the Worker, as the Envoy filter's
//! `bearer_session` / `transient_session`: a token names a user only after the
//! core's `TokenCache` verified it, and its session key (the core's
//! `bearer::session_key`) stands in for the session cookie hash from then on, so
//! activity, logout, revocation, the limits and the stats take the same paths.
//!
//! The isolate keeps the verdicts (`TokenCache`, per isolate like the filter's per
//! VM). A token the cache calls `Unconfirmed` (first seen here, or not confirmed for
//! `CONFIRM_MS`) buffers an `Op::Bearer` with the session it would start; the
//! session's shard starts it unless it is live or its key is revoked (the core's
//! `bearer::start`), and
//! the isolate takes it as confirmed at once: no Durable Object request on the
//! request path, and a re-check is one op in the next flush, not a request.
//! Plain data apart from the cache, so the rules are unit-tested natively.

use headcount_core::bearer::{Bearer, BearerConfig, TokenCache};
use headcount_core::ids::TokenKey;
use headcount_core::{CookieHash, CookieHasher};
use std::cell::RefCell;

thread_local! {
    /// Verified (and refused) tokens, by keyed hash: each token is verified once
    /// per isolate (until its `exp`; refusals for a minute).
    static TOKENS: RefCell<TokenCache> = RefCell::new(TokenCache::new());
}

/// What the request's token means (verifies it, or recalls the verdict).
pub fn check(cfg: &BearerConfig, hasher: &CookieHasher, token: &[u8], now: u64) -> Bearer {
    TOKENS.with(|t| t.borrow_mut().check(cfg, hasher, token, now))
}

/// The token's session is taken as present for the next `CONFIRM_MS`.
pub fn confirm(token: &TokenKey, now: u64) {
    TOKENS.with(|t| t.borrow_mut().confirm(token, now));
}

/// The session under `key` ended here (logout): its tokens are looked at again.
pub fn forget_session(key: &CookieHash) {
    TOKENS.with(|t| t.borrow_mut().forget_session(key));
}

/// Sessions a token starts, and the unstored one that authorizes admin routes:
/// the core's rules, under the names this host uses.
pub use headcount_core::bearer::{start_session as session, transient_session as transient};

#[cfg(test)]
mod tests {
    use super::*;
    use headcount_core::bearer::CONFIRM_MS;
    use headcount_core::gateway;
    use headcount_core::identity::Identity;
    use headcount_core::Config;

    const SECRET: &str = "worker-bearer-test-secret-0123456789";
    const NOW_S: u64 = 1_800_000_000;

    fn b64(v: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in v.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }

    /// HS256 by hand (HMAC-SHA-256 from sha2), so the test needs no JWT crate.
    fn sign(claims: &serde_json::Value) -> String {
        use sha2::{Digest, Sha256};
        let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = b64(claims.to_string().as_bytes());
        let input = format!("{head}.{body}");
        let mut key = [0u8; 64];
        key.iter_mut().zip(SECRET.bytes()).for_each(|(k, s)| *k = s);
        let pad = |x: u8| key.iter().map(|k| k ^ x).collect::<Vec<u8>>();
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(input.as_bytes())
            .finalize();
        let mac = Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        format!("{input}.{}", b64(&mac))
    }

    fn config() -> Config {
        let json =
            format!(r#"{{"jwt": {{"hs256_secret": "{SECRET}"}}, "admin_roles": ["admin"]}}"#);
        Config::from_json(json.as_bytes()).unwrap()
    }

    fn who(token: &str, cfg: &Config, hasher: &CookieHasher, now: u64) -> Bearer {
        check(cfg.jwt.as_ref().unwrap(), hasher, token.as_bytes(), now)
    }

    #[test]
    fn a_token_starts_one_session_with_an_id_every_isolate_agrees_on() {
        let cfg = config();
        let hasher = CookieHasher::new(b"secret");
        let now = NOW_S * 1000;
        let ann = sign(
            &serde_json::json!({"sub": "7", "preferred_username": "ann", "role": "teacher", "exp": NOW_S + 600}),
        );
        let Bearer::Unconfirmed {
            key,
            token,
            identity,
        } = who(&ann, &cfg, &hasher, now)
        else {
            panic!("not verified");
        };
        let s = session(
            &cfg,
            &hasher,
            key,
            identity.clone(),
            "203.0.113.9".into(),
            "curl/8".into(),
            now,
        )
        .unwrap();
        assert_eq!(
            (s.user_id.as_str(), s.username.as_str(), s.role.as_str()),
            ("7", "ann", "teacher")
        );
        assert_eq!((s.cookie, s.login_ms, s.last_ms), (key, now, now));
        assert_eq!(s.ip, "203.0.113.9");
        // Another isolate (same hasher secret) derives the same id; the key is not the id.
        let again = session(
            &cfg,
            &hasher,
            key,
            identity,
            String::new(),
            String::new(),
            now + 5,
        )
        .unwrap();
        assert_eq!(again.id, s.id);
        // The id is derived from the key, not the key itself.
        assert_ne!(s.id.0, key.0);
        // Once confirmed, the token is Known (no op) until CONFIRM_MS has passed.
        confirm(&token, now);
        assert_eq!(who(&ann, &cfg, &hasher, now + 1), Bearer::Known(key));
        assert!(matches!(
            who(&ann, &cfg, &hasher, now + CONFIRM_MS),
            Bearer::Unconfirmed { .. }
        ));
        confirm(&token, now + CONFIRM_MS);
        // A logout here forgets it: the next request looks again.
        forget_session(&key);
        assert!(matches!(
            who(&ann, &cfg, &hasher, now + CONFIRM_MS + 1),
            Bearer::Unconfirmed { .. }
        ));
        // A forged token names nobody.
        let forged = format!("{}x", &ann[..ann.len() - 1]);
        assert!(matches!(
            who(&forged, &cfg, &hasher, now),
            Bearer::Refused(Some(_))
        ));
    }

    #[test]
    fn a_transient_session_authorizes_admins_only() {
        let cfg = config();
        let admin = Identity {
            user_id: Some("1".into()),
            username: Some("root".into()),
            role: Some("admin".into()),
        };
        let student = Identity {
            role: Some("student".into()),
            ..admin.clone()
        };
        let now = NOW_S * 1000;
        let route = gateway::AdminRoute::Stats;
        let token = Some(&b"a.b.c"[..]);
        let access = |who: Identity| {
            gateway::authorize(
                &cfg,
                route,
                token,
                transient(&cfg, who, now).as_ref(),
                gateway::Site::Unproven,
                now,
            )
        };
        assert_eq!(access(admin), gateway::Access::Allowed);
        assert_eq!(access(student), gateway::Access::Forbidden);
        assert_eq!(
            gateway::authorize(&cfg, route, token, None, gateway::Site::Unproven, now),
            gateway::Access::Forbidden
        );
    }
}
