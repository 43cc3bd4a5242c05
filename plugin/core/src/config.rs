//! Plugin configuration: one JSON object, every key optional, unknown keys refused.

use serde::Deserialize;
use std::fmt;

/// Why a configuration was refused. `field` names the offending key so the
/// operator can fix it from the log line alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid headcount config: field `{}`: {}",
            self.field, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

fn err(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Raw keys as they appear in JSON; `Config::from_json` validates them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    app: Option<String>,
    login_method: Option<String>,
    login_path: Option<String>,
    logout_method: Option<String>,
    logout_path: Option<String>,
    session_cookie: Option<String>,
    user_id_pointer: Option<String>,
    username_pointer: Option<String>,
    role_pointer: Option<String>,
    username_form_field: Option<String>,
    username_normalization: Option<Vec<String>>,
    user_id_header: Option<String>,
    username_header: Option<String>,
    role_header: Option<String>,
    roles: Option<Vec<String>>,
    default_role: Option<String>,
    admin_roles: Option<Vec<String>>,
    admin_token: Option<String>,
    metrics_token: Option<String>,
    active_window_seconds: Option<u64>,
    idle_timeout_seconds: Option<u64>,
    max_lifetime_seconds: Option<u64>,
    route_prefix: Option<String>,
    client_ip_header: Option<String>,
    trusted_hops: Option<u32>,
    ignore_user_agents: Option<Vec<String>>,
    cookie_hash_secret: Option<String>,
    flush_interval_ms: Option<u64>,
    sweep_interval_seconds: Option<u64>,
    login_routes: Option<Vec<RawLoginRoute>>,
    token_scheme: Option<String>,
    max_sessions: Option<u64>,
    max_sessions_per_user: Option<u32>,
    enforce_revocation: Option<bool>,
    anonymize_ip: Option<bool>,
    reduce_user_agent: Option<bool>,
    jwt: Option<crate::bearer::RawJwt>,
    whoami: Option<crate::whoami::RawWhoami>,
    fleet: Option<crate::fleet::RawFleet>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoginRoute {
    method: Option<String>,
    path: String,
    success_statuses: Option<Vec<u16>>,
    success_location_prefix: Option<String>,
    identity: Option<Vec<IdentitySource>>,
    token_pointer: Option<String>,
}

/// Where a login route's identity may come from, in the order listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// Trusted upstream response headers (`user_id_header` ...).
    Headers,
    /// JSON pointers into the login response body.
    ResponseBody,
    /// The username field of the login request (form, JSON or multipart).
    RequestBody,
    /// The app's answer on the `whoami` route, asked after the login.
    Whoami,
}

/// One login route and what counts as success there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRoute {
    pub method: String,
    pub path: String,
    /// Empty means any 2xx or 3xx.
    pub success_statuses: Vec<u16>,
    /// If set, a redirect must point under this prefix (form logins that bounce
    /// back to the login page on failure).
    pub success_location_prefix: Option<String>,
    pub identity: Vec<IdentitySource>,
    /// Where the login response's JSON carries an opaque session token (DRF's
    /// `TokenAuthentication`, Sanctum): the token then keys the session, and
    /// requests send it as `Authorization: <token_scheme> <token>`.
    pub token_pointer: Option<String>,
}

impl LoginRoute {
    pub fn succeeded(&self, status: u16, location: Option<&[u8]>) -> bool {
        let status_ok = if self.success_statuses.is_empty() {
            (200..400).contains(&status)
        } else {
            self.success_statuses.contains(&status)
        };
        let location_ok = match (&self.success_location_prefix, (300..400).contains(&status)) {
            (Some(prefix), true) => {
                location.is_some_and(|l| location_path(l).starts_with(prefix.as_bytes()))
            }
            _ => true,
        };
        status_ok && location_ok
    }
}

/// The path of a `Location` value, absolute (`https://host/x`) or relative (`/x`).
fn location_path(l: &[u8]) -> &[u8] {
    let Some(scheme_end) = l.windows(3).position(|w| w == b"://") else {
        return l;
    };
    let rest = l.get(scheme_end + 3..).unwrap_or_default();
    match rest.iter().position(|b| *b == b'/') {
        Some(i) => rest.get(i..).unwrap_or_default(),
        None => b"/",
    }
}

/// How a typed username is normalized (`username_normalization`, a list of
/// steps applied in this order): `trim` surrounding whitespace, Unicode `nfkc`,
/// `lowercase`. The default, `["trim", "nfkc"]`, is what Django does (its form
/// strips, `normalize_username` applies NFKC) and agrees with Rails and Laravel
/// for plain names; list `lowercase` for apps whose usernames are
/// case-insensitive (e-mail logins, Devise's `case_insensitive_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalize {
    pub trim: bool,
    pub nfkc: bool,
    pub lowercase: bool,
}

impl Default for Normalize {
    fn default() -> Self {
        Normalize {
            trim: true,
            nfkc: true,
            lowercase: false,
        }
    }
}

impl Normalize {
    fn from_raw(raw: Option<Vec<String>>) -> Result<Normalize, ConfigError> {
        let Some(steps) = raw else {
            return Ok(Normalize::default());
        };
        let mut n = Normalize {
            trim: false,
            nfkc: false,
            lowercase: false,
        };
        for step in steps {
            let flag = match step.as_str() {
                "trim" => &mut n.trim,
                "nfkc" => &mut n.nfkc,
                "lowercase" => &mut n.lowercase,
                _ => {
                    return Err(err(
                        "username_normalization",
                        "steps are \"trim\", \"nfkc\" and \"lowercase\"",
                    ))
                }
            };
            *flag = true;
        }
        Ok(n)
    }
}

/// Validated configuration. Durations are kept in milliseconds, the unit of `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The app this instance counts for (`app.rs`); `None`: the host's name for
    /// the plugin instance (Envoy's plugin `name`), else `default`.
    pub app: Option<crate::app::AppName>,
    pub login_method: String,
    pub login_path: String,
    pub logout_method: String,
    pub logout_path: String,
    pub session_cookie: String,
    pub user_id_pointer: String,
    pub username_pointer: String,
    pub role_pointer: String,
    pub username_form_field: String,
    /// How a typed username is normalized before it names anyone.
    pub username_normalization: Normalize,
    /// Trusted upstream response headers (lower-case).
    pub user_id_header: Option<String>,
    pub username_header: Option<String>,
    pub role_header: Option<String>,
    pub roles: Vec<String>,
    pub default_role: String,
    pub admin_roles: Vec<String>,
    pub admin_token: Option<String>,
    /// Bearer token that may read `/metrics` only (for Prometheus scrapers).
    pub metrics_token: Option<String>,
    pub active_window_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_lifetime_ms: u64,
    pub route_prefix: String,
    pub client_ip_header: Option<String>,
    pub trusted_hops: u32,
    /// Lower-cased substrings.
    pub ignore_user_agents: Vec<String>,
    pub cookie_hash_secret: Option<String>,
    pub flush_interval_ms: u64,
    pub sweep_interval_ms: u64,
    /// The login routes; from `login_routes`, or one built from `login_method`/`login_path`.
    pub login_routes: Vec<LoginRoute>,
    /// The `Authorization` scheme of opaque tokens (`Bearer`, DRF's `Token`).
    pub token_scheme: String,
    /// Hard cap on live sessions: past it the longest-idle session is evicted.
    pub max_sessions: u64,
    pub max_sessions_per_user: Option<u32>,
    /// Answer requests carrying a revoked session's cookie with 401.
    pub enforce_revocation: bool,
    /// Keep client IPs truncated to /24 (IPv4) or /48 (IPv6).
    pub anonymize_ip: bool,
    /// Keep only "Browser N on OS" instead of the full user agent.
    pub reduce_user_agent: bool,
    /// Identify users by a verified JWT (header or cookie) as well as by login.
    pub jwt: Option<crate::bearer::BearerConfig>,
    /// Ask the app who a session is (`whoami.rs`).
    pub whoami: Option<crate::whoami::Whoami>,
    /// One ledger for many Envoy nodes, kept by collectors (`fleet.rs`).
    pub fleet: Option<crate::fleet::Fleet>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            app: None,
            login_method: "POST".into(),
            login_path: "/api/v1/auth/login".into(),
            logout_method: "POST".into(),
            logout_path: "/api/v1/auth/logout".into(),
            session_cookie: "session".into(),
            user_id_pointer: "/user/id".into(),
            username_pointer: "/user/username".into(),
            role_pointer: "/user/role".into(),
            username_form_field: "username".into(),
            username_normalization: Normalize::default(),
            user_id_header: None,
            username_header: None,
            role_header: None,
            roles: vec!["admin".into(), "teacher".into(), "student".into()],
            default_role: "unknown".into(),
            admin_roles: vec!["admin".into()],
            admin_token: None,
            metrics_token: None,
            active_window_ms: 300_000,
            idle_timeout_ms: 1_800_000,
            max_lifetime_ms: 43_200_000,
            route_prefix: "/__headcount".into(),
            client_ip_header: None,
            trusted_hops: 1,
            ignore_user_agents: vec![
                "bot".into(),
                "crawler".into(),
                "spider".into(),
                "slurp".into(),
            ],
            cookie_hash_secret: None,
            flush_interval_ms: 1000,
            sweep_interval_ms: 5000,
            login_routes: vec![LoginRoute {
                method: "POST".into(),
                path: "/api/v1/auth/login".into(),
                success_statuses: Vec::new(),
                success_location_prefix: None,
                identity: DEFAULT_IDENTITY.to_vec(),
                token_pointer: None,
            }],
            token_scheme: "Bearer".into(),
            max_sessions: 100_000,
            max_sessions_per_user: None,
            enforce_revocation: false,
            anonymize_ip: false,
            reduce_user_agent: false,
            jwt: None,
            whoami: None,
            fleet: None,
        }
    }
}

const DEFAULT_IDENTITY: [IdentitySource; 3] = [
    IdentitySource::Headers,
    IdentitySource::ResponseBody,
    IdentitySource::RequestBody,
];

/// Longest user-supplied string we accept in config; keeps log lines and state small.
const MAX_TEXT: usize = 256;

fn method(field: &str, v: Option<String>, default: String) -> Result<String, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    if v.is_empty() || v.len() > 16 || !v.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(err(field, "must be an HTTP method such as \"POST\""));
    }
    Ok(v.to_ascii_uppercase())
}

fn path(field: &str, v: Option<String>, default: String) -> Result<String, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    if !v.starts_with('/') || v.len() > MAX_TEXT || v.contains(['?', '#', ' ']) {
        return Err(err(
            field,
            "must be a path starting with '/' without query or spaces",
        ));
    }
    Ok(v)
}

fn pointer(field: &str, v: Option<String>, default: String) -> Result<String, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    if !(v.is_empty() || v.starts_with('/')) || v.len() > MAX_TEXT {
        return Err(err(
            field,
            "must be a JSON pointer such as \"/user/id\" (or \"\" for none)",
        ));
    }
    Ok(v)
}

pub(crate) fn token(field: &str, v: &str) -> Result<(), ConfigError> {
    // RFC 7230 token characters: valid as both header and cookie names.
    let ok = !v.is_empty()
        && v.len() <= MAX_TEXT
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(err(field, "must be a non-empty header/cookie name token"))
    }
}

fn header(field: &str, v: Option<String>) -> Result<Option<String>, ConfigError> {
    match v {
        None => Ok(None),
        Some(v) => {
            token(field, &v)?;
            Ok(Some(v.to_ascii_lowercase()))
        }
    }
}

fn text(field: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > MAX_TEXT || v.chars().any(char::is_control) {
        return Err(err(
            field,
            "must be a non-empty string of at most 256 characters",
        ));
    }
    Ok(())
}

fn list(
    field: &str,
    v: Option<Vec<String>>,
    default: Vec<String>,
) -> Result<Vec<String>, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    if v.len() > 64 {
        return Err(err(field, "at most 64 entries"));
    }
    for item in &v {
        text(field, item)?;
    }
    Ok(v)
}

fn seconds(field: &str, v: Option<u64>, default_ms: u64, max: u64) -> Result<u64, ConfigError> {
    match v {
        None => Ok(default_ms),
        Some(s) if (1..=max).contains(&s) => Ok(s * 1000),
        Some(_) => Err(err(field, format!("must be between 1 and {max} seconds"))),
    }
}

impl Config {
    /// Parses and validates a plugin configuration. Empty input means all defaults.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(err("(config)", "must be a JSON object"));
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
        de.end()
            .map_err(|e| err("(config)", format!("trailing characters: {e}")))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let d = Config::default();
        const DAY: u64 = 86_400;
        let session_cookie = raw.session_cookie.unwrap_or(d.session_cookie);
        token("session_cookie", &session_cookie)?;
        let default_role = raw.default_role.unwrap_or(d.default_role);
        text("default_role", &default_role)?;
        let route_prefix = path("route_prefix", raw.route_prefix, d.route_prefix)?;
        if route_prefix == "/" || route_prefix.ends_with('/') {
            return Err(err("route_prefix", "must not be \"/\" or end with '/'"));
        }
        for (field, value) in [
            ("admin_token", &raw.admin_token),
            ("metrics_token", &raw.metrics_token),
        ] {
            if let Some(t) = value {
                if t.len() < 8 || t.len() > MAX_TEXT || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(err(
                        field,
                        "must be 8 to 256 printable ASCII characters without spaces",
                    ));
                }
            }
        }
        if let Some(s) = &raw.cookie_hash_secret {
            if s.len() < 16 || s.len() > MAX_TEXT {
                return Err(err("cookie_hash_secret", "must be 16 to 256 characters"));
            }
        }
        let trusted_hops = raw.trusted_hops.unwrap_or(d.trusted_hops);
        if !(1..=16).contains(&trusted_hops) {
            return Err(err("trusted_hops", "must be between 1 and 16"));
        }
        let flush_interval_ms = raw.flush_interval_ms.unwrap_or(d.flush_interval_ms);
        if !(100..=10_000).contains(&flush_interval_ms) {
            return Err(err("flush_interval_ms", "must be between 100 and 10000"));
        }
        let active_window_ms = seconds(
            "active_window_seconds",
            raw.active_window_seconds,
            d.active_window_ms,
            DAY,
        )?;
        let idle_timeout_ms = seconds(
            "idle_timeout_seconds",
            raw.idle_timeout_seconds,
            d.idle_timeout_ms,
            30 * DAY,
        )?;
        let max_lifetime_ms = seconds(
            "max_lifetime_seconds",
            raw.max_lifetime_seconds,
            d.max_lifetime_ms,
            365 * DAY,
        )?;
        if idle_timeout_ms < active_window_ms {
            return Err(err(
                "idle_timeout_seconds",
                "must be at least active_window_seconds",
            ));
        }
        if max_lifetime_ms < active_window_ms {
            return Err(err(
                "max_lifetime_seconds",
                "must be at least active_window_seconds",
            ));
        }
        let roles = list("roles", raw.roles, d.roles)?;
        let admin_roles = list("admin_roles", raw.admin_roles, d.admin_roles)?;
        let ignore_user_agents = list(
            "ignore_user_agents",
            raw.ignore_user_agents,
            d.ignore_user_agents,
        )?
        .into_iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
        let username_form_field = raw.username_form_field.unwrap_or(d.username_form_field);
        text("username_form_field", &username_form_field)?;
        let login_method = method("login_method", raw.login_method, d.login_method)?;
        let login_path = path("login_path", raw.login_path, d.login_path)?;
        let whoami = raw
            .whoami
            .map(crate::whoami::Whoami::from_raw)
            .transpose()?;
        let login_routes = match raw.login_routes {
            None => vec![LoginRoute {
                method: login_method.clone(),
                path: login_path.clone(),
                success_statuses: Vec::new(),
                success_location_prefix: None,
                identity: default_identity(whoami.is_some()),
                token_pointer: None,
            }],
            Some(routes) => login_routes(routes, whoami.is_some())?,
        };
        let max_sessions = raw.max_sessions.unwrap_or(d.max_sessions);
        if !(1..=10_000_000).contains(&max_sessions) {
            return Err(err("max_sessions", "must be between 1 and 10000000"));
        }
        if raw
            .max_sessions_per_user
            .is_some_and(|n| !(1..=1000).contains(&n))
        {
            return Err(err("max_sessions_per_user", "must be between 1 and 1000"));
        }
        let fleet = raw.fleet.map(crate::fleet::Fleet::from_raw).transpose()?;
        if fleet.is_some() && raw.cookie_hash_secret.is_none() {
            return Err(err(
                "cookie_hash_secret",
                "is required with `fleet`: every node must hash cookies with the same key",
            ));
        }
        let token_scheme = raw.token_scheme.unwrap_or(d.token_scheme);
        token("token_scheme", &token_scheme)?;
        Ok(Config {
            app: raw
                .app
                .map(|a| crate::app::AppName::parse("app", &a))
                .transpose()?,
            token_scheme,
            login_method,
            login_path,
            login_routes,
            max_sessions,
            max_sessions_per_user: raw.max_sessions_per_user,
            enforce_revocation: raw.enforce_revocation.unwrap_or(d.enforce_revocation),
            anonymize_ip: raw.anonymize_ip.unwrap_or(d.anonymize_ip),
            reduce_user_agent: raw.reduce_user_agent.unwrap_or(d.reduce_user_agent),
            whoami,
            fleet,
            jwt: raw
                .jwt
                .map(crate::bearer::BearerConfig::from_raw)
                .transpose()?,
            logout_method: method("logout_method", raw.logout_method, d.logout_method)?,
            logout_path: path("logout_path", raw.logout_path, d.logout_path)?,
            session_cookie,
            user_id_pointer: pointer("user_id_pointer", raw.user_id_pointer, d.user_id_pointer)?,
            username_pointer: pointer(
                "username_pointer",
                raw.username_pointer,
                d.username_pointer,
            )?,
            role_pointer: pointer("role_pointer", raw.role_pointer, d.role_pointer)?,
            username_form_field,
            username_normalization: Normalize::from_raw(raw.username_normalization)?,
            user_id_header: header("user_id_header", raw.user_id_header)?,
            username_header: header("username_header", raw.username_header)?,
            role_header: header("role_header", raw.role_header)?,
            roles,
            default_role,
            admin_roles,
            admin_token: raw.admin_token,
            metrics_token: raw.metrics_token,
            active_window_ms,
            idle_timeout_ms,
            max_lifetime_ms,
            route_prefix,
            client_ip_header: header("client_ip_header", raw.client_ip_header)?,
            trusted_hops,
            ignore_user_agents,
            cookie_hash_secret: raw.cookie_hash_secret,
            flush_interval_ms,
            sweep_interval_ms: seconds(
                "sweep_interval_seconds",
                raw.sweep_interval_seconds,
                d.sweep_interval_ms,
                3600,
            )?,
        })
    }

    /// Header names the config trusts from the upstream; clients may not send them.
    pub fn trusted_identity_headers(&self) -> impl Iterator<Item = &str> {
        [
            &self.user_id_header,
            &self.username_header,
            &self.role_header,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
    }

    /// Whether any login route hands out opaque tokens (requests then have
    /// their `Authorization` read for one).
    pub fn opaque_tokens(&self) -> bool {
        self.login_routes.iter().any(|r| r.token_pointer.is_some())
    }

    /// The app's name once the host has settled it (`AppName::choose`; hosts
    /// store it in `app`), else `default`.
    pub fn app_name(&self) -> &str {
        self.app
            .as_ref()
            .map_or(crate::app::AppName::DEFAULT, |a| a.as_str())
    }

    pub fn is_admin_role(&self, role: &str) -> bool {
        self.admin_roles.iter().any(|r| r == role)
    }
}

/// Every source, in the default order; with `whoami` configured, the app's
/// answer there comes after the login's own answer (headers, body: no call when
/// they name the user) and before anything typed (what the app vouches for wins).
fn default_identity(whoami: bool) -> Vec<IdentitySource> {
    let mut order = DEFAULT_IDENTITY.to_vec();
    if whoami {
        order.insert(2, IdentitySource::Whoami);
    }
    order
}

fn login_routes(raw: Vec<RawLoginRoute>, whoami: bool) -> Result<Vec<LoginRoute>, ConfigError> {
    if raw.is_empty() || raw.len() > 16 {
        return Err(err("login_routes", "must list 1 to 16 routes"));
    }
    raw.into_iter()
        .map(|r| {
            let statuses = r.success_statuses.unwrap_or_default();
            if statuses.iter().any(|s| !(200..400).contains(s)) {
                return Err(err(
                    "login_routes.success_statuses",
                    "must be 2xx or 3xx codes",
                ));
            }
            let identity = r.identity.unwrap_or_else(|| default_identity(whoami));
            if identity.is_empty() {
                return Err(err(
                    "login_routes.identity",
                    "must name at least one source",
                ));
            }
            if !whoami && identity.contains(&IdentitySource::Whoami) {
                return Err(err(
                    "login_routes.identity",
                    "\"whoami\" needs the `whoami` key configured",
                ));
            }
            Ok(LoginRoute {
                method: method("login_routes.method", r.method, "POST".into())?,
                path: path("login_routes.path", Some(r.path), String::new())?,
                success_statuses: statuses,
                success_location_prefix: match r.success_location_prefix {
                    Some(p) => Some(path(
                        "login_routes.success_location_prefix",
                        Some(p),
                        String::new(),
                    )?),
                    None => None,
                },
                identity,
                token_pointer: match r.token_pointer {
                    Some(p) if p.starts_with('/') && p.len() <= MAX_TEXT => Some(p),
                    Some(_) => {
                        return Err(err(
                            "login_routes.token_pointer",
                            "must be a JSON pointer such as \"/token\"",
                        ))
                    }
                    None => None,
                },
            })
        })
        .collect()
}

/// Names the key that failed: unknown keys and type errors both point at it.
fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let msg = inner.to_string();
    if let Some(name) = msg
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
    {
        // The path ends at the unknown key itself; keep its parents (`jwt.bogus`).
        let parent = path.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        return if parent.is_empty() || parent == "." {
            err(name, "unknown key")
        } else {
            err(&format!("{parent}.{name}"), "unknown key")
        };
    }
    let field = if path == "." {
        "(config)".to_string()
    } else {
        path
    };
    err(&field, msg)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The field a config names in its error, or "(accepted)".
    pub(crate) fn field_of(json: &str) -> String {
        match Config::from_json(json.as_bytes()) {
            Err(e) => e.field,
            Ok(_) => "(accepted)".into(),
        }
    }

    #[test]
    fn empty_means_defaults() {
        assert_eq!(Config::from_json(b""), Ok(Config::default()));
        assert_eq!(Config::from_json(b"{}"), Ok(Config::default()));
        assert_eq!(Config::default().active_window_ms, 300_000);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(r#"{"active_window_seconds": "soon"}"#),
            "active_window_seconds"
        );
        assert_eq!(field_of(r#"{"bogus": 1}"#), "bogus");
        assert_eq!(
            field_of(r#"{"active_window_seconds": 0}"#),
            "active_window_seconds"
        );
        assert_eq!(
            field_of(r#"{"active_window_seconds": 600, "idle_timeout_seconds": 60}"#),
            "idle_timeout_seconds"
        );
        assert_eq!(field_of(r#"{"login_path": "api"}"#), "login_path");
        assert_eq!(field_of(r#"{"session_cookie": "a b"}"#), "session_cookie");
        assert_eq!(field_of(r#"{"admin_token": "short"}"#), "admin_token");
        assert_eq!(field_of(r#"{"roles": ["ok", ""]}"#), "roles");
        assert_eq!(field_of(r#"{"flush_interval_ms": 5}"#), "flush_interval_ms");
        assert_eq!(field_of(r#"{"route_prefix": "/"}"#), "route_prefix");
        assert_eq!(field_of(r#"{"app": "a/b"}"#), "app");
        assert_eq!(field_of(r#"{"app": ""}"#), "app");
        assert_eq!(field_of(r#"{"app": "shop-a"}"#), "(accepted)");
        assert_eq!(field_of("[1,2]"), "(config)");
        assert_eq!(field_of("{} x"), "(config)");
        let msg = Config::from_json(br#"{"active_window_seconds": "soon"}"#)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`active_window_seconds`"), "{msg}");
    }

    #[test]
    fn whoami_sits_between_the_logins_own_answer_and_what_was_typed() {
        use IdentitySource::*;
        let c = Config::from_json(br#"{"whoami": {"path": "/me"}}"#).unwrap();
        let order = &c.login_routes[0].identity;
        assert_eq!(order, &vec![Headers, ResponseBody, Whoami, RequestBody]);
        assert_eq!(
            Config::default().login_routes[0].identity,
            vec![Headers, ResponseBody, RequestBody]
        );
    }

    #[test]
    fn values_are_normalised() {
        let c = Config::from_json(br#"{"login_method": "post", "role_header": "X-Role", "active_window_seconds": 3, "ignore_user_agents": ["BOT"]}"#).unwrap();
        assert_eq!(c.login_method, "POST");
        assert_eq!(c.role_header.as_deref(), Some("x-role"));
        assert_eq!(c.active_window_ms, 3000);
        assert_eq!(c.ignore_user_agents, vec!["bot".to_string()]);
        assert_eq!(
            c.trusted_identity_headers().collect::<Vec<_>>(),
            vec!["x-role"]
        );
    }
}
