//! `jwt::verify` on arbitrary tokens, against a fixed config of each algorithm.
//! The first byte picks the mode:
//!   0 HS256 key, 1 RS256 key, 2 ES256 key, 3 JWKS + HS256 with iss/aud checks:
//!     the rest is the token;
//!   4 the rest is `header-json \0 payload-json`, which this target base64url-encodes
//!     and signs with the HS256 key, so the claim checks behind the signature are
//!     fuzzed too;
//!   5 the rest is key material: a JWKS, a PEM public key, an HS256 secret;
//!   6 the rest is `authorization \0 cookie-header`: the request path of bearer
//!     identity (token lookup, then the per-VM verdict cache), twice.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use headcount_core::bearer::{BearerConfig, TokenCache};
use headcount_core::jwt::{verify, JwtConfig, Key};
use headcount_core::{Config, CookieHasher};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use std::sync::OnceLock;

const SECRET_STR: &str = "headcount-test-secret-0123456789abcdef";
const SECRET: &[u8] = SECRET_STR.as_bytes();
const NOW: u64 = 1_800_000_000;
const RSA1_PUB: &str = include_str!("../../plugin/core/tests/fixtures/jwt/rsa1.pub.pem");
const EC1_PUB: &str = include_str!("../../plugin/core/tests/fixtures/jwt/ec1.pub.pem");
const JWKS: &str = include_str!("../../plugin/core/tests/fixtures/jwt/jwks.json");

// The fixtures below are constants of this file and the core's test fixtures: if one fails
// to load, the target is broken, and failing loudly on the first input is the right outcome
// (a silent fallback would fuzz a weaker setup unnoticed).
#[allow(
    clippy::expect_used,
    reason = "fixed fixtures; a failure is a bug in the target, caught on its first input"
)]
fn configs() -> &'static [JwtConfig; 4] {
    static CONFIGS: OnceLock<[JwtConfig; 4]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let key = |k: Result<Key, _>| k.expect("fixture key");
        let mut all = Key::from_jwks(JWKS.as_bytes()).expect("fixture JWKS");
        all.push(key(Key::hs256(SECRET)).with_kid("hs-1"));
        let mut checked = JwtConfig::new(all);
        checked.issuer = Some("https://idp.example".into());
        checked.audience = Some("headcount".into());
        checked.role_claim = "/realm_access/roles".into();
        [
            JwtConfig::new(vec![key(Key::hs256(SECRET))]),
            JwtConfig::new(vec![key(Key::rs256_pem(RSA1_PUB))]),
            JwtConfig::new(vec![key(Key::es256_pem(EC1_PUB))]),
            checked,
        ]
    })
}

#[allow(
    clippy::expect_used,
    reason = "fixed fixtures; a failure is a bug in the target, caught on its first input"
)]
fn bearer_config() -> &'static BearerConfig {
    static CFG: OnceLock<BearerConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        let json =
            format!(r#"{{"jwt": {{"hs256_secret": "{SECRET_STR}", "cookie": "access_token"}}}}"#);
        Config::from_json(json.as_bytes())
            .expect("fixture config")
            .jwt
            .expect("jwt section")
    })
}

/// The HS256 signer for mode 4, keyed once and cloned per input.
#[allow(
    clippy::expect_used,
    reason = "HMAC accepts a key of any length, so new_from_slice cannot fail"
)]
fn signer() -> &'static Hmac<Sha256> {
    static MAC: OnceLock<Hmac<Sha256>> = OnceLock::new();
    MAC.get_or_init(|| <Hmac<Sha256> as Mac>::new_from_slice(SECRET).expect("any key length"))
}

/// `data` split at its first NUL byte (the byte itself dropped), if it has one.
fn split_at_nul(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = data.splitn(2, |b| *b == 0);
    Some((parts.next()?, parts.next()?))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let [hs256, rs256, es256, checked] = configs();
    match mode % 7 {
        m @ 0..=3 => {
            let cfg = match m {
                0 => hs256,
                1 => rs256,
                2 => es256,
                _ => checked,
            };
            let _ = verify(rest, cfg, NOW);
            let _ = verify(rest, cfg, u64::MAX);
        }
        4 => {
            let (header, payload) =
                split_at_nul(rest).unwrap_or((&br#"{"alg":"HS256"}"#[..], rest));
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload)
            );
            let mut mac = signer().clone();
            mac.update(input.as_bytes());
            let token = format!(
                "{input}.{}",
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            );
            for cfg in [hs256, checked] {
                if let Ok(claims) = verify(token.as_bytes(), cfg, NOW) {
                    let _ = claims.identity();
                }
                let _ = verify(token.as_bytes(), cfg, 0);
            }
        }
        6 => {
            let (header, cookies) = split_at_nul(rest).unwrap_or((rest, &b""[..]));
            let cfg = bearer_config();
            let hasher = CookieHasher::new(b"fuzz");
            let mut cache = TokenCache::new();
            if let Some(token) = cfg.token(Some(header), Some(cookies)) {
                let first = cache.check(cfg, &hasher, token, NOW * 1000);
                let again = cache.check(cfg, &hasher, token, NOW * 1000 + 1);
                // A verdict is recalled, never changed, within its lifetime.
                assert_eq!(
                    matches!(first, headcount_core::bearer::Bearer::Refused(_)),
                    matches!(again, headcount_core::bearer::Bearer::Refused(_))
                );
            }
        }
        _ => {
            let _ = Key::from_jwks(rest);
            let _ = Key::hs256(rest);
            if let Ok(pem) = std::str::from_utf8(rest) {
                let _ = Key::public_pem(pem);
            }
        }
    }
});
