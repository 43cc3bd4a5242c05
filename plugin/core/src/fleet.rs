//! `fleet`: one session ledger for many Envoy nodes, kept by collectors
//! (`headcount-collector`) over Redis. The same object configures the nodes
//! (which Envoy cluster reaches the collectors, how long a call may take) and
//! the collectors (the token nodes must present).

use crate::config::ConfigError;
use serde::Deserialize;
use subtle::ConstantTimeEq;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    cluster: String,
    token: String,
    timeout_ms: Option<u64>,
    shards: Option<u32>,
}

/// The validated `fleet` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// Envoy: the cluster of the collectors.
    pub cluster: String,
    /// The shared secret every request to a collector carries (`Authorization:
    /// Bearer`); a collector refuses anything else.
    pub token: String,
    /// A call to a collector taking longer than this failed (kept and sent again).
    pub timeout_ms: u64,
    /// Shards of the ledger: each a unit of atomic steps in Redis.
    pub shards: u32,
}

pub const MAX_SHARDS: u32 = 1024;

fn field_err(field: &str, message: &str) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

impl Fleet {
    pub fn from_raw(raw: RawFleet) -> Result<Fleet, ConfigError> {
        let cluster = raw.cluster;
        if cluster.is_empty() || cluster.len() > 256 || cluster.chars().any(char::is_control) {
            return Err(field_err("fleet.cluster", "must be an Envoy cluster name"));
        }
        let token = raw.token;
        if token.len() < 16 || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(field_err(
                "fleet.token",
                "must be 16 to 256 printable ASCII characters without spaces",
            ));
        }
        let timeout_ms = raw.timeout_ms.unwrap_or(1000);
        if !(50..=30_000).contains(&timeout_ms) {
            return Err(field_err(
                "fleet.timeout_ms",
                "must be between 50 and 30000",
            ));
        }
        let shards = raw.shards.unwrap_or(16);
        if !(1..=MAX_SHARDS).contains(&shards) {
            return Err(field_err("fleet.shards", "must be between 1 and 1024"));
        }
        Ok(Fleet {
            cluster,
            token,
            timeout_ms,
            shards,
        })
    }

    /// Whether an `Authorization` header value carries this fleet's token
    /// (`Bearer <token>`, compared in constant time).
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = authorization.and_then(|a| a.strip_prefix(b"Bearer ")) else {
            return false;
        };
        bool::from(token.ct_eq(self.token.as_bytes()))
    }
}

/// Read-your-writes on a fleet node for a login whose body is read
/// (`flow::login_reads_body`; the others are recorded at the headers, which
/// wait there): whether its response body, `buffered` bytes so far, waits
/// (kept by the host) instead of going on to the client, until the login is
/// recorded at the body's end and held there until its op has landed
/// (`held`: the node held responses when the headers came, its collectors
/// answering).
///
/// Holding only the last callback would hold nothing: Envoy hands an HTTP/1
/// upstream's body as its data and then an empty end of stream, and a client
/// holding the whole body (`Content-Length`) is done, whatever comes after.
/// A body past `identity::MAX_BODY` goes on (the host's buffer limit is never
/// neared; its login is recorded then, unread). The headers cannot wait: a
/// proxy-wasm host makes a paused header phase pause the whole stream, so the
/// body that names the user would never come.
pub fn login_body_waits(held: bool, buffered: usize, end_of_stream: bool) -> bool {
    held && !end_of_stream && buffered <= crate::identity::MAX_BODY
}

#[cfg(test)]
mod tests {
    use crate::config::tests::field_of;
    use crate::Config;

    #[test]
    fn fields_are_checked_and_named() {
        let ok = r#"{"fleet": {"cluster": "collectors", "token": "0123456789abcdef"},
            "cookie_hash_secret": "0123456789abcdef"}"#;
        let c = Config::from_json(ok.as_bytes()).unwrap();
        let f = c.fleet.unwrap();
        assert_eq!((f.timeout_ms, f.shards), (1000, 16));
        // A missing key is named by the message (serde's "missing field `cluster`").
        for (json, key) in [
            (r#"{"fleet": {"token": "0123456789abcdef"}}"#, "cluster"),
            (r#"{"fleet": {"cluster": "c"}}"#, "token"),
        ] {
            let e = Config::from_json(json.as_bytes()).unwrap_err();
            assert!(
                e.field.starts_with("fleet") && e.to_string().contains(key),
                "{e}"
            );
        }
        assert_eq!(
            field_of(r#"{"fleet": {"cluster": "c", "token": "short"}}"#),
            "fleet.token"
        );
        assert_eq!(
            field_of(r#"{"fleet": {"cluster": "", "token": "0123456789abcdef"}}"#),
            "fleet.cluster"
        );
        assert_eq!(
            field_of(
                r#"{"fleet": {"cluster": "c", "token": "0123456789abcdef", "timeout_ms": 1}}"#
            ),
            "fleet.timeout_ms"
        );
        assert_eq!(
            field_of(r#"{"fleet": {"cluster": "c", "token": "0123456789abcdef", "shards": 0}}"#),
            "fleet.shards"
        );
        assert_eq!(
            field_of(r#"{"fleet": {"cluster": "c", "token": "0123456789abcdef", "x": 1}}"#),
            "fleet.x"
        );
        // Every node must hash cookies with the same key.
        assert_eq!(
            field_of(r#"{"fleet": {"cluster": "c", "token": "0123456789abcdef"}}"#),
            "cookie_hash_secret"
        );
    }

    #[test]
    fn a_login_body_waits_whole_for_its_login() {
        use super::login_body_waits;
        use crate::identity::MAX_BODY;
        // Envoy's body callbacks for a login an HTTP/1 upstream answered: the
        // data, then an empty end of stream (the data kept, if it waited). The
        // data waits: the client, holding all of it, would not wait for the end.
        assert!(login_body_waits(true, 57, false));
        // The end records the login, and the node's hold takes over.
        assert!(!login_body_waits(true, 57, true));
        // Collectors that fail hold nothing: traffic never waits on them.
        assert!(!login_body_waits(false, 57, false));
        // A body too large to read goes on, never nearing the buffer limit.
        assert!(login_body_waits(true, MAX_BODY, false));
        assert!(!login_body_waits(true, MAX_BODY + 1, false));
    }

    #[test]
    fn only_the_token_is_admitted() {
        let c = Config::from_json(
            br#"{"fleet": {"cluster": "c", "token": "0123456789abcdef"}, "cookie_hash_secret": "0123456789abcdef"}"#,
        )
            .unwrap();
        let f = c.fleet.unwrap();
        assert!(f.admits(Some(b"Bearer 0123456789abcdef")));
        for bad in [
            &b"Bearer 0123456789abcdeg"[..],
            b"0123456789abcdef",
            b"Bearer ",
            b"",
        ] {
            assert!(!f.admits(Some(bad)));
        }
        assert!(!f.admits(None));
    }
}
