//! Per-request decisions shared by every host: which route a request is, what an
//! upstream answer means for the session, and who may read the stats.

use crate::config::Config;
use crate::events::Actor;
use crate::identity::{CookieChange, Identity};
use crate::session::{session_id_from_random, CookieHash, Session, SessionId};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The `n`th of `Config::login_routes`.
    Login(usize),
    Logout,
    /// Under `route_prefix`: answered by the plugin, never proxied.
    Admin(AdminRoute),
    App,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRoute {
    /// The dashboard page: static, carries no data, served to anyone.
    Dashboard,
    Stats,
    History,
    Events,
    Metrics,
    /// `POST {prefix}/sessions/{session_id}/revoke`.
    Revoke(SessionId),
    MethodNotAllowed,
    NotFound,
}

/// Classifies a request by method and path (the query string is ignored).
pub fn route(cfg: &Config, method: &[u8], path: &[u8]) -> Route {
    route_lazy(cfg, || method, path)
}

/// `route`, asking for the method only when the path is one whose route
/// depends on it (the plugin's, a login's, the logout's): most requests' is
/// never read.
pub fn route_lazy<'m>(cfg: &Config, method: impl FnOnce() -> &'m [u8], path: &[u8]) -> Route {
    let path = path
        .split(|b| *b == b'?' || *b == b'#')
        .next()
        .unwrap_or_default();
    let prefix = cfg.route_prefix.as_bytes();
    if let Some(rest) = path.strip_prefix(prefix) {
        if rest.is_empty() || rest.starts_with(b"/") {
            return Route::Admin(admin_route(rest, method()));
        }
    }
    let login = cfg.login_routes.iter().any(|r| path == r.path.as_bytes());
    let logout = path == cfg.logout_path.as_bytes();
    if !(login || logout) {
        return Route::App;
    }
    let method = method();
    if let Some(i) = cfg
        .login_routes
        .iter()
        .position(|r| method.eq_ignore_ascii_case(r.method.as_bytes()) && path == r.path.as_bytes())
    {
        Route::Login(i)
    } else if logout && method.eq_ignore_ascii_case(cfg.logout_method.as_bytes()) {
        Route::Logout
    } else {
        Route::App
    }
}

/// Which of the plugin's routes `rest` (the path after `route_prefix`) is.
fn admin_route(rest: &[u8], method: &[u8]) -> AdminRoute {
    if let Some(id) = revoke_target(rest) {
        return if method == b"POST" {
            AdminRoute::Revoke(id)
        } else {
            AdminRoute::MethodNotAllowed
        };
    }
    let admin = match rest {
        b"" | b"/" => AdminRoute::Dashboard,
        b"/stats" => AdminRoute::Stats,
        b"/history" => AdminRoute::History,
        b"/events" => AdminRoute::Events,
        b"/metrics" => AdminRoute::Metrics,
        _ => return AdminRoute::NotFound,
    };
    if method == b"GET" || method == b"HEAD" {
        admin
    } else {
        AdminRoute::MethodNotAllowed
    }
}

/// A numeric query parameter (`?limit=50`), if present and well-formed.
pub fn query_param(path: &[u8], name: &str) -> Option<u64> {
    let query = path
        .iter()
        .position(|b| *b == b'?')
        .and_then(|i| path.get(i + 1..))?;
    form_urlencoded::parse(query)
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// The session id in `/sessions/{uuid}/revoke`.
fn revoke_target(rest: &[u8]) -> Option<SessionId> {
    let id = rest.strip_prefix(b"/sessions/")?.strip_suffix(b"/revoke")?;
    let id = std::str::from_utf8(id).ok()?;
    uuid::Uuid::try_parse(id)
        .ok()
        .map(|u| SessionId(*u.as_bytes()))
}

/// Whether the upstream's answer counts as success for `route`: the login
/// route's own rule, otherwise any 2xx or 3xx.
pub fn succeeded(cfg: &Config, route: Route, status: u16, location: Option<&[u8]>) -> bool {
    match route {
        Route::Login(i) => cfg
            .login_routes
            .get(i)
            .is_some_and(|r| r.succeeded(status, location)),
        _ => (200..400).contains(&status),
    }
}

/// What an upstream answer does to the session behind the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A login succeeded and set this cookie (hashed).
    Login(CookieHash),
    /// The session behind the request cookie is over.
    Logout,
    /// The app re-issued the session cookie (the new value, hashed).
    Rotate(CookieHash),
    /// A login succeeded on a route whose response body carries the session's
    /// opaque token (`token_pointer`): the token keys the session once the body
    /// is read; the cookie the login set or kept, if the body has none.
    TokenLogin(Option<CookieHash>),
    None,
}

/// What a request carried into its transition: its session key (a verified
/// token's, or the session cookie's hash) and the hash of the session cookie
/// itself, when it sent one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    pub key: Option<CookieHash>,
    pub cookie: Option<CookieHash>,
}

impl Carried {
    /// A request identified by its session cookie alone (no token).
    pub fn cookie(hash: Option<CookieHash>) -> Self {
        Carried {
            key: hash,
            cookie: hash,
        }
    }
}

/// Decides the transition from the route, the status, what the request carried
/// and the session cookie change in the response, its value hashed (the last
/// `Set-Cookie` for our cookie wins, as in a browser).
///
/// A successful login that sets no new value keeps the session the request's
/// cookie names (express-session's defaults, PHP without
/// `session_regenerate_id()`): the app has just accepted that session as logged
/// in, since a value it did not know would have been replaced by a new one. So
/// the login starts under the request's cookie value.
pub fn transition(
    route: Route,
    success: bool,
    carried: Carried,
    change: Option<CookieChange<CookieHash>>,
) -> Transition {
    let request_key = carried.key;
    match (route, change) {
        (Route::Login(_), Some(CookieChange::Set(v))) if success => Transition::Login(v),
        (Route::Login(_), None) if success => {
            carried.cookie.map_or(Transition::None, Transition::Login)
        }
        (_, Some(CookieChange::Cleared)) if request_key.is_some() => Transition::Logout,
        (Route::Logout, _) if success && request_key.is_some() => Transition::Logout,
        (_, Some(CookieChange::Set(v))) if request_key.is_some_and(|old| old != v) => {
            Transition::Rotate(v)
        }
        _ => Transition::None,
    }
}

/// The facts of a successful login besides who it was.
pub struct LoginFacts {
    pub cookie: CookieHash,
    pub ip: String,
    pub user_agent: String,
    pub now: u64,
    /// 16 random bytes from the host, for the session id.
    pub random: [u8; 16],
}

/// Builds the session for a successful login; `None` when nobody is named.
pub fn new_session(cfg: &Config, identity: Identity, login: LoginFacts) -> Option<Session> {
    let (user_id, username, role) = identity.resolve(cfg)?;
    Some(build_session(cfg, (user_id, username, role), login))
}

/// The session for `(user_id, username, role)`, with the login's facts (the
/// IP and agent as configured: anonymized, reduced).
pub fn build_session(cfg: &Config, who: (String, String, String), login: LoginFacts) -> Session {
    let LoginFacts {
        cookie,
        ip,
        user_agent,
        now,
        random,
    } = login;
    let ip = if cfg.anonymize_ip {
        crate::identity::anonymize_ip(&ip)
    } else {
        ip
    };
    let user_agent = if cfg.reduce_user_agent {
        crate::device::describe(&user_agent)
    } else {
        user_agent
    };
    let (user_id, username, role) = who;
    Session {
        id: session_id_from_random(random),
        user_id,
        username,
        role,
        ip,
        user_agent,
        login_ms: now,
        last_ms: now,
        cookie,
        aliases: Vec::new(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// No credentials at all: 401.
    Unauthenticated,
    /// Credentials that do not grant access: 403.
    Forbidden,
    /// An admin session's ambient cookie, on a state change a page of another
    /// site may have sent (CSRF): 403.
    CrossSite,
}

/// Where a request that changes state came from, as far as the browser says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// Sent by a page of the same origin (or by a client that is no browser
    /// form: it set `MARK_HEADER`).
    SameOrigin,
    /// Another site may have sent it, or nothing says it did not.
    Unproven,
}

/// A header a cross-site form cannot send, and a cross-site script only after
/// a CORS preflight, which the plugin's routes never grant. The dashboard sends
/// it with its state changes; so can any non-browser client.
pub const MARK_HEADER: &str = "x-headcount-request";

/// The evidence a request carries that it was not sent cross-site:
/// `MARK_HEADER`, `Sec-Fetch-Site: same-origin`, or (from browsers that send no
/// `Sec-Fetch-Site`) an `Origin` whose host is the request's own `authority`.
pub fn site(
    marked: bool,
    sec_fetch_site: Option<&[u8]>,
    origin: Option<&[u8]>,
    authority: Option<&[u8]>,
) -> Site {
    let proven = marked
        || match sec_fetch_site {
            Some(s) => s.eq_ignore_ascii_case(b"same-origin"),
            None => origin
                .and_then(|o| o.windows(3).position(|w| w == b"://").map(|i| (o, i)))
                .and_then(|(o, i)| o.get(i + 3..))
                .zip(authority)
                .is_some_and(|(host, a)| !a.is_empty() && host.eq_ignore_ascii_case(a)),
        };
    if proven {
        Site::SameOrigin
    } else {
        Site::Unproven
    }
}

/// The bearer token of an `Authorization` header, if it is one.
pub fn bearer(authorization: &[u8]) -> Option<&[u8]> {
    credentials(authorization, "Bearer")
}

/// The credentials of an `Authorization` header in `scheme` (`Bearer`, DRF's
/// `Token`; the scheme's case is ignored), if it is one.
pub fn credentials<'a>(authorization: &'a [u8], scheme: &str) -> Option<&'a [u8]> {
    let n = scheme.len();
    let (given, rest) = authorization.split_at(authorization.len().min(n + 1));
    let (name, space) = given.split_at(given.len().min(n));
    (name.eq_ignore_ascii_case(scheme.as_bytes()) && space == b" ")
        .then(|| rest.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Data access for `route`: the admin token (compared in constant time), a live
/// admin-role session, or for `/metrics` also the `metrics_token`.
/// Who may use `route`: the admin token (or `metrics_token` for the metrics),
/// or a live session with an admin role. A bearer token is not ambient; a
/// session is (its cookie goes with any request the browser sends), so on a
/// route that changes state it counts only from the same origin (`site`).
pub fn authorize(
    cfg: &Config,
    route: AdminRoute,
    token: Option<&[u8]>,
    session: Option<&Session>,
    site: Site,
    now: u64,
) -> Access {
    let matches = |want: Option<&str>| token_is(token, want);
    let token_ok = matches(cfg.admin_token.as_deref())
        || (route == AdminRoute::Metrics && matches(cfg.metrics_token.as_deref()));
    let live = session.filter(|s| !s.is_expired(now, cfg));
    let session_ok = live.is_some_and(|s| cfg.is_admin_role(&s.role));
    let changes_state = matches!(route, AdminRoute::Revoke(_));
    if token_ok || (session_ok && !(changes_state && site == Site::Unproven)) {
        Access::Allowed
    } else if session_ok {
        Access::CrossSite
    } else if token.is_some() || live.is_some() {
        Access::Forbidden
    } else {
        Access::Unauthenticated
    }
}

/// Whether `token` is `want` (compared in constant time); never when either is absent.
fn token_is(token: Option<&[u8]>, want: Option<&str>) -> bool {
    match (token, want) {
        (Some(t), Some(want)) => bool::from(t.ct_eq(want.as_bytes())),
        _ => false,
    }
}

/// Who a request `authorize` allowed acts as, for the record (a revocation's
/// event): the admin token when it carries it (the token decides first, as in
/// `authorize`), else its live admin-role session; `None` if neither.
pub fn actor(
    cfg: &Config,
    token: Option<&[u8]>,
    session: Option<&Session>,
    now: u64,
) -> Option<Actor> {
    if token_is(token, cfg.admin_token.as_deref()) {
        return Some(Actor::AdminToken);
    }
    session
        .filter(|s| !s.is_expired(now, cfg) && cfg.is_admin_role(&s.role))
        .map(Actor::session)
}

const DASHBOARD: &str = include_str!("../assets/dashboard.html");

/// The dashboard page with the route prefix filled in.
pub fn dashboard_html(cfg: &Config) -> String {
    DASHBOARD.replace("{{PREFIX}}", &cfg.route_prefix)
}

/// A JSON error body that says nothing about sessions.
pub fn error_body(message: &str) -> Vec<u8> {
    let message = serde_json::to_string(message).unwrap_or_default();
    format!(r#"{{"error":{message}}}"#).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_path_never_asks_for_the_method() {
        let cfg = Config::default();
        let never = || -> &'static [u8] { panic!("method read for an app path") };
        assert_eq!(route_lazy(&cfg, never, b"/api/items?x=1"), Route::App);
        let mut asked = false;
        let post = || {
            asked = true;
            &b"POST"[..]
        };
        assert_eq!(
            route_lazy(&cfg, post, b"/api/v1/auth/login"),
            Route::Login(0)
        );
        assert!(asked);
    }

    #[test]
    fn routes() {
        let cfg = Config::default();
        assert_eq!(
            route(&cfg, b"POST", b"/api/v1/auth/login?next=/"),
            Route::Login(0)
        );
        assert_eq!(route(&cfg, b"GET", b"/api/v1/auth/login"), Route::App);
        assert_eq!(route(&cfg, b"POST", b"/api/v1/auth/logout"), Route::Logout);
        assert_eq!(
            route(&cfg, b"GET", b"/__headcount/stats"),
            Route::Admin(AdminRoute::Stats)
        );
        assert_eq!(
            route(&cfg, b"POST", b"/__headcount/stats"),
            Route::Admin(AdminRoute::MethodNotAllowed)
        );
        let id = "0b7c5d3e-1f2a-4b5c-8d9e-0f1a2b3c4d5e";
        let revoke = format!("/__headcount/sessions/{id}/revoke");
        let want = *uuid::Uuid::parse_str(id).unwrap().as_bytes();
        assert_eq!(
            route(&cfg, b"POST", revoke.as_bytes()),
            Route::Admin(AdminRoute::Revoke(crate::ids::SessionId(want)))
        );
        assert_eq!(
            route(&cfg, b"GET", revoke.as_bytes()),
            Route::Admin(AdminRoute::MethodNotAllowed)
        );
        assert_eq!(
            route(&cfg, b"POST", b"/__headcount/sessions/not-a-uuid/revoke"),
            Route::Admin(AdminRoute::NotFound)
        );
        for (path, want) in [
            (&b"/__headcount"[..], AdminRoute::Dashboard),
            (b"/__headcount/", AdminRoute::Dashboard),
            (b"/__headcount/history", AdminRoute::History),
            (b"/__headcount/events?after=3", AdminRoute::Events),
            (b"/__headcount/metrics", AdminRoute::Metrics),
        ] {
            assert_eq!(route(&cfg, b"GET", path), Route::Admin(want));
        }
        assert_eq!(
            route(&cfg, b"GET", b"/__headcount/nope"),
            Route::Admin(AdminRoute::NotFound)
        );
        assert_eq!(route(&cfg, b"GET", b"/__headcountx"), Route::App);
        assert_eq!(route(&cfg, b"GET", b""), Route::App);
    }

    #[test]
    fn transitions() {
        let (a, b) = (CookieHash([1; 16]), CookieHash([2; 16]));
        let set = |v: CookieHash| Some(CookieChange::Set(v));
        let none = Carried::default();
        let with = |h| Carried::cookie(Some(h));
        assert_eq!(
            transition(Route::Login(0), true, none, set(a)),
            Transition::Login(a)
        );
        assert_eq!(
            transition(Route::Login(0), false, none, set(a)),
            Transition::None
        );
        assert_eq!(
            transition(Route::App, true, with(a), set(b)),
            Transition::Rotate(b)
        );
        assert_eq!(
            transition(Route::App, true, with(a), set(a)),
            Transition::None
        );
        assert_eq!(transition(Route::App, true, none, set(a)), Transition::None);
        assert_eq!(
            transition(Route::App, true, with(a), Some(CookieChange::Cleared)),
            Transition::Logout
        );
        assert_eq!(
            transition(Route::Logout, true, with(a), None),
            Transition::Logout
        );
        assert_eq!(
            transition(Route::Logout, false, with(a), None),
            Transition::None
        );
    }

    #[test]
    fn credentials_of_a_scheme() {
        assert_eq!(credentials(b"Token abc", "Token"), Some(&b"abc"[..]));
        assert_eq!(credentials(b"token  abc ", "Token"), Some(&b"abc"[..]));
        assert_eq!(credentials(b"Tokenabc", "Token"), None);
        assert_eq!(credentials(b"Token ", "Token"), None);
        assert_eq!(credentials(b"Bearer abc", "Token"), None);
        assert_eq!(credentials(b"Tok", "Token"), None);
        assert_eq!(bearer(b"bearer x.y.z"), Some(&b"x.y.z"[..]));
    }

    #[test]
    fn a_login_that_keeps_its_cookie_starts_the_session_under_it() {
        let (a, t) = (CookieHash([1; 16]), CookieHash([7; 16]));
        let kept = transition(Route::Login(0), true, Carried::cookie(Some(a)), None);
        assert_eq!(kept, Transition::Login(a));
        // Refused: nothing, whatever the request carried.
        let refused = transition(Route::Login(0), false, Carried::cookie(Some(a)), None);
        assert_eq!(refused, Transition::None);
        // No cookie sent, none set: nobody to follow.
        let bare = transition(Route::Login(0), true, Carried::default(), None);
        assert_eq!(bare, Transition::None);
        // A token's key is not a cookie the app kept.
        let token = Carried {
            key: Some(t),
            cookie: None,
        };
        assert_eq!(
            transition(Route::Login(0), true, token, None),
            Transition::None
        );
    }

    #[test]
    fn cross_site_evidence() {
        let host = Some(&b"app.example:8443"[..]);
        assert_eq!(site(true, None, None, None), Site::SameOrigin);
        assert_eq!(
            site(false, Some(b"same-origin"), None, None),
            Site::SameOrigin
        );
        assert_eq!(
            site(
                false,
                Some(b"cross-site"),
                Some(b"https://app.example:8443"),
                host
            ),
            Site::Unproven
        );
        assert_eq!(site(false, Some(b"same-site"), None, host), Site::Unproven);
        assert_eq!(site(false, Some(b"none"), None, host), Site::Unproven);
        assert_eq!(
            site(false, None, Some(b"https://app.example:8443"), host),
            Site::SameOrigin
        );
        assert_eq!(
            site(false, None, Some(b"https://evil.example"), host),
            Site::Unproven
        );
        assert_eq!(site(false, None, Some(b"null"), host), Site::Unproven);
        assert_eq!(site(false, None, None, host), Site::Unproven);
    }

    #[test]
    fn authorization() {
        let cfg = Config {
            admin_token: Some("s3cret-token".into()),
            ..Config::default()
        };
        let mut admin = new_session(
            &cfg,
            Identity {
                username: Some("a".into()),
                role: Some("admin".into()),
                ..Identity::default()
            },
            LoginFacts {
                cookie: crate::ids::CookieHash([2; 16]),
                ip: String::new(),
                user_agent: String::new(),
                now: 0,
                random: [1; 16],
            },
        );
        assert_eq!(
            authorize(&cfg, AdminRoute::Stats, None, None, Site::Unproven, 0),
            Access::Unauthenticated
        );
        assert_eq!(
            authorize(
                &cfg,
                AdminRoute::Stats,
                Some(b"s3cret-token"),
                None,
                Site::Unproven,
                0
            ),
            Access::Allowed
        );
        assert_eq!(
            authorize(
                &cfg,
                AdminRoute::Stats,
                Some(b"s3cret-tokem"),
                None,
                Site::Unproven,
                0
            ),
            Access::Forbidden
        );
        assert_eq!(
            authorize(
                &cfg,
                AdminRoute::Stats,
                None,
                admin.as_ref(),
                Site::Unproven,
                0
            ),
            Access::Allowed
        );
        if let Some(s) = admin.as_mut() {
            s.role = "student".into();
        }
        assert_eq!(
            authorize(
                &cfg,
                AdminRoute::Stats,
                None,
                admin.as_ref(),
                Site::Unproven,
                0
            ),
            Access::Forbidden
        );
        if let Some(s) = admin.as_mut() {
            s.role = "admin".into();
        }
        // A revoke on the admin's ambient cookie needs same-origin evidence; the
        // token does not.
        let revoke = AdminRoute::Revoke(SessionId([9; 16]));
        let by = |token, site| authorize(&cfg, revoke, token, admin.as_ref(), site, 0);
        assert_eq!(by(None, Site::Unproven), Access::CrossSite);
        assert_eq!(by(None, Site::SameOrigin), Access::Allowed);
        assert_eq!(by(Some(b"s3cret-token"), Site::Unproven), Access::Allowed);
        // Who it acts as: the token first, else the admin session.
        let token = Some(&b"s3cret-token"[..]);
        let who = |token| actor(&cfg, token, admin.as_ref(), 0);
        assert_eq!(who(token), Some(Actor::AdminToken));
        let s = admin.clone().unwrap();
        let named = Actor::AdminSession {
            username: "a".into(),
            session_id: s.id,
        };
        assert_eq!(who(None), Some(named.clone()));
        assert_eq!(who(Some(b"s3cret-tokem")), Some(named));
        let student = Session {
            role: "student".into(),
            ..s.clone()
        };
        assert_eq!(actor(&cfg, None, Some(&student), 0), None);
        let late = s.login_ms + cfg.max_lifetime_ms + 1;
        assert_eq!(actor(&cfg, None, Some(&s), late), None, "expired");
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bear"), None);
    }
}
