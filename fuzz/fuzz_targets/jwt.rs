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

const SECRET: &[u8] = b"headcount-test-secret-0123456789abcdef";
const NOW: u64 = 1_800_000_000;
const RSA1_PUB: &str = r#"-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAqFfIjIeMDqOuAeewsnKI
xLzaAmJA/BR1Lv3ytVeBcqS+Goqyy9r35FrDPoIbuvsXgwMKwLlmITOmT0u//6om
tlEyBQ++NRi25Ww2c1b4hLo0No6lM7qv1/N7pyi8pCFJ6QMyicTD8fpJcNwO2O84
EZKhTISZG5j4+zJe5lED7txcxTSL+qNafvhTYrcA+OW8a66PC7CbxVxOhpz5Lz5d
hJJwUiayV+45w0j68JdM4AjY/BFXvCzlo9C7/DN/9AJ55j/hpVVayMW0AWR9otR8
JTRAKsv+1f9s1JdCsMRxxmw0OG9dWxpyM70sAy0TEpoxGh1sXBsTBLsxanozUchl
CQIDAQAB
-----END PUBLIC KEY-----
"#;
const EC1_PUB: &str = r#"-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEvXxzuIsum0ztpiAistqL4TGTpbVu
3Cbn33hC4kzQtesGBa2nvag6xqK4DX4xQED6R/8WuDushc7bAURRu3znGg==
-----END PUBLIC KEY-----
"#;
const JWKS: &str = r#"{"keys": [{"n": "qFfIjIeMDqOuAeewsnKIxLzaAmJA_BR1Lv3ytVeBcqS-Goqyy9r35FrDPoIbuvsXgwMKwLlmITOmT0u__6omtlEyBQ--NRi25Ww2c1b4hLo0No6lM7qv1_N7pyi8pCFJ6QMyicTD8fpJcNwO2O84EZKhTISZG5j4-zJe5lED7txcxTSL-qNafvhTYrcA-OW8a66PC7CbxVxOhpz5Lz5dhJJwUiayV-45w0j68JdM4AjY_BFXvCzlo9C7_DN_9AJ55j_hpVVayMW0AWR9otR8JTRAKsv-1f9s1JdCsMRxxmw0OG9dWxpyM70sAy0TEpoxGh1sXBsTBLsxanozUchlCQ", "e": "AQAB", "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig"}, {"n": "z6zSbknWs46LrB8-bkKAJ5J0n-q5SqiIYAb85g4JH5aUjmN4v0jMKMK3NKI21m49Y-H-zZZl9u7w9A4qrk3SveD6TNEk-Qoh_Ingqkz55YxkhRbhe0vh8iToWdcSOOaciXeIyJduCT7P2OMlwa2pzt7rF2Y7yYCa9_VPBk88YAOXVKtdP3lNakpilqPZxFp9kAxfvTQWQbBWNDe65ueWXPMCGMKi3-vvvx65LtEjxVzmabbwPAaqv5OvQyxYgJctOJD-JCZyZZpGl7AT_w5XYCqtPJI9daB2IDSQ-C5I7zJ6lyQytS2S59HEG67WTyZ8ixws4woymzOTqFdeYqgSOw", "e": "AQAB", "kty": "RSA", "kid": "rsa-2", "alg": "RS256", "use": "sig"}, {"crv": "P-256", "x": "vXxzuIsum0ztpiAistqL4TGTpbVu3Cbn33hC4kzQtes", "y": "BgWtp72oOsaiuA1-MUBA-kf_Frg7rIXO2wFEUbt85xo", "kty": "EC", "kid": "ec-1", "use": "sig"}, {"crv": "P-256", "x": "DJAdQjyDHKheJ8c8JjuhMnIbudeoTE8DgLKmdW_WATM", "y": "HIhwI03sh4UEwXQUT6SxS2amUWkWBtgXPlW9N-OBVp4", "kty": "EC", "kid": "ec-2", "use": "sig"}]}"#;

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

fn bearer_config() -> &'static BearerConfig {
    static CFG: OnceLock<BearerConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        let json = format!(
            r#"{{"jwt": {{"hs256_secret": "{}", "cookie": "access_token"}}}}"#,
            std::str::from_utf8(SECRET).expect("ascii")
        );
        Config::from_json(json.as_bytes())
            .expect("fixture config")
            .jwt
            .expect("jwt section")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let configs = configs();
    match mode % 7 {
        m @ 0..=3 => {
            let cfg = &configs[m as usize];
            let _ = verify(rest, cfg, NOW);
            let _ = verify(rest, cfg, u64::MAX);
        }
        4 => {
            let (header, payload) = match rest.iter().position(|b| *b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (&br#"{"alg":"HS256"}"#[..], rest),
            };
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload)
            );
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET).expect("any key length");
            mac.update(input.as_bytes());
            let token = format!(
                "{input}.{}",
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            );
            for cfg in [&configs[0], &configs[3]] {
                if let Ok(claims) = verify(token.as_bytes(), cfg, NOW) {
                    let _ = claims.identity();
                }
                let _ = verify(token.as_bytes(), cfg, 0);
            }
        }
        6 => {
            let (header, cookies) = match rest.iter().position(|b| *b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b""[..]),
            };
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
