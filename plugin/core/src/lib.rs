//! Headcount's host-free engine: configuration, identity extraction, the session
//! table, traffic and stats. Synchronous; every function takes time (`now`, Unix
//! milliseconds) as an argument, so each rule is unit-testable natively.
//!
//! Hosts (the proxy-wasm filter, the Cloudflare Worker) supply bytes, time,
//! randomness and a store: Envoy's shared data (`table::SharedStore`, the CAS
//! table) or a ledger shard's rows (`ledger::LedgerStore`). The rules that
//! change sessions live here; what still sits in the hosts is tracked in
//! CONTRIBUTING.md ("One engine").
#![forbid(unsafe_code)]

pub mod activity;
pub mod agent;
pub mod answer;
pub mod app;
pub mod bearer;
pub mod config;
pub mod cookie_cache;
pub mod device;
pub mod events;
pub mod fleet;
pub mod flow;
pub mod gateway;
pub mod handoff;
pub mod history;
pub mod identity;
pub mod ids;
pub mod jwt;
pub mod ledger;
pub mod memory;
pub mod prometheus;
pub mod record;
pub mod session;
pub mod snapshot;
pub mod stats;
pub mod table;
pub mod traffic;
pub mod typed;
pub mod whoami;

pub use app::{AppName, Scoped};
pub use config::{Config, ConfigError};
pub use cookie_cache::CookieCache;
pub use session::{CookieHash, CookieHasher, Session};
pub use table::{SessionTable, SharedStore, StoreError, TableError};
