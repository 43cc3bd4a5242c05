//! Per-isolate setup: the validated configuration from the Worker's vars, the
//! cookie hasher, and the counters the debug header reports.

use crate::shards;
use headcount_core::ledger::wire::{decode_hex, SecretReply};
use headcount_core::{AppName, Config, CookieHasher};
use std::cell::RefCell;
use std::rc::Rc;
use worker::{Env, Url};

/// Binding of the `Sessions` Durable Object namespace (wrangler.toml).
pub const BINDING: &str = "HEADCOUNT";
/// Most shards a deployment may name; each is one Durable Object.
pub const MAX_SHARDS: u32 = 1024;

pub struct Setup {
    pub cfg: Config,
    /// The app this deployment counts for: the config's `app`, else `default`.
    /// Deployments sharing one Durable Object namespace must each set their own.
    pub app: AppName,
    /// Scheme, host and port the Worker proxies to.
    pub origin: Url,
    pub shards: u32,
    /// `HEADCOUNT_DEBUG=1`: the stats response carries `x-headcount-debug`.
    pub debug: bool,
}

thread_local! {
    static SETUP: RefCell<Option<Rc<Setup>>> = const { RefCell::new(None) };
    static HASHER: RefCell<Option<Rc<CookieHasher>>> = const { RefCell::new(None) };
    static COUNTERS: RefCell<Counters> = RefCell::new(Counters::default());
}

/// What this isolate did since it started (reported with `HEADCOUNT_DEBUG=1`).
#[derive(Default, Clone, Copy)]
pub struct Counters {
    /// Requests made to Durable Objects, of any kind.
    pub do_requests: u64,
    /// Requests proxied to the origin.
    pub proxied: u64,
    /// Proxied requests that carried a session cookie or a verified token (not of an
    /// ignored agent).
    pub with_cookie: u64,
    /// Flushes of buffered activity (each one request per shard involved).
    pub flushes: u64,
}

pub fn count(f: impl FnOnce(&mut Counters)) {
    COUNTERS.with(|c| f(&mut c.borrow_mut()));
}

pub fn counters() -> Counters {
    COUNTERS.with(|c| *c.borrow())
}

fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}

impl Setup {
    /// The isolate's setup, validated once. The error names the bad var or field;
    /// it is not cached, so a fixed deployment recovers without a restart.
    pub fn load(env: &Env) -> Result<Rc<Setup>, String> {
        if let Some(s) = SETUP.with(|s| s.borrow().clone()) {
            return Ok(s);
        }
        let setup = Rc::new(Setup::parse(
            var(env, "HEADCOUNT_CONFIG").as_deref(),
            var(env, "ORIGIN").as_deref(),
            var(env, "HEADCOUNT_SHARDS").as_deref(),
            var(env, "HEADCOUNT_DEBUG").as_deref(),
        )?);
        SETUP.with(|s| *s.borrow_mut() = Some(setup.clone()));
        Ok(setup)
    }

    pub fn parse(
        config: Option<&str>,
        origin: Option<&str>,
        shards: Option<&str>,
        debug: Option<&str>,
    ) -> Result<Setup, String> {
        let mut cfg = Config::from_json(config.unwrap_or_default().as_bytes())
            .map_err(|e| format!("HEADCOUNT_CONFIG: {e}"))?;
        let origin = origin.filter(|o| !o.trim().is_empty()).ok_or(
            "invalid headcount setup: var `ORIGIN` is not set (e.g. https://app.example.com)",
        )?;
        let origin = Url::parse(origin.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                format!(
                    "invalid headcount setup: var `ORIGIN` must be an http(s) URL, got {origin:?}"
                )
            })?;
        let shards = match shards.map(str::trim).filter(|s| !s.is_empty()) {
            None => 1,
            Some(s) => s
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_SHARDS).contains(n))
                .ok_or_else(|| {
                    format!(
                        "invalid headcount setup: var `HEADCOUNT_SHARDS` must be 1..={MAX_SHARDS}, got {s:?}"
                    )
                })?,
        };
        let debug = matches!(debug.map(str::trim), Some("1" | "true"));
        if cfg.fleet.is_some() {
            return Err(
                "HEADCOUNT_CONFIG: invalid headcount config: `fleet` is for Envoy nodes and their \
                        collectors; the Worker keeps its ledger in Durable Objects"
                    .into(),
            );
        }
        let app = AppName::choose(cfg.app.as_ref(), None)
            .map_err(|e| format!("HEADCOUNT_CONFIG: {e}"))?;
        cfg.app = Some(app.clone());
        Ok(Setup {
            app,
            cfg,
            origin,
            shards,
            debug,
        })
    }
}

/// The cookie hasher: keyed by `cookie_hash_secret`, or by the secret that shard 0
/// generated once and keeps in its SQLite storage (fetched once per isolate).
pub async fn hasher(env: &Env, setup: &Setup) -> Result<Rc<CookieHasher>, String> {
    if let Some(h) = HASHER.with(|h| h.borrow().clone()) {
        return Ok(h);
    }
    let key = match &setup.cfg.cookie_hash_secret {
        Some(s) => s.as_bytes().to_vec(),
        None => {
            let reply: SecretReply = shards::call(env, &setup.app, 0, "/secret", &())
                .await
                .map_err(|e| format!("cannot read the cookie hash secret: {e}"))?;
            decode_hex(&reply.secret)
                .filter(|k| k.len() == 32)
                .ok_or("the stored cookie hash secret is malformed")?
        }
    };
    let hasher = Rc::new(CookieHasher::new(&key));
    HASHER.with(|h| *h.borrow_mut() = Some(hasher.clone()));
    Ok(hasher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(config: &str, origin: &str, shards: &str) -> String {
        match Setup::parse(Some(config), Some(origin), Some(shards), None) {
            Err(e) => e,
            Ok(_) => "(accepted)".into(),
        }
    }

    #[test]
    fn errors_name_the_var_or_field() {
        assert!(err(r#"{"active_window_seconds": "x"}"#, "http://a", "1")
            .contains("`active_window_seconds`"));
        assert!(err("{}", "", "1").contains("`ORIGIN`"));
        // The jwt section's fields, as the core names them.
        assert!(
            err(r#"{"jwt": {"hs256_secret": "short"}}"#, "http://a", "1")
                .contains("`jwt.hs256_secret`")
        );
        assert!(err(r#"{"jwt": {}}"#, "http://a", "1").contains("`jwt`"));
        assert!(err(
            r#"{"jwt": {"hs256_secret": "0123456789abcdef0123456789abcdef", "audence": "x"}}"#,
            "http://a",
            "1"
        )
        .contains("`jwt.audence`"));
        assert!(err("{}", "ftp://a", "1").contains("`ORIGIN`"));
        assert!(err("{}", "http://a", "0").contains("`HEADCOUNT_SHARDS`"));
        assert!(err("{}", "http://a", "x").contains("`HEADCOUNT_SHARDS`"));
        assert_eq!(err("", "http://127.0.0.1:5000", ""), "(accepted)");
        let s = Setup::parse(None, Some("https://a.example"), None, Some("1")).unwrap();
        assert_eq!((s.shards, s.debug), (1, true));
        assert!(s.app.is_default());
        let s = Setup::parse(Some(r#"{"app": "shop"}"#), Some("http://a"), None, None).unwrap();
        assert_eq!(s.app.as_str(), "shop");
        assert!(err(r#"{"app": "a/b"}"#, "http://a", "1").contains("`app`"));
        let fleet = r#"{"fleet": {"cluster": "c", "token": "0123456789abcdef"}, "cookie_hash_secret": "0123456789abcdef"}"#;
        assert!(err(fleet, "http://a", "1").contains("`fleet`"));
    }
}
