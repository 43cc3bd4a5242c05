//! The Envoy side of the boundary: every host call goes through `hostcalls`
//! (Result-returning) and host statuses become core types or logged errors here.

use headcount_core::table::{SharedStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};
use std::time::UNIX_EPOCH;

/// CAS token meaning "only if the key does not exist yet": Envoy creates a missing
/// key whatever the token, and no live key carries this one in practice.
const CREATE_ONLY: u32 = u32::MAX;

/// Envoy's shared data, as the core's `SharedStore`.
pub struct EnvoyStore;

impl SharedStore for EnvoyStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((_, None)) => Ok(None),
            Ok((value, Some(cas))) => Ok(Some((value.unwrap_or_default(), cas))),
            Err(s) => Err(StoreError::Host(format!("get `{key}`: {s:?}"))),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), Some(cas.unwrap_or(CREATE_ONLY))) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(s) => Err(StoreError::Host(format!("set `{key}`: {s:?}"))),
        }
    }
}

pub fn log(level: LogLevel, message: &str) {
    // Nothing useful can be done if logging itself fails.
    let _ = hostcalls::log(level, message);
}

pub fn debug(message: &str) {
    log(LogLevel::Debug, message);
}

pub fn info(message: &str) {
    log(LogLevel::Info, message);
}

pub fn warn(message: &str) {
    log(LogLevel::Warn, message);
}

pub fn error(message: &str) {
    log(LogLevel::Error, message);
}

/// Host time in Unix milliseconds and microseconds (0 if the host refuses).
pub fn now_us() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// One header's raw bytes; header values are attacker-controlled and may not be UTF-8.
pub fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(map, name).ok().flatten()
}

/// All values of a header (e.g. every `set-cookie`). Asks for the single value
/// first: most responses have none, and then the whole map is never copied.
pub fn header_all(map: MapType, name: &str) -> Vec<Vec<u8>> {
    if header(map, name).is_none() {
        return Vec::new();
    }
    hostcalls::get_map_bytes(map)
        .map(|pairs| {
            pairs
                .into_iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
                .collect()
        })
        .unwrap_or_default()
}

pub fn remove_header(map: MapType, name: &str) {
    if let Err(s) = hostcalls::remove_map_value(map, name) {
        warn(&format!("could not remove header `{name}`: {s:?}"));
    }
}

pub fn body(kind: BufferType, size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(kind, 0, size).ok().flatten()
}

pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// Answers the stream from the plugin; the request never reaches the upstream.
pub fn respond(status: u32, content_type: &str, body: &[u8]) {
    let headers = vec![
        ("content-type", content_type),
        ("cache-control", "no-store"),
    ];
    if let Err(s) = hostcalls::send_http_response(status, headers, Some(body)) {
        error(&format!("local response failed: {s:?}"));
    }
}

pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    match hostcalls::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(s) => {
            warn(&format!("metric `{name}` unavailable: {s:?}"));
            None
        }
    }
}

pub fn set_gauge(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = hostcalls::record_metric(id, value);
    }
}

pub fn add_counter(id: Option<u32>, by: u64) {
    if let (Some(id), Ok(by)) = (id, i64::try_from(by)) {
        if by > 0 {
            let _ = hostcalls::increment_metric(id, by);
        }
    }
}

/// 16 bytes from the host's entropy (WASI `random_get`).
pub fn random16() -> Option<[u8; 16]> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).ok().map(|()| b)
}
