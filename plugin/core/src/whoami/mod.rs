//! `whoami`: the app vouches for a session. After a login succeeds, the host
//! asks a read-only route of the app who the session is, sending the session's
//! cookie and nothing else from the client, and reads the answer with JSON
//! pointers, as for login responses. The client's response is never held back:
//! the session starts at once (unnamed), and is named when the answer arrives,
//! or by the route's later identity sources when the answer fails.

use crate::config::{ConfigError, IdentitySource};
use crate::identity::{self, Identity};
use crate::session::{MAX_NAME, MAX_ROLE};
use serde::Deserialize;

pub mod lookups;

/// Largest whoami answer read; a larger one names nobody.
pub const MAX_ANSWER: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhoami {
    path: String,
    cluster: Option<String>,
    authority: Option<String>,
    timeout_ms: Option<u64>,
    user_id_pointer: Option<String>,
    username_pointer: Option<String>,
    role_pointer: Option<String>,
    begin_unknown: Option<bool>,
    lookups_per_second: Option<u32>,
    max_in_flight: Option<u32>,
    unknown_ttl_seconds: Option<u64>,
}

/// The validated `whoami` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whoami {
    /// The app's route, `GET` only (e.g. `/api/v1/me`, an OIDC `userinfo`).
    pub path: String,
    /// Envoy: the cluster the call goes to (the app's). The Worker calls `ORIGIN`.
    pub cluster: String,
    /// Envoy: the call's `:authority`; the login request's own when unset.
    pub authority: Option<String>,
    pub timeout_ms: u64,
    pub user_id_pointer: String,
    pub username_pointer: String,
    pub role_pointer: String,
    /// Ask about session cookies and tokens Headcount does not know (sessions
    /// that began before it saw them: installed in front of a live app, after a
    /// restart, after an idle expiry the app does not share).
    pub begin_unknown: bool,
    /// Lookups of unknown credentials the app gets per second, at most (per
    /// Envoy node; per isolate on the Worker). Login lookups are not limited.
    pub lookups_per_second: u32,
    /// Lookups of unknown credentials waiting for an answer, at most (per VM
    /// or isolate).
    pub max_in_flight: u32,
    /// How long a credential the app names nobody for is not asked about again.
    pub unknown_ttl_ms: u64,
}

pub const DEFAULT_CLUSTER: &str = "app";

impl Whoami {
    pub fn from_raw(raw: RawWhoami) -> Result<Whoami, ConfigError> {
        let path = raw.path;
        if !path.starts_with('/') || path.len() > 256 || path.contains([' ', '#']) {
            return Err(field_err(
                "whoami.path",
                "must be a path starting with '/' (a query is allowed)",
            ));
        }
        let cluster = raw.cluster.unwrap_or_else(|| DEFAULT_CLUSTER.into());
        if cluster.is_empty() || cluster.len() > 256 || cluster.chars().any(char::is_control) {
            return Err(field_err("whoami.cluster", "must be an Envoy cluster name"));
        }
        if let Some(a) = &raw.authority {
            if a.is_empty() || a.len() > 256 || !a.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(field_err("whoami.authority", "must be a host[:port]"));
            }
        }
        let timeout_ms = raw.timeout_ms.unwrap_or(2000);
        if !(50..=30_000).contains(&timeout_ms) {
            return Err(field_err(
                "whoami.timeout_ms",
                "must be between 50 and 30000",
            ));
        }
        let pointer = |field: &str, v: Option<String>, default: &str| {
            let v = v.unwrap_or_else(|| default.into());
            if (v.is_empty() || v.starts_with('/')) && v.len() <= 256 {
                Ok(v)
            } else {
                Err(field_err(
                    field,
                    "must be a JSON pointer such as \"/user/id\"",
                ))
            }
        };
        let lookups_per_second = within(
            "whoami.lookups_per_second",
            raw.lookups_per_second,
            10,
            1000,
        )?;
        let max_in_flight = within("whoami.max_in_flight", raw.max_in_flight, 8, 256)?;
        let unknown_ttl = within(
            "whoami.unknown_ttl_seconds",
            raw.unknown_ttl_seconds,
            300,
            86_400,
        )?;
        Ok(Whoami {
            begin_unknown: raw.begin_unknown.unwrap_or(true),
            lookups_per_second,
            max_in_flight,
            unknown_ttl_ms: unknown_ttl * 1000,
            path,
            cluster,
            authority: raw.authority,
            timeout_ms,
            user_id_pointer: pointer("whoami.user_id_pointer", raw.user_id_pointer, "/user/id")?,
            username_pointer: pointer(
                "whoami.username_pointer",
                raw.username_pointer,
                "/user/username",
            )?,
            role_pointer: pointer("whoami.role_pointer", raw.role_pointer, "/user/role")?,
        })
    }

    /// Who the app's answer names: a 200 with a JSON body naming someone.
    /// Anything else (an error status, a redirect to a login page, HTML, a
    /// body over `MAX_ANSWER`) names nobody, and the login falls back.
    pub fn answer(&self, status: u16, body: &[u8]) -> Option<Identity> {
        if status != 200 || body.len() > MAX_ANSWER {
            return None;
        }
        let doc = serde_json::from_slice::<serde_json::Value>(body).ok()?;
        let who = Identity {
            user_id: identity::pointer_text(&doc, &self.user_id_pointer, MAX_NAME),
            username: identity::pointer_text(&doc, &self.username_pointer, MAX_NAME),
            role: identity::pointer_text(&doc, &self.role_pointer, MAX_ROLE),
        };
        (who.user_id.is_some() || who.username.is_some()).then_some(who)
    }

    /// The call's headers besides `:authority`: `GET` of the path, the
    /// session's credential alone (`cookie: name=value`, or `authorization`
    /// with an opaque token), and a marker the app may log.
    pub fn headers<'a>(&'a self, credential: &'a Credential) -> [(&'a str, &'a [u8]); 5] {
        [
            (":method", b"GET"),
            (":path", self.path.as_bytes()),
            (":scheme", b"http"),
            (credential.header(), &credential.value),
            ("user-agent", b"headcount-whoami"),
        ]
    }
}

/// What a whoami call sends of the session: its cookie or its opaque token,
/// held only until the call is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub token: bool,
    /// `name=value` of the cookie, or `<scheme> <token>`.
    pub value: Vec<u8>,
}

impl Credential {
    pub fn cookie(name: &str, value: &[u8]) -> Credential {
        Credential {
            token: false,
            value: [name.as_bytes(), b"=", value].concat(),
        }
    }

    pub fn token(scheme: &str, token: &[u8]) -> Credential {
        Credential {
            token: true,
            value: [scheme.as_bytes(), b" ", token].concat(),
        }
    }

    pub fn header(&self) -> &'static str {
        if self.token {
            "authorization"
        } else {
            "cookie"
        }
    }
}

/// `v` (or `default`) if it is between 1 and `max`, else an error naming `field`.
fn within<T: Copy + PartialOrd + From<u8> + std::fmt::Display>(
    field: &str,
    v: Option<T>,
    default: T,
    max: T,
) -> Result<T, ConfigError> {
    let v = v.unwrap_or(default);
    if v >= T::from(1) && v <= max {
        Ok(v)
    } else {
        Err(field_err(field, &format!("must be between 1 and {max}")))
    }
}

fn field_err(field: &str, message: &str) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// Where whoami sits in a login route's identity order: whether to ask it, and
/// what names the session if its answer fails. `before` and `after` are the
/// identities of the sources before and after it, combined in order.
pub fn plan(order: &[IdentitySource]) -> Option<(&[IdentitySource], &[IdentitySource])> {
    let at = order.iter().position(|s| *s == IdentitySource::Whoami)?;
    let (before, rest) = order.split_at(at);
    Some((before, rest.get(1..).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> Whoami {
        Whoami::from_raw(RawWhoami {
            path: "/me".into(),
            cluster: None,
            authority: None,
            timeout_ms: None,
            user_id_pointer: None,
            username_pointer: None,
            role_pointer: Some("/user/groups/0".into()),
            begin_unknown: None,
            lookups_per_second: None,
            max_in_flight: None,
            unknown_ttl_seconds: None,
        })
        .unwrap()
    }

    #[test]
    fn only_a_json_200_naming_someone_names_anyone() {
        let w = w();
        let body = br#"{"user": {"id": 3, "username": "ann", "groups": ["teacher"]}}"#;
        let who = w.answer(200, body).unwrap();
        assert_eq!(
            (who.user_id, who.username, who.role),
            (Some("3".into()), Some("ann".into()), Some("teacher".into()))
        );
        assert_eq!(w.answer(401, body), None);
        assert_eq!(w.answer(302, b""), None);
        assert_eq!(w.answer(200, b"<html>login</html>"), None);
        assert_eq!(w.answer(200, br#"{"user": null}"#), None);
        assert_eq!(w.answer(200, br#"{"user": {"role": "admin"}}"#), None);
        let big = format!(
            r#"{{"user": {{"id": 1}}, "pad": "{}"}}"#,
            "x".repeat(MAX_ANSWER)
        );
        assert_eq!(w.answer(200, big.as_bytes()), None);
    }

    #[test]
    fn the_plan_splits_the_order_around_whoami() {
        use IdentitySource::*;
        let order = [Headers, Whoami, RequestBody];
        assert_eq!(plan(&order), Some((&order[..1], &order[2..])));
        assert_eq!(plan(&[RequestBody]), None);
    }

    #[test]
    fn config_errors_name_the_field() {
        use crate::config::tests::field_of;
        assert_eq!(field_of(r#"{"whoami": {"path": "me"}}"#), "whoami.path");
        assert_eq!(field_of(r#"{"whoami": {}}"#), "whoami");
        assert_eq!(
            field_of(r#"{"whoami": {"path": "/me", "timeout_ms": 5}}"#),
            "whoami.timeout_ms"
        );
        assert_eq!(
            field_of(r#"{"whoami": {"path": "/me", "role_pointer": "x"}}"#),
            "whoami.role_pointer"
        );
        assert_eq!(
            field_of(r#"{"whoami": {"path": "/me", "bogus": 1}}"#),
            "whoami.bogus"
        );
        assert_eq!(
            field_of(r#"{"login_routes": [{"path": "/l", "identity": ["whoami"]}]}"#),
            "login_routes.identity"
        );
        assert_eq!(
            field_of(r#"{"whoami": {"path": "/me?fields=role"}}"#),
            "(accepted)"
        );
    }
}
