//! Work an Envoy worker VM hands to the main-thread singleton, and the rules of
//! that arrangement. Envoy can run the filter's `.wasm` once more as a bootstrap
//! service (`envoy.bootstrap.wasm`, `singleton: true`, root id
//! [`SINGLETON_ROOT_ID`], the same `vm_id`): it runs on Envoy's main thread, so
//! what it does never waits between a worker's requests. While it beats, the
//! workers only buffer: once per flush interval each hands its activity and
//! traffic to the singleton's queue ([`Handoff`]); the singleton writes them,
//! sweeps, counts, sets gauges, keeps history and, while someone reads it, a
//! stats snapshot. Without it (Istio's `WasmPlugin` cannot declare one) the
//! workers do all of that themselves, as before.

use crate::activity::Pending;
use crate::app::AppName;
use crate::session::CookieHash;
use crate::stats;
use crate::traffic::TrafficDelta;
use serde::{Deserialize, Serialize};

/// The bootstrap service's `root_id`: the same `.wasm` runs as the singleton.
pub const SINGLETON_ROOT_ID: &str = "headcount_singleton";
/// The singleton's shared queue (per `vm_id`, as shared data is).
pub const QUEUE_NAME: &str = "headcount.v1.singleton";
/// Outside every app's namespace (app keys hold a `/`): when the singleton last
/// beat, Unix ms, little-endian.
pub const BEAT_KEY: &str = "headcount.v1.singleton.beat";
/// Outside every app's namespace: the apps whose workers hand work over.
pub const APPS_KEY: &str = "headcount.v1.apps";
/// In an app's namespace: its plugin configuration as Envoy gave it.
pub const CONFIG_KEY: &str = "headcount.v1.config";
/// In an app's namespace: the singleton's latest stats report ([`Snapshot`]).
pub const SNAPSHOT_KEY: &str = "headcount.v1.stats.snapshot";
/// In an app's namespace: when a reader last asked for a snapshot.
pub const WANTED_KEY: &str = "headcount.v1.stats.wanted";

/// The singleton's tick: its beat, and how soon it looks at what is due.
pub const BEAT_MS: u64 = 250;
/// A beat older than this means no singleton (or a stuck one): workers then do
/// the work themselves, so nothing waits on it for longer than this.
pub const ALIVE_MS: u64 = 2_000;
/// How often the singleton renews a snapshot somebody reads.
pub const SNAPSHOT_EVERY_MS: u64 = 1_000;
/// The oldest snapshot a reader is given; older, it gets an exact report.
pub const SNAPSHOT_MAX_AGE_MS: u64 = 2_000;
/// The singleton keeps making snapshots this long after the last read.
pub const WANTED_FOR_MS: u64 = 30_000;

/// The singleton's own configuration: empty or `{}` (it follows what the
/// apps' filters say); anything else is refused, naming what it got.
pub fn check_singleton_config(raw: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(raw);
    let empty = text.trim().is_empty()
        || serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
            .is_ok_and(|m| m.is_empty());
    if empty {
        return Ok(());
    }
    Err(format!(
        "the singleton (root_id `{SINGLETON_ROOT_ID}`) takes no configuration; got `{}`",
        text.trim()
    ))
}

/// Whether a singleton that last beat at `beat` (none: never) is alive at `now`.
pub fn alive(beat: Option<u64>, now: u64) -> bool {
    beat.is_some_and(|b| now.saturating_sub(b) <= ALIVE_MS)
}

/// A little-endian Unix-ms value as stored (a short value reads as its bytes).
pub fn read_ms(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.iter_mut().zip(bytes).for_each(|(d, s)| *d = *s);
    u64::from_le_bytes(b)
}

/// One worker's flush interval of work, for the singleton to apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub app: AppName,
    /// Requests per cookie, not yet settled (known session or anonymous).
    pub pending: Vec<(CookieHash, Pending)>,
    /// Requests already settled, and the per-second figures.
    pub traffic: TrafficDelta,
}

impl Handoff {
    pub fn encode(&self) -> Option<Vec<u8>> {
        postcard::to_allocvec(self).ok()
    }

    pub fn decode(bytes: &[u8]) -> Result<Handoff, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("bad handoff: {e}"))
    }
}

/// The apps list with `app` added, or `None` when it is there already. A list
/// that does not decode is replaced (the workers write it again at start).
pub fn register(list: Option<&[u8]>, app: &AppName) -> Option<Vec<u8>> {
    let mut apps = list.map(apps).unwrap_or_default();
    if apps.contains(app) {
        return None;
    }
    apps.push(app.clone());
    postcard::to_allocvec(&apps).ok()
}

/// The apps a stored list names (none, if it does not decode).
pub fn apps(list: &[u8]) -> Vec<AppName> {
    postcard::from_bytes(list).unwrap_or_default()
}

/// A stored snapshot: when it was made, then the report as the stats route
/// writes it.
pub fn encode_snapshot(at: u64, report: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + report.len());
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(report);
    out
}

/// The report of a stored snapshot, if it is fresh enough to answer with at `now`.
pub fn usable_snapshot(stored: &[u8], now: u64) -> Option<&[u8]> {
    let at = read_ms(stored.get(..8)?);
    (now.saturating_sub(at) <= SNAPSHOT_MAX_AGE_MS).then(|| stored.get(8..))?
}

/// Whether the singleton should make a new snapshot at `now`: somebody read one
/// within `WANTED_FOR_MS`, and the last is `SNAPSHOT_EVERY_MS` old.
pub fn snapshot_due(made: Option<u64>, wanted: Option<u64>, now: u64) -> bool {
    let read = wanted.is_some_and(|w| now.saturating_sub(w) <= WANTED_FOR_MS);
    read && made.is_none_or(|m| now.saturating_sub(m) >= SNAPSHOT_EVERY_MS)
}

/// Whether a stats request may be answered from the snapshot: it asks so
/// (`?snapshot=1`, as the dashboard does) and lists the default number of
/// sessions. Everyone else gets an exact report.
pub fn accepts_snapshot(path: &[u8]) -> bool {
    crate::gateway::query_param(path, "snapshot") == Some(1)
        && stats::listed_limit(path) == stats::DEFAULT_LISTED
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> AppName {
        AppName::parse("app", name).unwrap()
    }

    #[test]
    fn the_singleton_takes_an_empty_configuration_only() {
        assert!(check_singleton_config(b"").is_ok());
        assert!(check_singleton_config(b" {} ").is_ok());
        let err = check_singleton_config(br#"{"admin_token": "x"}"#).unwrap_err();
        assert!(err.contains("takes no configuration") && err.contains("admin_token"));
        assert!(check_singleton_config(b"[]").is_err());
    }

    #[test]
    fn a_singleton_is_alive_while_it_beats() {
        assert!(!alive(None, 10_000));
        assert!(alive(Some(10_000), 10_000 + ALIVE_MS));
        assert!(!alive(Some(10_000), 10_001 + ALIVE_MS));
        // A beat from a clock slightly ahead is alive.
        assert!(alive(Some(10_100), 10_000));
    }

    #[test]
    fn a_handoff_round_trips_and_refuses_garbage() {
        let mut traffic = TrafficDelta::default();
        traffic.record(5_000, Some(120));
        traffic.anonymous = 3;
        let h = Handoff {
            app: app("shop"),
            pending: vec![(CookieHash([9; 16]), Pending::new(5_000, 2))],
            traffic,
        };
        let bytes = h.encode().unwrap();
        assert_eq!(Handoff::decode(&bytes).unwrap(), h);
        assert!(Handoff::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Handoff::decode(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn apps_register_once() {
        let list = register(None, &app("shop")).unwrap();
        assert_eq!(register(Some(&list), &app("shop")), None);
        let two = register(Some(&list), &app("blog")).unwrap();
        assert_eq!(apps(&two), vec![app("shop"), app("blog")]);
        // A damaged list is replaced, not kept.
        assert_eq!(
            apps(&register(Some(b"\xff"), &app("blog")).unwrap()),
            vec![app("blog")]
        );
    }

    #[test]
    fn a_snapshot_answers_only_while_fresh() {
        let stored = encode_snapshot(1_000, b"{\"x\":1}");
        assert_eq!(usable_snapshot(&stored, 1_000), Some(&b"{\"x\":1}"[..]));
        assert_eq!(
            usable_snapshot(&stored, 1_000 + SNAPSHOT_MAX_AGE_MS),
            Some(&b"{\"x\":1}"[..])
        );
        assert_eq!(usable_snapshot(&stored, 1_001 + SNAPSHOT_MAX_AGE_MS), None);
        assert_eq!(usable_snapshot(b"short", 0), None);
    }

    #[test]
    fn snapshots_are_made_only_while_read() {
        assert!(!snapshot_due(None, None, 50_000));
        assert!(snapshot_due(None, Some(49_000), 50_000));
        assert!(!snapshot_due(Some(49_500), Some(49_000), 50_000));
        assert!(snapshot_due(Some(49_000), Some(49_000), 50_000));
        assert!(!snapshot_due(
            Some(0),
            Some(50_000 - WANTED_FOR_MS - 1),
            50_000
        ));
    }

    #[test]
    fn only_a_default_listing_that_asks_takes_a_snapshot() {
        assert!(accepts_snapshot(b"/__headcount/stats?snapshot=1"));
        assert!(!accepts_snapshot(b"/__headcount/stats"));
        assert!(!accepts_snapshot(b"/__headcount/stats?snapshot=0"));
        assert!(!accepts_snapshot(b"/__headcount/stats?snapshot=1&limit=5"));
    }
}
