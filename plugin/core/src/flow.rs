//! One request's life, the same on every host: whose credentials it carries,
//! what the upstream's answer does to its session, and who an accepted login
//! names. Hosts read headers and bodies, call these, and apply the results to
//! their store.

use crate::bearer::Bearer;
use crate::config::Config;
use crate::config::IdentitySource;
use crate::gateway::{self, LoginFacts, Route};
use crate::identity::{self, CookieChange, Identity};
use crate::jwt::JwtError;
use crate::session::{CookieHash, Session};
use crate::typed::{Typed, Unnamed};
use crate::whoami;

/// The key a request's activity goes under: a verified token's session key,
/// then an opaque token's hash (`Authorization: <token_scheme> <token>`), then
/// the session cookie's hash. A refused JWT leaves the others.
pub fn request_key(
    verdict: Option<&Bearer>,
    opaque: Option<CookieHash>,
    cookie: Option<CookieHash>,
) -> Option<CookieHash> {
    match verdict {
        Some(Bearer::Known(key) | Bearer::Unconfirmed { key, .. }) => Some(*key),
        _ => opaque.or(cookie),
    }
}

/// The opaque token of an `Authorization` header, when some login route hands
/// tokens out (`token_pointer`) and the header uses `token_scheme`.
pub fn opaque_token<'a>(cfg: &Config, authorization: Option<&'a [u8]>) -> Option<&'a [u8]> {
    let a = authorization.filter(|_| cfg.opaque_tokens())?;
    gateway::credentials(a, &cfg.token_scheme)
}

/// The opaque token an accepted login's response body carries at its route's
/// `token_pointer`: a string of printable ASCII, at most 4 KiB.
pub fn token_in(cfg: &Config, route: Route, body: Option<&[u8]>) -> Option<Vec<u8>> {
    let Route::Login(i) = route else { return None };
    let pointer = cfg.login_routes.get(i)?.token_pointer.as_deref()?;
    let doc = serde_json::from_slice::<serde_json::Value>(body?).ok()?;
    let token = doc.pointer(pointer)?.as_str()?;
    let ok =
        !token.is_empty() && token.len() <= 4096 && token.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| token.as_bytes().to_vec())
}

/// Whether an accepted login waits for its response body before it is recorded:
/// only when the body keys it (an opaque token, `token`) or may name it (the
/// route trusts `response_body` and the answer may be JSON: its
/// `Content-Type`, if any, says JSON). Every other login (a form login's
/// redirect, an HTML page) is recorded at the response's headers, before the
/// client has them: a page that moves on at the headers finds its session,
/// also when the app rotates the cookie on that very next request.
pub fn login_reads_body(
    cfg: &Config,
    route: Route,
    token: bool,
    content_type: Option<&[u8]>,
) -> bool {
    let Route::Login(i) = route else { return false };
    let trusts_body = cfg
        .login_routes
        .get(i)
        .is_some_and(|r| r.identity.contains(&IdentitySource::ResponseBody));
    let may_be_json =
        content_type.is_none_or(|t| t.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")));
    token || (trusts_body && may_be_json)
}

/// Why a token was refused (first refusal only), for a debug log line.
pub fn refusal(verdict: Option<&Bearer>) -> Option<&JwtError> {
    match verdict {
        Some(Bearer::Refused(Some(why))) => Some(why),
        _ => None,
    }
}

/// A login request, kept until the upstream's answer shows whether it succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginAttempt {
    /// Which of `Config::login_routes` it is.
    pub route: Route,
    pub ip: String,
    pub user_agent: String,
    /// Who the client's request body says it is (`typed::read`).
    pub typed: Typed,
}

/// A login the app accepted: the session it starts, and why it names nobody or
/// why its typed name was set aside (`Kind::Unnamed`: counted and logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub session: Session,
    pub unnamed: Option<Unnamed>,
    /// Ask the app who the session is (`whoami`); if it cannot say, these
    /// sources name it (`settle`).
    pub whoami: Option<Identity>,
}

impl LoginAttempt {
    /// The session an accepted login starts under `cookie`: identity from the
    /// sources its route trusts, in their order (response headers, response
    /// body, what the client typed). A login that names nobody is still a
    /// session (the app accepted it): an unnamed one, whose `user_id` is
    /// `unnamed:<session id>` and whose `username` is empty, so each counts as
    /// one user, under `default_role`.
    ///
    /// With `whoami` in the order and no source before it naming anyone, the
    /// session starts unnamed and `Accepted::whoami` holds what the sources
    /// after it name: the host asks the app, then settles (`settle`).
    pub fn finish(
        self,
        cfg: &Config,
        cookie: CookieHash,
        from_headers: Identity,
        body: Option<&[u8]>,
        now: u64,
        random: [u8; 16],
    ) -> Accepted {
        let from_body = body
            .map(|b| identity::from_response_body(cfg, b))
            .unwrap_or_default();
        let order = match self.route {
            Route::Login(i) => cfg.login_routes.get(i).map(|r| r.identity.as_slice()),
            _ => None,
        };
        let order = order.unwrap_or_default();
        let typed_counts = order.contains(&IdentitySource::RequestBody);
        let ambiguity = self.typed.ambiguity.filter(|_| typed_counts);
        let claimed = Identity {
            username: self.typed.username,
            ..Identity::default()
        };
        let sources = (from_headers, from_body, claimed);
        let named_by = |order: &[IdentitySource]| {
            let (h, b, c) = sources.clone();
            identity::combine(order, h, b, c)
        };
        let (who, whoami) = match whoami::plan(order) {
            Some((before, after)) if cfg.whoami.is_some() => {
                let first = named_by(before);
                match first.clone().resolve(cfg) {
                    Some(_) => (first, None),
                    None => (Identity::default(), Some(named_by(after))),
                }
            }
            _ => (named_by(order), None),
        };
        let resolved = who.resolve(cfg);
        let named = resolved.is_some();
        let who = resolved.unwrap_or_else(|| unnamed_identity(cfg, random));
        let facts = LoginFacts {
            cookie,
            ip: self.ip,
            user_agent: self.user_agent,
            now,
            random,
        };
        // Whether a login asking whoami names anyone is known once it answers.
        let nobody = !named && whoami.is_none();
        let unnamed = ambiguity.or(nobody.then_some(Unnamed::NoIdentity));
        let session = gateway::build_session(cfg, who, facts);
        Accepted {
            session,
            unnamed,
            whoami,
        }
    }
}

/// The identity of a session whose login names nobody (yet).
fn unnamed_identity(cfg: &Config, random: [u8; 16]) -> (String, String, String) {
    let id = crate::session::session_id_from_random(random);
    let unnamed = uuid::Uuid::from_bytes(id.0).hyphenated();
    (
        format!("unnamed:{unnamed}"),
        String::new(),
        cfg.default_role.clone(),
    )
}

/// Who a session asked about with whoami is, once the app answered (`answer`:
/// its identity, `None` for a failed, slow or garbage answer): the app's answer,
/// else what the route's later sources named (`fallback`). `None`: nobody, the
/// session stays unnamed (counted as `Unnamed::NoIdentity`).
pub fn settle(
    cfg: &Config,
    answer: Option<Identity>,
    fallback: Identity,
) -> Option<(String, String, String)> {
    answer
        .and_then(|a| a.resolve(cfg))
        .or_else(|| fallback.resolve(cfg))
}

/// The log line of a login whose typed name was set aside, or that names nobody.
pub fn unnamed_line(why: Unnamed, s: &Session) -> String {
    match why {
        Unnamed::NoIdentity => format!("login names nobody; followed unnamed ({})", s.uuid()),
        _ if s.username.is_empty() => format!(
            "login names nobody: the typed username is ambiguous ({}); followed unnamed ({})",
            why.name(),
            s.uuid()
        ),
        _ => format!(
            "typed username set aside as ambiguous ({}); login {} named by the app ({})",
            why.name(),
            s.username,
            s.uuid()
        ),
    }
}

/// What the upstream's answer does to the request's session (the gateway's rule).
pub use crate::gateway::Transition as Change;

pub use crate::gateway::Carried;

/// The upstream's answer: its status, `Location` and `Set-Cookie` values (in
/// header order; the last one for the session cookie wins, as in a browser).
pub struct Upstream<'a, I: DoubleEndedIterator<Item = &'a [u8]>> {
    pub status: u16,
    pub location: Option<&'a [u8]>,
    pub set_cookies: I,
}

/// Decides the change for a request on `route` that carried `old` (its session
/// key and cookie); `hash` keys a new cookie value (the raw value is never kept).
pub fn response_change<'a, I: DoubleEndedIterator<Item = &'a [u8]>>(
    cfg: &Config,
    route: Route,
    answer: Upstream<'a, I>,
    old: Carried,
    now: u64,
    hash: impl FnOnce(&[u8]) -> CookieHash,
) -> Change {
    let change = answer
        .set_cookies
        .rev()
        .find_map(|v| identity::set_cookie(v, &cfg.session_cookie, now))
        .map(|c| match c {
            CookieChange::Set(v) => CookieChange::Set(hash(&v)),
            CookieChange::Cleared => CookieChange::Cleared,
        });
    let success = gateway::succeeded(cfg, route, answer.status, answer.location);
    let change = gateway::transition(route, success, old, change);
    let token_route = match route {
        Route::Login(i) => cfg
            .login_routes
            .get(i)
            .is_some_and(|r| r.token_pointer.is_some()),
        _ => false,
    };
    match change {
        Change::Login(cookie) if token_route => Change::TokenLogin(Some(cookie)),
        Change::None if token_route && success => Change::TokenLogin(None),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::from_json(br#"{"session_cookie": "sid"}"#).unwrap()
    }

    fn change(route: Route, status: u16, cookies: &[&str], old: Option<CookieHash>) -> Change {
        let answer = Upstream {
            status,
            location: None,
            set_cookies: cookies.iter().map(|c| c.as_bytes()),
        };
        response_change(&cfg(), route, answer, Carried::cookie(old), 0, |v| {
            CookieHash([v.len() as u8; 16])
        })
    }

    #[test]
    fn the_answer_decides_login_rotation_and_logout() {
        let login = Route::Login(0);
        assert_eq!(
            change(login, 200, &["sid=abc"], None),
            Change::Login(CookieHash([3; 16]))
        );
        assert_eq!(change(login, 401, &["sid=abc"], None), Change::None);
        // The last Set-Cookie for the session cookie wins; others are ignored.
        let two = ["sid=abcd", "other=x", "sid=ab"];
        assert_eq!(
            change(Route::App, 200, &two, Some(CookieHash([9; 16]))),
            Change::Rotate(CookieHash([2; 16]))
        );
        assert_eq!(
            change(Route::App, 200, &["sid=abc"], Some(CookieHash([3; 16]))),
            Change::None
        );
        assert_eq!(
            change(Route::App, 200, &["sid="], Some(CookieHash([3; 16]))),
            Change::Logout
        );
        assert_eq!(
            change(Route::Logout, 204, &[], Some(CookieHash([3; 16]))),
            Change::Logout
        );
        assert_eq!(change(Route::Logout, 204, &[], None), Change::None);
    }

    #[test]
    fn a_token_takes_precedence_over_the_cookie() {
        assert_eq!(
            request_key(
                Some(&Bearer::Known(CookieHash([1; 16]))),
                None,
                Some(CookieHash([2; 16]))
            ),
            Some(CookieHash([1; 16]))
        );
        let refused = Bearer::Refused(Some(JwtError::AlgNone));
        assert_eq!(
            request_key(Some(&refused), None, Some(CookieHash([2; 16]))),
            Some(CookieHash([2; 16]))
        );
        assert_eq!(refusal(Some(&refused)), Some(&JwtError::AlgNone));
        assert_eq!(request_key(None, None, None), None);
        let opaque = Some(CookieHash([3; 16]));
        assert_eq!(
            request_key(Some(&refused), opaque, Some(CookieHash([2; 16]))),
            opaque
        );
    }

    #[test]
    fn an_opaque_token_login_is_keyed_by_the_token_in_its_body() {
        let cfg = Config::from_json(
            br#"{"token_scheme": "Token", "login_routes": [{"path": "/api/token", "token_pointer": "/token"}]}"#,
        )
        .unwrap();
        let route = Route::Login(0);
        let answer = |cookies: &'static [&'static str]| Upstream {
            status: 200,
            location: None,
            set_cookies: cookies.iter().map(|c| c.as_bytes()),
        };
        let hash = |v: &[u8]| CookieHash([v.len() as u8; 16]);
        let none = Carried::default();
        assert_eq!(
            response_change(&cfg, route, answer(&[]), none, 0, hash),
            Change::TokenLogin(None)
        );
        assert_eq!(
            response_change(&cfg, route, answer(&["session=abc"]), none, 0, hash),
            Change::TokenLogin(Some(CookieHash([3; 16])))
        );
        let body = br#"{"token": "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b"}"#;
        assert_eq!(
            token_in(&cfg, route, Some(body)).as_deref(),
            Some(&b"9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b"[..])
        );
        assert_eq!(token_in(&cfg, route, Some(br#"{"token": 5}"#)), None);
        assert_eq!(token_in(&cfg, route, Some(br#"{"token": "a b"}"#)), None);
        assert_eq!(token_in(&cfg, Route::App, Some(body)), None);
        let header = Some(&b"Token 9944b"[..]);
        assert_eq!(opaque_token(&cfg, header), Some(&b"9944b"[..]));
        assert_eq!(opaque_token(&cfg, Some(b"Bearer 9944b")), None);
        assert_eq!(opaque_token(&Config::default(), header), None);
        assert_eq!(
            crate::config::tests::field_of(
                r#"{"login_routes": [{"path": "/t", "token_pointer": "token"}]}"#
            ),
            "login_routes.token_pointer"
        );
    }

    #[test]
    fn a_login_names_whom_its_route_trusts_first() {
        let cfg = Config::from_json(
            br#"{"login_routes": [{"method": "POST", "path": "/login", "identity": ["response_body", "request_body"]}]}"#,
        )
        .unwrap();
        let attempt = LoginAttempt {
            route: Route::Login(0),
            ip: "10.0.0.1".into(),
            user_agent: "ua".into(),
            typed: Typed {
                username: Some("typed".into()),
                ambiguity: None,
            },
        };
        let body = br#"{"user": {"id": "4", "username": "ann", "role": "admin"}}"#;
        let s = attempt
            .clone()
            .finish(
                &cfg,
                CookieHash([5; 16]),
                Identity::default(),
                Some(body),
                7,
                [1; 16],
            )
            .session;
        assert_eq!(
            (s.username.as_str(), s.role.as_str(), s.cookie),
            ("ann", "admin", CookieHash([5; 16]))
        );
        let typed = attempt.finish(
            &cfg,
            CookieHash([5; 16]),
            Identity::default(),
            None,
            7,
            [1; 16],
        );
        assert_eq!(typed.session.username, "typed");
        assert_eq!(typed.unnamed, None);
    }

    #[test]
    fn a_login_that_names_nobody_is_an_unnamed_session_and_says_why() {
        let cfg = Config::from_json(
            br#"{"login_routes": [{"path": "/login", "identity": ["request_body"]}]}"#,
        )
        .unwrap();
        let attempt = |typed: Typed| LoginAttempt {
            route: Route::Login(0),
            ip: String::new(),
            user_agent: String::new(),
            typed,
        };
        let cookie = CookieHash([5; 16]);
        let ambiguous = Typed {
            username: None,
            ambiguity: Some(Unnamed::RepeatedField),
        };
        let got = attempt(ambiguous).finish(&cfg, cookie, Identity::default(), None, 7, [1; 16]);
        assert_eq!(got.unnamed, Some(Unnamed::RepeatedField));
        let s = got.session;
        assert_eq!(s.username, "");
        assert_eq!(s.user_id, format!("unnamed:{}", s.uuid()));
        assert_eq!((s.role.as_str(), s.cookie), ("unknown", cookie));
        let silent =
            attempt(Typed::default()).finish(&cfg, cookie, Identity::default(), None, 7, [2; 16]);
        assert_eq!(silent.unnamed, Some(Unnamed::NoIdentity));
        assert_ne!(
            silent.session.user_id, s.user_id,
            "each unnamed login is its own user"
        );
    }

    #[test]
    fn only_a_login_keyed_or_named_by_its_body_waits_for_it() {
        let cfg = Config::from_json(
            br#"{"login_routes": [
                {"path": "/form", "identity": ["request_body", "headers", "whoami"]},
                {"path": "/api", "identity": ["headers", "response_body"]},
                {"path": "/token", "token_pointer": "/token", "identity": ["whoami"]}
            ], "whoami": {"path": "/me", "cluster": "app"}}"#,
        )
        .unwrap();
        let (json, html) = (
            Some(&b"application/json"[..]),
            Some(&b"text/html; charset=utf-8"[..]),
        );
        assert!(!login_reads_body(&cfg, Route::Login(0), false, json));
        assert!(login_reads_body(&cfg, Route::Login(1), false, json));
        assert!(login_reads_body(
            &cfg,
            Route::Login(1),
            false,
            Some(b"application/vnd.api+JSON")
        ));
        assert!(login_reads_body(&cfg, Route::Login(1), false, None));
        assert!(!login_reads_body(&cfg, Route::Login(1), false, html));
        assert!(login_reads_body(&cfg, Route::Login(2), true, html));
        assert!(!login_reads_body(&cfg, Route::App, true, None));
    }
}
