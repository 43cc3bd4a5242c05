//! Which app a Headcount instance counts for, and the namespace that keeps each
//! app's state apart from every other app's on the same host.
//!
//! One gateway fronts many apps, each with its own Headcount filter; Envoy gives
//! filters with the same `.wasm` and `vm_id` one shared-data space. Every key an
//! instance writes is therefore prefixed with its app (`Scoped`), its metrics carry
//! the app, and the ledger's requests name it. An app's name is its config's `app`,
//! else the name the host gives this plugin instance (Envoy's plugin `name`, which
//! Envoy documents as unique among the plugins of one VM), else `default`.

use crate::config::ConfigError;
use crate::table::{SharedStore, StoreError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;

/// A validated app name: 1 to `MAX_LEN` characters of `A-Z a-z 0-9 . _ -`, so it
/// is safe in a shared-data key, a Durable Object name, a Redis key, a Prometheus
/// label and a stat name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppName(String);

impl AppName {
    pub const MAX_LEN: usize = 64;
    /// The app of an instance that neither its config nor its host names.
    pub const DEFAULT: &'static str = "default";

    /// `name` if it is a valid app name; the error names `field`.
    pub fn parse(field: &str, name: &str) -> Result<AppName, ConfigError> {
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(AppName(name.to_string()))
        } else {
            Err(ConfigError {
                field: field.into(),
                message: format!(
                    "{name:?} is not an app name: 1 to {} characters of A-Z a-z 0-9 . _ -",
                    Self::MAX_LEN
                ),
            })
        }
    }

    pub fn default_app() -> AppName {
        AppName(Self::DEFAULT.into())
    }

    /// The app an instance counts for: `configured` (the config's `app`), else
    /// `host_name` (Envoy's plugin `name`; empty means none), else `default`. A
    /// host name that is not a valid app name is refused, naming `app`: two
    /// plugins must never fall into one namespace by a silent rewrite.
    pub fn choose(
        configured: Option<&AppName>,
        host_name: Option<&str>,
    ) -> Result<AppName, ConfigError> {
        if let Some(app) = configured {
            return Ok(app.clone());
        }
        match host_name.filter(|n| !n.is_empty()) {
            Some(name) => AppName::parse("app", name).map_err(|e| ConfigError {
                field: "app".into(),
                message: format!("not set, and the plugin name is unusable: {}", e.message),
            }),
            None => Ok(AppName::default_app()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }

    /// `key` in this app's namespace: `<app>/<key>`. No app name holds a `/`,
    /// so two apps' keys never meet.
    pub fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.0.len() + 1 + key.len());
        k.push_str(&self.0);
        k.push('/');
        k.push_str(key);
        k
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppName({})", self.0)
    }
}

impl Serialize for AppName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AppName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AppName, D::Error> {
        let s = String::deserialize(d)?;
        AppName::parse("app", &s).map_err(serde::de::Error::custom)
    }
}

/// A shared store seen through one app's namespace: every key is `app.key(..)`.
/// A host wraps its store once, and everything written through it (the session
/// table, events, history, traffic, secrets, timers' claims) is that app's alone.
/// The namespaced key is built in a buffer kept for the next call: a timer tick
/// or a flush makes several store calls, and an allocation for each showed in
/// the filter's instruction counts.
#[derive(Debug, Clone)]
pub struct Scoped<S> {
    inner: S,
    app: AppName,
    key: RefCell<String>,
}

impl<S: SharedStore> Scoped<S> {
    pub fn new(inner: S, app: AppName) -> Scoped<S> {
        let key = RefCell::new(app.key(""));
        Scoped { inner, app, key }
    }

    pub fn app(&self) -> &AppName {
        &self.app
    }

    /// Runs `f` with `key` in this app's namespace.
    fn with_key<R>(&self, key: &str, f: impl FnOnce(&str) -> R) -> R {
        // A store that called back into this one while a key is built would find
        // the buffer taken; it then gets a key of its own.
        let Ok(mut buf) = self.key.try_borrow_mut() else {
            return f(&self.app.key(key));
        };
        buf.truncate(self.app.as_str().len() + 1);
        buf.push_str(key);
        f(&buf)
    }
}

impl<S: SharedStore> SharedStore for Scoped<S> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.with_key(key, |k| self.inner.get(k))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.with_key(key, |k| self.inner.set(k, value, cas))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::table::SessionTable;

    #[test]
    fn names_are_checked_and_named_by_their_field() {
        for good in ["a", "headcount-a", "shop.prod_2", &"x".repeat(64)] {
            assert_eq!(AppName::parse("app", good).unwrap().as_str(), good);
        }
        for bad in ["", "a/b", "a b", "ä", "a\"b", "a{b}", &"x".repeat(65)] {
            let e = AppName::parse("app", bad).unwrap_err();
            assert_eq!(e.field, "app", "{bad:?}");
        }
    }

    #[test]
    fn the_config_wins_then_the_host_name_then_default() {
        let shop = AppName::parse("app", "shop").unwrap();
        assert_eq!(AppName::choose(Some(&shop), Some("x")).unwrap(), shop);
        assert_eq!(
            AppName::choose(None, Some("blog")).unwrap().as_str(),
            "blog"
        );
        assert!(AppName::choose(None, Some("")).unwrap().is_default());
        assert!(AppName::choose(None, None).unwrap().is_default());
        // An unusable plugin name is refused, not rewritten into someone's namespace.
        let e = AppName::choose(None, Some("ns/wasmplugin")).unwrap_err();
        assert_eq!(e.field, "app");
        assert!(e.message.contains("plugin name"), "{}", e.message);
    }

    #[test]
    fn two_apps_on_one_store_never_see_each_others_sessions() {
        let mem = MemoryStore::default();
        let cfg = crate::Config::default();
        let (a, b) = (
            Scoped::new(&mem, AppName::parse("app", "a").unwrap()),
            Scoped::new(&mem, AppName::parse("app", "b").unwrap()),
        );
        let s = crate::ledger::testing::session(1, 1);
        SessionTable::new(&a).insert(s.clone(), &cfg).unwrap();
        assert!(SessionTable::new(&b).sessions().unwrap().is_empty());
        assert_eq!(SessionTable::new(&a).sessions().unwrap().len(), 1);
        assert!(SessionTable::new(&b)
            .resolve(&s.cookie, 1)
            .unwrap()
            .is_none());
        // Every key written is under the app's prefix.
        assert!(
            mem.keys().iter().all(|k| k.starts_with("a/")),
            "{:?}",
            mem.keys()
        );
    }

    #[test]
    fn names_travel_as_strings_and_are_checked_on_the_way_in() {
        let shop = AppName::parse("app", "shop").unwrap();
        assert_eq!(serde_json::to_string(&shop).unwrap(), "\"shop\"");
        assert_eq!(serde_json::from_str::<AppName>("\"shop\"").unwrap(), shop);
        assert!(serde_json::from_str::<AppName>("\"a/b\"").is_err());
    }
}
