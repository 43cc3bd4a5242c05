//! JWT verification: verify, never trust.
//!
//! A bearer token is attacker-controlled bytes until its signature checks out
//! against a key the operator configured. Only JWS compact tokens with `HS256`,
//! `RS256` or `ES256` are accepted, each only against a key of its own type (an
//! `HS256` token is never checked against an RSA or EC key's bytes, so the
//! classic HS/RS confusion cannot happen); `alg: none` is refused outright.
//! The header is read only to pick the algorithm and key; the payload is parsed
//! only after the signature verified. Then `exp` (required), `nbf` and `iat` are
//! checked with `leeway_s`, and `iss` / `aud` when configured.
//!
//! Synchronous and host-free: time (`now_s`, Unix seconds) is an argument, keys
//! come from configuration (HS256 secret, PEM public keys, inline JWKS), and
//! nothing is fetched. Nothing here panics on any input.

use crate::identity::Identity;
use crate::session::{truncate, MAX_NAME, MAX_ROLE};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;
use std::fmt;

/// Longest token accepted, in bytes (the whole compact serialization).
pub const MAX_TOKEN: usize = 8 * 1024;
/// Most keys a configuration (or one JWKS) may hold.
pub const MAX_KEYS: usize = 32;
/// Most keys one token's signature is checked against (a token without `kid`
/// is tried against the keys of its algorithm in configuration order).
pub const MAX_TRIES: usize = 4;
/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size, 256 bits).
pub const MIN_HS256_SECRET: usize = 32;
/// Longest HS256 secret accepted.
pub const MAX_HS256_SECRET: usize = 1024;
/// Smallest RSA modulus accepted, in bits (the largest is the `rsa` crate's 4096).
pub const MIN_RSA_BITS: usize = 2048;
/// Default clock skew tolerated on `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY_S: u64 = 60;
/// Longest `sid` / `jti` kept.
const MAX_ID: usize = MAX_NAME;

/// The signature algorithms this verifier knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Rs256,
    Es256,
}

impl Alg {
    /// The JOSE name (`"HS256"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    /// Exact, case-sensitive match of a JOSE `alg` value (RFC 7515 §4.1.1).
    pub fn from_name(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone)]
enum Material {
    /// HMAC state already keyed with the secret (cloned per verification).
    Hs256(Hmac<Sha256>),
    Rs256(rsa::pkcs1v15::VerifyingKey<Sha256>),
    Es256(p256::ecdsa::VerifyingKey),
}

/// One verification key, bound to exactly one algorithm, with an optional `kid`.
#[derive(Clone)]
pub struct Key {
    kid: Option<String>,
    material: Material,
}

impl fmt::Debug for Key {
    // Never prints key material (an HS256 secret is a secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("alg", &self.alg())
            .field("kid", &self.kid)
            .finish()
    }
}

/// Why a key (secret, PEM, JWKS) was refused at configuration time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

fn key_err(message: impl Into<String>) -> KeyError {
    KeyError(message.into())
}

impl Key {
    /// An HS256 shared secret (the raw bytes, as the app signs with them).
    pub fn hs256(secret: &[u8]) -> Result<Key, KeyError> {
        if secret.len() < MIN_HS256_SECRET || secret.len() > MAX_HS256_SECRET {
            return Err(key_err(format!(
                "HS256 secret must be {MIN_HS256_SECRET} to {MAX_HS256_SECRET} bytes"
            )));
        }
        if secret.trim_ascii_start().starts_with(b"-----BEGIN") {
            // A PEM public key used as an HMAC secret is the alg-confusion setup.
            return Err(key_err(
                "HS256 secret looks like a PEM key: configure it as a public key instead",
            ));
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .map_err(|_| key_err("HS256 secret refused"))?;
        Ok(Key {
            kid: None,
            material: Material::Hs256(mac),
        })
    }

    /// An RS256 public key in PEM: SPKI (`BEGIN PUBLIC KEY`) or PKCS#1 (`BEGIN RSA PUBLIC KEY`).
    pub fn rs256_pem(pem: &str) -> Result<Key, KeyError> {
        use rsa::pkcs1::DecodeRsaPublicKey;
        use rsa::pkcs8::DecodePublicKey;
        let pem = pem.trim();
        let key = rsa::RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|_| key_err("not an RSA public key in PEM (SPKI or PKCS#1)"))?;
        Key::rsa(key)
    }

    /// An ES256 (P-256) public key in PEM (SPKI, `BEGIN PUBLIC KEY`).
    pub fn es256_pem(pem: &str) -> Result<Key, KeyError> {
        use p256::pkcs8::DecodePublicKey;
        let key = p256::ecdsa::VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|_| key_err("not a P-256 public key in PEM (SPKI)"))?;
        Ok(Key {
            kid: None,
            material: Material::Es256(key),
        })
    }

    /// A public key in PEM whose type decides the algorithm: RSA → RS256, P-256 → ES256.
    pub fn public_pem(pem: &str) -> Result<Key, KeyError> {
        Key::rs256_pem(pem)
            .or_else(|_| Key::es256_pem(pem))
            .map_err(|_| key_err("not an RSA or P-256 public key in PEM"))
    }

    /// Keys from an inline JWKS (`{"keys":[...]}`) or a single JWK object.
    ///
    /// Supported: `kty` `RSA` (RS256), `EC` with `crv` `P-256` (ES256) and `oct`
    /// (HS256). Keys meant for something else are skipped: `use` other than `sig`,
    /// an `alg` other than the key type's, another curve or key type (a JWKS often
    /// also lists encryption keys). A malformed key of a supported type is an error,
    /// and so is a JWKS with no usable key.
    pub fn from_jwks(json: &[u8]) -> Result<Vec<Key>, KeyError> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| key_err(format!("JWKS is not JSON: {e}")))?;
        let list: Vec<&Value> = match (doc.get("keys"), doc.get("kty")) {
            (Some(Value::Array(keys)), _) => keys.iter().collect(),
            (None, Some(_)) => vec![&doc],
            _ => return Err(key_err("JWKS must be {\"keys\": [...]} or one JWK object")),
        };
        if list.len() > MAX_KEYS {
            return Err(key_err(format!("JWKS has more than {MAX_KEYS} keys")));
        }
        let mut keys = Vec::new();
        for (i, jwk) in list.into_iter().enumerate() {
            let Value::Object(jwk) = jwk else {
                return Err(key_err(format!("JWKS key {i} is not an object")));
            };
            if let Some(key) = jwk_key(jwk).map_err(|e| key_err(format!("JWKS key {i}: {e}")))? {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(key_err("JWKS has no usable RS256, ES256 or HS256 key"));
        }
        Ok(keys)
    }

    /// Sets the key id a token's `kid` header selects this key by.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Key {
        self.kid = Some(kid.into());
        self
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn alg(&self) -> Alg {
        match self.material {
            Material::Hs256(_) => Alg::Hs256,
            Material::Rs256(_) => Alg::Rs256,
            Material::Es256(_) => Alg::Es256,
        }
    }

    fn rsa(key: rsa::RsaPublicKey) -> Result<Key, KeyError> {
        use rsa::traits::PublicKeyParts;
        if key.n().bits() < MIN_RSA_BITS {
            return Err(key_err(format!(
                "RSA key must be at least {MIN_RSA_BITS} bits"
            )));
        }
        Ok(Key {
            kid: None,
            material: Material::Rs256(rsa::pkcs1v15::VerifyingKey::new(key)),
        })
    }

    /// Whether `signature` is this key's signature over `input`.
    fn verifies(&self, input: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::Hs256(mac) => {
                let mut mac = mac.clone();
                mac.update(input);
                // Constant-time comparison (and a length check) inside `hmac`.
                mac.verify_slice(signature).is_ok()
            }
            Material::Rs256(key) => rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|sig| key.verify(input, &sig).is_ok()),
            // JWS ES256 signatures are the raw 64-byte R || S (RFC 7518 §3.4), not DER.
            Material::Es256(key) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(input, &sig).is_ok()),
        }
    }
}

fn jwk_str<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("`{name}` must be a string")),
    }
}

fn jwk_bytes(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk_str(jwk, name)?.ok_or_else(|| format!("`{name}` is missing"))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("`{name}` is not base64url"))
}

/// One JWK: `Ok(None)` when it is not a signature key of ours (skipped).
fn jwk_key(jwk: &Map<String, Value>) -> Result<Option<Key>, String> {
    if jwk_str(jwk, "use")?.is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let alg = jwk_str(jwk, "alg")?;
    let kty = jwk_str(jwk, "kty")?.ok_or("`kty` is missing")?;
    let key = match kty {
        "RSA" if alg.is_none_or(|a| a == "RS256") => {
            let n = rsa::BigUint::from_bytes_be(&jwk_bytes(jwk, "n")?);
            let e = rsa::BigUint::from_bytes_be(&jwk_bytes(jwk, "e")?);
            let key =
                rsa::RsaPublicKey::new(n, e).map_err(|e| format!("bad RSA public key: {e}"))?;
            Key::rsa(key).map_err(|e| e.0)?
        }
        "EC" if alg.is_none_or(|a| a == "ES256") => {
            if jwk_str(jwk, "crv")? != Some("P-256") {
                return Ok(None);
            }
            let coordinate = |name| -> Result<p256::FieldBytes, String> {
                let bytes: [u8; 32] = jwk_bytes(jwk, name)?
                    .try_into()
                    .map_err(|_| "P-256 `x` and `y` must be 32 bytes each")?;
                Ok(bytes.into())
            };
            let (x, y) = (coordinate("x")?, coordinate("y")?);
            let point = p256::EncodedPoint::from_affine_coordinates(&x, &y, false);
            let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map_err(|_| "not a point on P-256")?;
            Key {
                kid: None,
                material: Material::Es256(key),
            }
        }
        "oct" if alg.is_none_or(|a| a == "HS256") => {
            Key::hs256(&jwk_bytes(jwk, "k")?).map_err(|e| e.0)?
        }
        _ => return Ok(None),
    };
    Ok(Some(match jwk_str(jwk, "kid")? {
        Some(kid) => key.with_kid(kid),
        None => key,
    }))
}

/// What to verify and which claims name the user.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub keys: Vec<Key>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required audience, when set: `aud` equal to it or an array containing it.
    /// When unset, `aud` is not checked.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_s: u64,
    /// Claim holding the user id (string or integer). A name, or a JSON pointer
    /// into the payload when it starts with `/` (e.g. `/user/id`).
    pub user_id_claim: String,
    /// Claim holding the username; falls back to the user id when absent.
    pub username_claim: String,
    /// Claim holding the role: a string, or an array whose first string is taken
    /// (e.g. `/realm_access/roles`).
    pub role_claim: String,
}

impl JwtConfig {
    /// Defaults: no issuer or audience check, 60 s leeway, `sub`,
    /// `preferred_username`, `role`.
    pub fn new(keys: Vec<Key>) -> JwtConfig {
        JwtConfig {
            keys,
            issuer: None,
            audience: None,
            leeway_s: DEFAULT_LEEWAY_S,
            user_id_claim: "sub".into(),
            username_claim: "preferred_username".into(),
            role_claim: "role".into(),
        }
    }
}

/// What a verified token says. Strings are cleaned (control characters dropped,
/// trimmed) and bounded like every other identity source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user_id: String,
    pub username: String,
    pub role: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Session id claim (`sid`), if any.
    pub sid: Option<String>,
    /// Token id claim (`jti`), if any.
    pub jti: Option<String>,
}

impl Claims {
    /// As an identity source for a session (default role applied later).
    pub fn identity(&self) -> Identity {
        Identity {
            user_id: Some(self.user_id.clone()),
            username: Some(self.username.clone()),
            role: self.role.clone(),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Longer than [`MAX_TOKEN`].
    TooLarge,
    /// Not a JWS compact token: parts, base64url, JSON or header shape.
    Malformed(&'static str),
    /// `alg: none` (any case): unsigned tokens are never accepted.
    AlgNone,
    /// An algorithm this verifier does not implement (the name, bounded).
    UnsupportedAlg(String),
    /// A supported algorithm for which no key is configured (e.g. an HS256 token
    /// when only RSA keys are configured).
    NoKeyForAlg(Alg),
    /// The token's `kid` names no configured key of its algorithm.
    UnknownKid,
    /// No candidate key verified the signature.
    BadSignature,
    /// `exp` is past (beyond the leeway).
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// A required claim is absent (`exp`, the user id claim, or `iss`/`aud` when configured).
    MissingClaim(String),
    /// A claim has the wrong type (e.g. `exp` not a number).
    InvalidClaim(String),
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::TooLarge => write!(f, "token longer than {MAX_TOKEN} bytes"),
            JwtError::Malformed(why) => write!(f, "malformed token: {why}"),
            JwtError::AlgNone => f.write_str("unsigned token (alg none) refused"),
            JwtError::UnsupportedAlg(alg) => write!(f, "unsupported alg `{alg}`"),
            JwtError::NoKeyForAlg(alg) => write!(f, "no {alg} key configured"),
            JwtError::UnknownKid => f.write_str("kid names no configured key"),
            JwtError::BadSignature => f.write_str("signature does not verify"),
            JwtError::Expired => f.write_str("token expired"),
            JwtError::NotYetValid => f.write_str("token not yet valid (nbf/iat in the future)"),
            JwtError::WrongIssuer => f.write_str("wrong issuer"),
            JwtError::WrongAudience => f.write_str("wrong audience"),
            JwtError::MissingClaim(c) => write!(f, "missing claim `{c}`"),
            JwtError::InvalidClaim(c) => write!(f, "invalid claim `{c}`"),
        }
    }
}

impl std::error::Error for JwtError {}

/// The JOSE header fields we read. Unknown fields are ignored (never acted on:
/// `jku`, `x5u`, `jwk` are not fetched or trusted); a duplicate field is malformed.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

fn b64(part: &[u8]) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed("not base64url"))
}

/// Verifies a JWS compact token and returns its claims. `now_s` is Unix seconds.
pub fn verify(token: &[u8], cfg: &JwtConfig, now_s: u64) -> Result<Claims, JwtError> {
    if token.len() > MAX_TOKEN {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split(|b| *b == b'.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated parts"));
    };
    if header_b64.is_empty() || payload_b64.is_empty() {
        return Err(JwtError::Malformed("empty header or payload"));
    }

    // 1. The header: only to choose the algorithm and key.
    let header: Header = serde_json::from_slice(&b64(header_b64)?)
        .map_err(|_| JwtError::Malformed("header is not a JSON object with a string alg"))?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    let alg = Alg::from_name(&header.alg).ok_or_else(|| {
        // Bounded and printable: the name ends up in log lines.
        JwtError::UnsupportedAlg(
            header
                .alg
                .chars()
                .filter(|c| !c.is_control())
                .take(16)
                .collect(),
        )
    })?;
    if header.crit.is_some() {
        return Err(JwtError::Malformed(
            "crit header extensions are not supported",
        ));
    }

    // 2. The signature, over the exact bytes `header.payload`.
    let signature = b64(sig_b64)?;
    let input = token
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or(JwtError::Malformed("truncated"))?;
    let of_alg = || cfg.keys.iter().take(MAX_KEYS).filter(|k| k.alg() == alg);
    if of_alg().next().is_none() {
        return Err(JwtError::NoKeyForAlg(alg));
    }
    // A `kid` selects the keys carrying it; keys without a kid match any token.
    let named = |k: &&Key| match (&header.kid, &k.kid) {
        (Some(want), Some(have)) => want == have,
        _ => true,
    };
    if header.kid.is_some() && !of_alg().any(|k| named(&k)) {
        return Err(JwtError::UnknownKid);
    }
    let exact = |k: &&Key| header.kid.is_some() && k.kid == header.kid;
    let candidates: Vec<&Key> = if of_alg().any(|k| exact(&k)) {
        of_alg().filter(exact).collect()
    } else {
        of_alg().filter(named).collect()
    };
    // A forged token costs at most MAX_TRIES public-key operations, however many keys.
    if !candidates
        .iter()
        .take(MAX_TRIES)
        .any(|k| k.verifies(input, &signature))
    {
        return Err(JwtError::BadSignature);
    }

    // 3. Only now is the payload read.
    let payload: Value = serde_json::from_slice(&b64(payload_b64)?)
        .map_err(|_| JwtError::Malformed("payload is not JSON"))?;
    if !payload.is_object() {
        return Err(JwtError::Malformed("payload is not a JSON object"));
    }
    check_claims(&payload, cfg, now_s)
}

fn check_claims(payload: &Value, cfg: &JwtConfig, now_s: u64) -> Result<Claims, JwtError> {
    let leeway = cfg.leeway_s;
    let exp = numeric_date(payload, "exp")?.ok_or_else(|| JwtError::MissingClaim("exp".into()))?;
    if now_s >= exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    for name in ["nbf", "iat"] {
        if numeric_date(payload, name)?.is_some_and(|t| t > now_s.saturating_add(leeway)) {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(want) = &cfg.issuer {
        match payload.get("iss") {
            None => return Err(JwtError::MissingClaim("iss".into())),
            Some(Value::String(iss)) if iss == want => {}
            Some(_) => return Err(JwtError::WrongIssuer),
        }
    }
    if let Some(want) = &cfg.audience {
        let ok = match payload.get("aud") {
            None => return Err(JwtError::MissingClaim("aud".into())),
            Some(Value::String(aud)) => aud == want,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(want.as_str())),
            Some(_) => false,
        };
        if !ok {
            return Err(JwtError::WrongAudience);
        }
    }
    let user_id = claim(payload, &cfg.user_id_claim)
        .and_then(text)
        .and_then(|s| clean(s, MAX_NAME))
        .ok_or_else(|| JwtError::MissingClaim(truncate(cfg.user_id_claim.clone(), 64)))?;
    let username = claim(payload, &cfg.username_claim)
        .and_then(text)
        .and_then(|s| clean(s, MAX_NAME))
        .unwrap_or_else(|| user_id.clone());
    let role = claim(payload, &cfg.role_claim)
        .and_then(|v| match v {
            Value::Array(items) => items.iter().find_map(|i| i.as_str().map(str::to_owned)),
            other => text(other),
        })
        .and_then(|s| clean(s, MAX_ROLE));
    let string = |name| {
        payload
            .get(name)
            .and_then(Value::as_str)
            .and_then(|s| clean(s.to_owned(), MAX_ID))
    };
    Ok(Claims {
        user_id,
        username,
        role,
        exp,
        sid: string("sid"),
        jti: string("jti"),
    })
}

/// A NumericDate claim (RFC 7519 §2) as whole Unix seconds: fractions are cut,
/// negative times count as 0, huge ones saturate. `None` when absent.
fn numeric_date(payload: &Value, name: &str) -> Result<Option<u64>, JwtError> {
    match payload.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(Some(match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u,
            // `as` saturates: negative → 0, beyond u64 → u64::MAX.
            (None, Some(f)) => f as u64,
            (None, None) => 0,
        })),
        Some(_) => Err(JwtError::InvalidClaim(name.into())),
    }
}

/// A claim by name, or by JSON pointer when the name starts with `/`.
fn claim<'a>(payload: &'a Value, name: &str) -> Option<&'a Value> {
    if name.starts_with('/') {
        payload.pointer(name)
    } else {
        payload.get(name)
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

fn clean(value: String, max: usize) -> Option<String> {
    let s: String = value.chars().filter(|c| !c.is_control()).collect();
    let s = truncate(s.trim().to_string(), max);
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use serde_json::json;

    // Fixtures made once with Python `cryptography` (keys) and `joserfc` (PY_* tokens).
    const SECRET: &[u8] = b"headcount-test-secret-0123456789abcdef";
    const NOW: u64 = 1_800_000_000;
    const RSA1_PRIV: &str = r#"-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCoV8iMh4wOo64B
57CycojEvNoCYkD8FHUu/fK1V4FypL4airLL2vfkWsM+ghu6+xeDAwrAuWYhM6ZP
S7//qia2UTIFD741GLblbDZzVviEujQ2jqUzuq/X83unKLykIUnpAzKJxMPx+klw
3A7Y7zgRkqFMhJkbmPj7Ml7mUQPu3FzFNIv6o1p++FNitwD45bxrro8LsJvFXE6G
nPkvPl2EknBSJrJX7jnDSPrwl0zgCNj8EVe8LOWj0Lv8M3/0AnnmP+GlVVrIxbQB
ZH2i1HwlNEAqy/7V/2zUl0KwxHHGbDQ4b11bGnIzvSwDLRMSmjEaHWxcGxMEuzFq
ejNRyGUJAgMBAAECggEABLz8ynTNvMM/ZHMVon4uCpCQt9C1aMr4Heecr108SeJo
beWRwQJjqBAkbvPZTTbgS2oYYUKOpPhX0eNNTwhGYOsR4/nUlhjBHB3CvhYYdl7p
1Y/IB1fVt3e1VygCwEFmG8qA34cT51GOw+ATxGgeTUNR6i4Qw6m3d1WMfYHSASTz
ta+Zq9mq6o2qI3o04RVPfqND3IiunNX2HoN6072yuRRQPYeaTX6S4xcbNrzkFd4O
FrcURMVcG+3qcaB7/gPAT5kc4R7EkuwbwpbDBnSy6rLkxb17w6L59sKVGnMw3mra
/c8KMB98yI81ckgrdZlUKqTNTicQ1p7gY5UDzWzqIQKBgQDivEFwX8Y1keWJNfqz
Ff34wDhP0kt2wvsMEMwSo8PPM/heOAp3KjIQMBcpsTUpAvA8tTNBfKHSeCNbJrLc
X3YBAn479WxYFCUESaflHOxdKW6kYkHA4STUce9yPz6sMDFACRwxguPReld+XG0K
6u4d4D3izcwQLVhuoPWTs1Kf6QKBgQC+EiK2XuFo1Dhj6F9XKW6dUjlW3MCZQPXL
/wo43R0Oi5Q3AUXWPHr4Bke4Ur8G396fiQ918QtgtZr4/Bf/nCXeEKVAjWt9iRyX
0eTcfu/BHKeeTCxs0DMSaTTet1LUVa7d0XgxFA5TI4gPh0PpB9V27Vbp9p7zV2HJ
v9WDtv6IIQKBgAKi4bfmxS02Rw7zW7jdVpif04fKECqPVc/sGhNVaB9uoUKnMCf2
i6J4jKxlbRLO//AUw0XNpywFTZPvvUCms36LguA7mEjl4xBLsvINBgqHQswSgGU3
uO/naztO1PG3lbsC4BsLRI7Y9092z6XC2YXrZ4zNi8PcYxzWLkTLXviRAoGAP4F9
uaNf+w+VO8RjPpMoU0YqxFwDufDbb2pqdu9iCv8V6X7yX49bos0uX2a+TsSz9Gfu
E4ETRR/IhNJuDkiU2mqDXFskBBCwzgUiS43Z+5LgamKXIVA7EDa4pIVqFmn+gDzB
xNwnoR2pE08loJGugAry1D9Dgpi6opcG9vhIeSECgYA++lBFth1nSDg+vL0mhyne
wX9UMjGx/wd13dmZKsVgWM98LyCcodMPqK/Wm9SBcq4C9k7x5KfwXzFZdwdFt3AQ
Wndz4UzImdRG+uFZ+WFKAqdqpNQ2CP8LqyP/T3PzmxuiUW9rWKVV/IwSo34uZWJH
AS5TuaO+akeHlfZTRBtMLQ==
-----END PRIVATE KEY-----
"#;
    const RSA1_PUB: &str = include_str!("../tests/fixtures/jwt/rsa1.pub.pem");
    const RSA2_PRIV: &str = r#"-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDPrNJuSdazjous
Hz5uQoAnknSf6rlKqIhgBvzmDgkflpSOY3i/SMwowrc0ojbWbj1j4f7NlmX27vD0
DiquTdK94PpM0ST5CiH8ieCqTPnljGSFFuF7S+HyJOhZ1xI45pyJd4jIl24JPs/Y
4yXBranO3usXZjvJgJr39U8GTzxgA5dUq10/eU1qSmKWo9nEWn2QDF+9NBZBsFY0
N7rm55Zc8wIYwqLf6++/Hrku0SPFXOZptvA8Bqq/k69DLFiAly04kP4kJnJlmkaX
sBP/DldgKq08kj11oHYgNJD4LkjvMnqXJDK1LZLn0cQbrtZPJnyLHCzjCjKbM5Oo
V15iqBI7AgMBAAECggEARBvsWaJayUGfOiB3E6c4q4HDQO00vrD+JOw1xedlg5gZ
eYdTAv0Hg/i0KA1pSbMW7Cqiq98+6pjbqlb5FXhNfNuLi2TuKMTzd4Tqiz+6l1eP
Yfyqj4rH++ex0kEQZ1vui8EJuau8OUkB1qJMcDQZ5FBErsRnKENGz7qCo9GZvezn
g6c1k+e+cG1aJEUpe1toZ9vIuazOD3X8pwnYRIbnPeTfFq3d5xpAJ84cTw9q5aC4
iEqar+bqkxLANB+AGTKX5dIyia2eumoBaE82NklVzyMaIKbWckriad/K9HKFnDjF
30BGi9pjW2jJ+skWl67D7riPO0vdPR71H3idgy2haQKBgQD//TpXwhpBWVfkSyD6
STZBpvPnKvRNhDZA/1NGHCttwYa3ZE155gjCJnsm+HaYxuYxhLwptWD+UunYoLcj
flvbI58ovv3M2ZZi++oEa8kCSe+i1wwjLBpp51feVBtrkLrbgOmM9EFv2LbsRESO
fvCJNRnIXpFVgxHqXl1pGs5/eQKBgQDPrxImpDa7T3lr51DZ++uGTokk4Er4qMB9
qX20uryveRbkp4wQKSok6zGmrDNAHhvTtoJDt80Gv5rVcGg72t1vMr/vloa3r7PU
DK23IiAwJwgT+0gqoICscjJ5T/w743G+EOKsItoaEaVh4NLeZseuWBgCyvtKPjOJ
QZ5IWPUuUwKBgQDqkYsloVpXqVuteN5mGjIaZLa4jBbC9TSVyKDw7J0q/JvKbqHD
4nMCHSraIfDiu9dxZrTY7zhKs4VOmK5YWtAm9PRB7Qk57eQtHbNpi67sZv2sVKvt
ittFUdSliKJ7pWpj+zOHksZni8jKpR/BBza4M61Fespn9iuze/bSedrg2QKBgHU0
LsEh4UVZ94MemrE6C1PTVHA8J/MmgOMp2Kg6zisU4geOSmwAXylQlcei3JVtqHSV
RfRjcNBDJ2UWt6w3usl7UXgrccGN5aVgtlRobNPf4x4rrDFqPNOU6skti4JcvB7w
NovAa2dU2AlhsH8Ub9IDIyHIXYIrkjf+kQ3xLgTDAoGBAI/O/TKAA82hmGv9qfr+
xPQiTiXLcWT3VLL014tr8QktRJwRn/nX4seH8XvHPIkPAmDbY3DGCoUMZh/O1M2z
+ScHNDIID+n39fDXCWU9Y9Kg35DzdDPl6/p0GiDqHsjjkQ4baQxfnX9zrx2MyiW9
jMGLyxiKj7ckYk/AG3YmqvtG
-----END PRIVATE KEY-----
"#;
    const RSA1_PKCS1_PUB: &str = r#"-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAqFfIjIeMDqOuAeewsnKIxLzaAmJA/BR1Lv3ytVeBcqS+Goqyy9r3
5FrDPoIbuvsXgwMKwLlmITOmT0u//6omtlEyBQ++NRi25Ww2c1b4hLo0No6lM7qv
1/N7pyi8pCFJ6QMyicTD8fpJcNwO2O84EZKhTISZG5j4+zJe5lED7txcxTSL+qNa
fvhTYrcA+OW8a66PC7CbxVxOhpz5Lz5dhJJwUiayV+45w0j68JdM4AjY/BFXvCzl
o9C7/DN/9AJ55j/hpVVayMW0AWR9otR8JTRAKsv+1f9s1JdCsMRxxmw0OG9dWxpy
M70sAy0TEpoxGh1sXBsTBLsxanozUchlCQIDAQAB
-----END RSA PUBLIC KEY-----
"#;
    const EC1_PRIV: &str = r#"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgHy49TFtqeYgfLj1M
W2p5iB8uPUxbanmIHy49TFtqeYihRANCAAS9fHO4iy6bTO2mICKy2ovhMZOltW7c
JuffeELiTNC16wYFrae9qDrGorgNfjFAQPpH/xa4O6yFztsBRFG7fOca
-----END PRIVATE KEY-----
"#;
    const EC1_PUB: &str = include_str!("../tests/fixtures/jwt/ec1.pub.pem");
    const EC2_PRIV: &str = r#"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKioqKioqKioqKioq
KioqKioqKioqKioqKioqKioqKiqhRANCAAQMkB1CPIMcqF4nxzwmO6Eychu516hM
TwOAsqZ1b9YBMxyIcCNN7IeFBMF0FE+ksUtmplFpFgbYFz5VvTfjgVae
-----END PRIVATE KEY-----
"#;
    const JWKS: &str = include_str!("../tests/fixtures/jwt/jwks.json");
    const PY_HS256: &str = include_str!("../tests/fixtures/jwt/hs256.jwt");
    const PY_RS256: &str = include_str!("../tests/fixtures/jwt/rs256.jwt");
    const PY_ES256: &str = include_str!("../tests/fixtures/jwt/es256.jwt");

    fn enc(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with `header` and `claims`, signed by `sign` over `h.p`.
    fn token(header: Value, claims: Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let input = format!(
            "{}.{}",
            enc(header.to_string().as_bytes()),
            enc(claims.to_string().as_bytes())
        );
        let sig = sign(input.as_bytes());
        format!("{input}.{}", enc(&sig))
    }

    fn hs(secret: &[u8]) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
        move |input| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
    }

    fn rs(private_pem: &str) -> impl Fn(&[u8]) -> Vec<u8> {
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::signature::SignatureEncoding;
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(private_pem).unwrap();
        let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key);
        move |input| signer.sign(input).to_vec()
    }

    fn es(private_pem: &str) -> impl Fn(&[u8]) -> Vec<u8> {
        use p256::pkcs8::DecodePrivateKey;
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(private_pem).unwrap();
        move |input| {
            let sig: p256::ecdsa::Signature = key.sign(input);
            sig.to_bytes().to_vec()
        }
    }

    fn claims() -> Value {
        json!({"sub": "42", "preferred_username": "ann", "role": "teacher",
               "exp": NOW + 600, "iat": NOW - 10, "sid": "s-1", "jti": "j-1"})
    }

    fn with(mut v: Value, key: &str, value: Value) -> Value {
        v[key] = value;
        v
    }

    fn without(mut v: Value, key: &str) -> Value {
        v.as_object_mut().unwrap().remove(key);
        v
    }

    fn hs_cfg() -> JwtConfig {
        JwtConfig::new(vec![Key::hs256(SECRET).unwrap()])
    }

    fn rs_cfg() -> JwtConfig {
        JwtConfig::new(vec![Key::rs256_pem(RSA1_PUB).unwrap()])
    }

    fn es_cfg() -> JwtConfig {
        JwtConfig::new(vec![Key::es256_pem(EC1_PUB).unwrap()])
    }

    fn expected() -> Claims {
        Claims {
            user_id: "42".into(),
            username: "ann".into(),
            role: Some("teacher".into()),
            exp: NOW + 600,
            sid: Some("s-1".into()),
            jti: Some("j-1".into()),
        }
    }

    #[test]
    fn valid_token_of_each_alg() {
        let t = token(json!({"alg": "HS256", "typ": "JWT"}), claims(), hs(SECRET));
        assert_eq!(verify(t.as_bytes(), &hs_cfg(), NOW), Ok(expected()));
        // (RSA signing is slow in debug builds: one RS256 token, checked with both PEM forms.)
        let t = token(json!({"alg": "RS256"}), claims(), rs(RSA1_PRIV));
        assert_eq!(verify(t.as_bytes(), &rs_cfg(), NOW), Ok(expected()));
        let pkcs1 = JwtConfig::new(vec![Key::rs256_pem(RSA1_PKCS1_PUB).unwrap()]);
        assert_eq!(verify(t.as_bytes(), &pkcs1, NOW), Ok(expected()));
        let t = token(json!({"alg": "ES256"}), claims(), es(EC1_PRIV));
        assert_eq!(verify(t.as_bytes(), &es_cfg(), NOW), Ok(expected()));
    }

    #[test]
    fn tokens_signed_by_another_implementation() {
        // PY_* were signed by joserfc; exp 2100-01-01, iss/aud set, aud an array.
        let mut keys = Key::from_jwks(JWKS.as_bytes()).unwrap();
        keys.push(Key::hs256(SECRET).unwrap());
        let mut cfg = JwtConfig::new(keys);
        cfg.issuer = Some("https://idp.example".into());
        cfg.audience = Some("headcount".into());
        for t in [PY_HS256, PY_RS256, PY_ES256] {
            let c = verify(t.as_bytes(), &cfg, NOW).unwrap();
            assert_eq!((c.user_id.as_str(), c.username.as_str()), ("42", "ann"));
            assert_eq!(c.exp, 4_102_444_800);
        }
    }

    #[test]
    fn forged_or_foreign_signatures_fail() {
        let t = token(json!({"alg": "HS256"}), claims(), hs(SECRET));
        // Same signature, payload swapped for another user.
        let (head, rest) = t.split_once('.').unwrap();
        let sig = rest.rsplit_once('.').unwrap().1;
        let evil = with(claims(), "sub", json!("1"));
        let forged = format!("{head}.{}.{sig}", enc(evil.to_string().as_bytes()));
        assert_eq!(
            verify(forged.as_bytes(), &hs_cfg(), NOW),
            Err(JwtError::BadSignature)
        );
        // A flipped signature bit.
        let mut bad = t.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(verify(&bad, &hs_cfg(), NOW), Err(JwtError::BadSignature));
        // Signed with other keys.
        let other = token(
            json!({"alg": "HS256"}),
            claims(),
            hs(b"another-secret-another-secret-another"),
        );
        assert_eq!(
            verify(other.as_bytes(), &hs_cfg(), NOW),
            Err(JwtError::BadSignature)
        );
        let other = token(json!({"alg": "RS256"}), claims(), rs(RSA2_PRIV));
        assert_eq!(
            verify(other.as_bytes(), &rs_cfg(), NOW),
            Err(JwtError::BadSignature)
        );
        let other = token(json!({"alg": "ES256"}), claims(), es(EC2_PRIV));
        assert_eq!(
            verify(other.as_bytes(), &es_cfg(), NOW),
            Err(JwtError::BadSignature)
        );
        // No signature at all.
        let unsigned = format!("{}.", t.rsplit_once('.').unwrap().0);
        assert_eq!(
            verify(unsigned.as_bytes(), &hs_cfg(), NOW),
            Err(JwtError::BadSignature)
        );
        // A DER-encoded ECDSA signature is not JWS ES256.
        let der = token(json!({"alg": "ES256"}), claims(), |input| {
            let key = {
                use p256::pkcs8::DecodePrivateKey;
                p256::ecdsa::SigningKey::from_pkcs8_pem(EC1_PRIV).unwrap()
            };
            let sig: p256::ecdsa::Signature = key.sign(input);
            sig.to_der().as_bytes().to_vec()
        });
        assert_eq!(
            verify(der.as_bytes(), &es_cfg(), NOW),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        for alg in ["none", "None", "NONE"] {
            let t = token(json!({"alg": alg}), claims(), |_| Vec::new());
            assert_eq!(verify(t.as_bytes(), &hs_cfg(), NOW), Err(JwtError::AlgNone));
        }
        let t = token(json!({"alg": "none"}), claims(), hs(SECRET));
        assert_eq!(verify(t.as_bytes(), &hs_cfg(), NOW), Err(JwtError::AlgNone));
        let t = token(json!({"alg": "HS512"}), claims(), hs(SECRET));
        assert_eq!(
            verify(t.as_bytes(), &hs_cfg(), NOW),
            Err(JwtError::UnsupportedAlg("HS512".into()))
        );
        let t = token(json!({"alg": "hs256"}), claims(), hs(SECRET));
        assert!(matches!(
            verify(t.as_bytes(), &hs_cfg(), NOW),
            Err(JwtError::UnsupportedAlg(_))
        ));
    }

    #[test]
    fn alg_confusion_fails() {
        // HS256 "signed" with the RSA public key's PEM (and DER) as the HMAC secret.
        use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
        let der = rsa::RsaPublicKey::from_public_key_pem(RSA1_PUB)
            .unwrap()
            .to_public_key_der()
            .unwrap();
        let mut all = Key::from_jwks(JWKS.as_bytes()).unwrap();
        all.push(Key::rs256_pem(RSA1_PUB).unwrap());
        for cfg in [rs_cfg(), es_cfg(), JwtConfig::new(all)] {
            for secret in [RSA1_PUB.as_bytes(), der.as_bytes(), EC1_PUB.as_bytes()] {
                for kid in [json!(null), json!("rsa-1")] {
                    let t = token(json!({"alg": "HS256", "kid": kid}), claims(), hs(secret));
                    assert_eq!(
                        verify(t.as_bytes(), &cfg, NOW),
                        Err(JwtError::NoKeyForAlg(Alg::Hs256))
                    );
                }
            }
        }
        // An RS256 token against an HS or EC key, an ES256 token against an RSA key.
        let t = token(json!({"alg": "RS256"}), claims(), rs(RSA1_PRIV));
        assert_eq!(
            verify(t.as_bytes(), &hs_cfg(), NOW),
            Err(JwtError::NoKeyForAlg(Alg::Rs256))
        );
        let t = token(json!({"alg": "ES256"}), claims(), es(EC1_PRIV));
        assert_eq!(
            verify(t.as_bytes(), &rs_cfg(), NOW),
            Err(JwtError::NoKeyForAlg(Alg::Es256))
        );
        // A PEM key can not be configured as an HS256 secret in the first place.
        assert!(Key::hs256(RSA1_PUB.as_bytes()).is_err());
        // A key the token names by kid but of another alg is not used either.
        let rs_kid = JwtConfig::new(vec![
            Key::rs256_pem(RSA1_PUB).unwrap().with_kid("k"),
            Key::hs256(SECRET).unwrap().with_kid("h"),
        ]);
        let t = token(
            json!({"alg": "HS256", "kid": "k"}),
            claims(),
            hs(RSA1_PUB.as_bytes()),
        );
        assert_eq!(
            verify(t.as_bytes(), &rs_kid, NOW),
            Err(JwtError::UnknownKid)
        );
    }

    #[test]
    fn time_claims() {
        let cfg = hs_cfg(); // leeway 60 s
        let at = |c: Value, now| {
            verify(
                token(json!({"alg": "HS256"}), c, hs(SECRET)).as_bytes(),
                &cfg,
                now,
            )
        };
        assert_eq!(
            at(with(claims(), "exp", json!(NOW - 61)), NOW),
            Err(JwtError::Expired)
        );
        assert_eq!(
            at(with(claims(), "exp", json!(NOW - 60)), NOW),
            Err(JwtError::Expired)
        );
        assert!(at(with(claims(), "exp", json!(NOW - 59)), NOW).is_ok());
        assert_eq!(
            at(with(claims(), "exp", json!(0)), NOW),
            Err(JwtError::Expired)
        );
        assert_eq!(
            at(with(claims(), "exp", json!(-5)), NOW),
            Err(JwtError::Expired)
        );
        assert_eq!(
            at(with(claims(), "exp", json!(-1e300)), NOW),
            Err(JwtError::Expired)
        );
        assert!(at(with(claims(), "exp", json!(1e300)), NOW).is_ok());
        assert!(at(with(claims(), "exp", json!(u64::MAX)), u64::MAX - 1).is_ok());
        assert_eq!(
            at(with(claims(), "exp", json!((NOW + 600) as f64 + 0.5)), NOW).map(|c| c.exp),
            Ok(NOW + 600)
        );
        assert_eq!(
            at(without(claims(), "exp"), NOW),
            Err(JwtError::MissingClaim("exp".into()))
        );
        assert_eq!(
            at(with(claims(), "exp", json!("tomorrow")), NOW),
            Err(JwtError::InvalidClaim("exp".into()))
        );
        assert_eq!(
            at(with(claims(), "exp", json!(null)), NOW),
            Err(JwtError::InvalidClaim("exp".into()))
        );
        assert_eq!(
            at(with(claims(), "nbf", json!(NOW + 61)), NOW),
            Err(JwtError::NotYetValid)
        );
        assert!(at(with(claims(), "nbf", json!(NOW + 60)), NOW).is_ok());
        assert_eq!(
            at(with(claims(), "iat", json!(NOW + 3600)), NOW),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            at(with(claims(), "nbf", json!("soon")), NOW),
            Err(JwtError::InvalidClaim("nbf".into()))
        );
        let strict = JwtConfig {
            leeway_s: 0,
            ..hs_cfg()
        };
        let t = token(
            json!({"alg": "HS256"}),
            with(claims(), "exp", json!(NOW)),
            hs(SECRET),
        );
        assert_eq!(verify(t.as_bytes(), &strict, NOW), Err(JwtError::Expired));
        assert!(verify(t.as_bytes(), &strict, NOW - 1).is_ok());
    }

    #[test]
    fn issuer_and_audience() {
        let cfg = JwtConfig {
            issuer: Some("https://idp.example".into()),
            audience: Some("headcount".into()),
            ..hs_cfg()
        };
        let good = with(
            with(claims(), "iss", json!("https://idp.example")),
            "aud",
            json!("headcount"),
        );
        let at = |c: Value| {
            verify(
                token(json!({"alg": "HS256"}), c, hs(SECRET)).as_bytes(),
                &cfg,
                NOW,
            )
        };
        assert!(at(good.clone()).is_ok());
        assert!(at(with(good.clone(), "aud", json!(["x", "headcount"]))).is_ok());
        assert_eq!(
            at(with(good.clone(), "aud", json!(["x", "y"]))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            at(with(good.clone(), "aud", json!("headcount2"))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            at(with(good.clone(), "aud", json!([]))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            at(with(good.clone(), "aud", json!(7))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            at(without(good.clone(), "aud")),
            Err(JwtError::MissingClaim("aud".into()))
        );
        assert_eq!(
            at(with(good.clone(), "iss", json!("https://evil.example"))),
            Err(JwtError::WrongIssuer)
        );
        assert_eq!(
            at(with(good.clone(), "iss", json!(["https://idp.example"]))),
            Err(JwtError::WrongIssuer)
        );
        assert_eq!(
            at(without(good, "iss")),
            Err(JwtError::MissingClaim("iss".into()))
        );
        // Without configured iss/aud, neither is checked.
        let t = token(
            json!({"alg": "HS256"}),
            with(claims(), "aud", json!("x")),
            hs(SECRET),
        );
        assert!(verify(t.as_bytes(), &hs_cfg(), NOW).is_ok());
    }

    #[test]
    fn identity_claims() {
        let at = |cfg: &JwtConfig, c: Value| {
            verify(
                token(json!({"alg": "HS256"}), c, hs(SECRET)).as_bytes(),
                cfg,
                NOW,
            )
        };
        let cfg = hs_cfg();
        let c = at(
            &cfg,
            without(without(claims(), "preferred_username"), "role"),
        )
        .unwrap();
        assert_eq!((c.username.as_str(), c.role), ("42", None));
        assert_eq!(
            at(&cfg, without(claims(), "sub")),
            Err(JwtError::MissingClaim("sub".into()))
        );
        assert_eq!(
            at(&cfg, with(claims(), "sub", json!("  \u{7}  "))),
            Err(JwtError::MissingClaim("sub".into()))
        );
        assert_eq!(
            at(&cfg, with(claims(), "sub", json!(7))).unwrap().user_id,
            "7"
        );
        assert!(at(&cfg, with(claims(), "sub", json!({"id": 1}))).is_err());
        let long = "é".repeat(500);
        let c = at(&cfg, with(claims(), "preferred_username", json!(long))).unwrap();
        assert!(c.username.len() <= MAX_NAME && c.username.starts_with('é'));
        // JSON pointers and role arrays (Keycloak style).
        let cfg = JwtConfig {
            user_id_claim: "/user/id".into(),
            role_claim: "/realm_access/roles".into(),
            ..hs_cfg()
        };
        let c = at(
            &cfg,
            json!({"exp": NOW + 5, "user": {"id": 9}, "realm_access": {"roles": [1, "admin", "x"]}}),
        )
        .unwrap();
        assert_eq!(
            (c.user_id.as_str(), c.role.as_deref()),
            ("9", Some("admin"))
        );
        assert_eq!((c.sid, c.jti), (None, None));
        let id = expected().identity();
        assert_eq!(id.username.as_deref(), Some("ann"));
    }

    #[test]
    fn kid_selects_the_key() {
        let cfg = JwtConfig::new(Key::from_jwks(JWKS.as_bytes()).unwrap());
        let by = |kid: &str, signer: &dyn Fn(&[u8]) -> Vec<u8>, alg: &str| {
            let t = token(json!({"alg": alg, "kid": kid}), claims(), signer);
            verify(t.as_bytes(), &cfg, NOW)
        };
        let r2 = rs(RSA2_PRIV);
        assert!(by("rsa-2", &r2, "RS256").is_ok());
        // Signed by rsa-2 but naming rsa-1: only rsa-1 is tried.
        assert_eq!(by("rsa-1", &r2, "RS256"), Err(JwtError::BadSignature));
        // Refused before any signature check, so a dummy signature does.
        let dummy = |_: &[u8]| vec![1; 256];
        assert_eq!(by("rsa-9", &dummy, "RS256"), Err(JwtError::UnknownKid));
        // An EC kid on an RS256 token names no RS256 key.
        assert_eq!(by("ec-2", &dummy, "RS256"), Err(JwtError::UnknownKid));
        let e2 = es(EC2_PRIV);
        assert!(by("ec-2", &e2, "ES256").is_ok());
        assert_eq!(by("ec-1", &e2, "ES256"), Err(JwtError::BadSignature));
        // Without a kid, every key of the alg is tried.
        let t = token(json!({"alg": "ES256"}), claims(), e2);
        assert!(verify(t.as_bytes(), &cfg, NOW).is_ok());
        // Without a kid, at most MAX_TRIES keys are tried (forgeries stay cheap).
        let secrets: Vec<Vec<u8>> = (0..=MAX_TRIES)
            .map(|i| [&[b'0' + i as u8][..], SECRET].concat())
            .collect();
        let many = JwtConfig::new(secrets.iter().map(|s| Key::hs256(s).unwrap()).collect());
        let t = token(
            json!({"alg": "HS256"}),
            claims(),
            hs(&secrets[MAX_TRIES - 1]),
        );
        assert!(verify(t.as_bytes(), &many, NOW).is_ok());
        let t = token(json!({"alg": "HS256"}), claims(), hs(&secrets[MAX_TRIES]));
        assert_eq!(
            verify(t.as_bytes(), &many, NOW),
            Err(JwtError::BadSignature)
        );
        // Keys without a kid accept tokens with any kid.
        let t = token(
            json!({"alg": "HS256", "kid": "whatever"}),
            claims(),
            hs(SECRET),
        );
        assert!(verify(t.as_bytes(), &hs_cfg(), NOW).is_ok());
    }

    #[test]
    fn key_configuration() {
        assert!(Key::hs256(b"short").is_err());
        assert!(Key::hs256(&[b'x'; 2000]).is_err());
        assert!(Key::rs256_pem(EC1_PUB).is_err());
        assert!(Key::es256_pem(RSA1_PUB).is_err());
        assert!(
            Key::rs256_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err()
        );
        assert_eq!(Key::public_pem(RSA1_PUB).unwrap().alg(), Alg::Rs256);
        assert_eq!(Key::public_pem(EC1_PUB).unwrap().alg(), Alg::Es256);
        assert!(Key::public_pem("hello").is_err());
        let keys = Key::from_jwks(JWKS.as_bytes()).unwrap();
        let desc: Vec<_> = keys
            .iter()
            .map(|k| (k.alg(), k.kid().unwrap_or("")))
            .collect();
        assert_eq!(
            desc,
            [
                (Alg::Rs256, "rsa-1"),
                (Alg::Rs256, "rsa-2"),
                (Alg::Es256, "ec-1"),
                (Alg::Es256, "ec-2")
            ]
        );
        // Debug never shows secrets.
        let dbg = format!("{:?}", Key::hs256(SECRET).unwrap());
        assert!(!dbg.contains("headcount-test-secret"), "{dbg}");
        // Skipped: encryption keys, other algs/curves/types. Refused: broken keys, nothing usable.
        let k = enc(SECRET);
        let jwks = json!({"keys": [
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "alg": "PS256", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "OKP", "crv": "Ed25519", "x": "AA"},
            {"kty": "oct", "k": k, "kid": "h"},
        ]});
        let keys = Key::from_jwks(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(
            (keys.len(), keys[0].alg(), keys[0].kid()),
            (1, Alg::Hs256, Some("h"))
        );
        for bad in [
            json!({"keys": []}),
            json!({"keys": [{"kty": "OKP"}]}),
            json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}),
            json!({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}),
            json!({"keys": [{"kty": "EC", "crv": "P-256", "x": enc(&[1; 32]), "y": enc(&[2; 32])}]}),
            json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}),
            json!({"keys": [{"kty": 5}]}),
            json!({"keys": [7]}),
            json!({"keys": "x"}),
            json!([1]),
        ] {
            assert!(Key::from_jwks(bad.to_string().as_bytes()).is_err(), "{bad}");
        }
        assert!(Key::from_jwks(b"\xff{").is_err());
        let one = json!({"kty": "oct", "k": k});
        assert_eq!(Key::from_jwks(one.to_string().as_bytes()).unwrap().len(), 1);
    }

    #[test]
    fn garbage_never_panics() {
        let cfg = {
            let mut keys = Key::from_jwks(JWKS.as_bytes()).unwrap();
            keys.push(Key::hs256(SECRET).unwrap());
            JwtConfig::new(keys)
        };
        let good = token(json!({"alg": "HS256"}), claims(), hs(SECRET));
        let deep = format!("{}{}", "[".repeat(2_000), "]".repeat(2_000));
        let nested_header = token(
            json!({"alg": "HS256", "x": serde_json::from_str::<Value>(&"[".repeat(100).chars().chain("]".repeat(100).chars()).collect::<String>()).unwrap()}),
            claims(),
            hs(SECRET),
        );
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b".".to_vec(),
            b"..".to_vec(),
            b"...".to_vec(),
            b"a.b.c".to_vec(),
            b"\xff\xfe.\x00.\x80".to_vec(),
            b"eyJhbGciOiJIUzI1NiJ9..".to_vec(),
            format!("{}.{}.x", enc(b"null"), enc(b"{}")).into_bytes(),
            format!("{}.{}.x", enc(b"{\"alg\":5}"), enc(b"{}")).into_bytes(),
            format!(
                "{}.{}.x",
                enc(b"{\"alg\":\"HS256\",\"alg\":\"none\"}"),
                enc(b"{}")
            )
            .into_bytes(),
            format!("{}.{}.", enc(deep.as_bytes()), enc(b"{}")).into_bytes(),
            format!("{good}.extra").into_bytes(),
            format!("{good}=").into_bytes(),
            format!(" {good}").into_bytes(),
            good.replace('.', "").into_bytes(),
            vec![b'a'; MAX_TOKEN + 1],
        ];
        for c in &cases {
            let r = verify(c, &cfg, NOW);
            assert!(r.is_err(), "{:.80} -> {r:?}", String::from_utf8_lossy(c));
        }
        // Unknown header fields are ignored, however nested (within serde_json's depth limit).
        assert!(verify(nested_header.as_bytes(), &cfg, NOW).is_ok());
        assert_eq!(
            verify(&vec![b'a'; MAX_TOKEN + 1], &cfg, NOW),
            Err(JwtError::TooLarge)
        );
        // Signed garbage payloads: only the claim checks stand between them and a session.
        for payload in [
            &b"[]"[..],
            b"null",
            b"1e999",
            b"{\"exp\":1e999}",
            b"\xff",
            deep.as_bytes(),
        ] {
            let input = format!("{}.{}", enc(br#"{"alg":"HS256"}"#), enc(payload));
            let t = format!("{input}.{}", enc(&hs(SECRET)(input.as_bytes())));
            assert!(
                matches!(verify(t.as_bytes(), &cfg, NOW), Err(JwtError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(payload)
                    .chars()
                    .take(40)
                    .collect::<String>()
            );
        }
        // `crit` extensions are refused, even signed.
        let t = token(
            json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
            claims(),
            hs(SECRET),
        );
        assert!(matches!(
            verify(t.as_bytes(), &cfg, NOW),
            Err(JwtError::Malformed(_))
        ));
        // A bigger-than-modulus RSA signature and all-zero ECDSA signatures fail cleanly.
        for (alg, sig) in [
            ("RS256", vec![0xff; 300]),
            ("RS256", vec![0; 256]),
            ("ES256", vec![0; 64]),
            ("ES256", vec![0xff; 64]),
        ] {
            let t = token(json!({"alg": alg}), claims(), |_| sig.clone());
            assert_eq!(verify(t.as_bytes(), &cfg, NOW), Err(JwtError::BadSignature));
        }
    }
}
