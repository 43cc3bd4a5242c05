//! Proxy-Wasm ABI v0.2.1 constants and the serialized map format, as the host sees them.
//!
//! Values follow the spec (`proxy-wasm/spec`, `abi-versions/v0.2.1`) and the Rust SDK 0.2.5
//! (`src/types.rs`).

/// `proxy_status_t`.
pub mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const SERIALIZATION_FAILURE: i32 = 3;
    pub const PARSE_FAILURE: i32 = 4;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// `proxy_action_t` as returned by the stream callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
    /// Any other value; Envoy treats values above its known statuses as "stop all".
    Other(i32),
}

impl Action {
    pub fn from_raw(raw: i32) -> Self {
        match raw {
            0 => Action::Continue,
            1 => Action::Pause,
            other => Action::Other(other),
        }
    }

    pub fn is_continue(self) -> bool {
        self == Action::Continue
    }
}

/// `proxy_log_level_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        }
    }
}

/// `proxy_buffer_type_t`.
pub mod buffer {
    pub const HTTP_REQUEST_BODY: i32 = 0;
    pub const HTTP_RESPONSE_BODY: i32 = 1;
    pub const DOWNSTREAM_DATA: i32 = 2;
    pub const UPSTREAM_DATA: i32 = 3;
    pub const HTTP_CALL_RESPONSE_BODY: i32 = 4;
    pub const GRPC_RECEIVE_BUFFER: i32 = 5;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
    pub const CALL_DATA: i32 = 8;
}

/// `proxy_map_type_t`.
pub mod map {
    pub const HTTP_REQUEST_HEADERS: i32 = 0;
    pub const HTTP_REQUEST_TRAILERS: i32 = 1;
    pub const HTTP_RESPONSE_HEADERS: i32 = 2;
    pub const HTTP_RESPONSE_TRAILERS: i32 = 3;
    pub const GRPC_RECEIVE_INITIAL_METADATA: i32 = 4;
    pub const GRPC_RECEIVE_TRAILING_METADATA: i32 = 5;
    pub const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
    pub const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;
}

/// `proxy_stream_type_t`.
pub mod stream {
    pub const HTTP_REQUEST: i32 = 0;
    pub const HTTP_RESPONSE: i32 = 1;
    pub const DOWNSTREAM: i32 = 2;
    pub const UPSTREAM: i32 = 3;
}

/// `proxy_metric_type_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn from_raw(raw: i32) -> Option<Self> {
        match raw {
            0 => Some(MetricKind::Counter),
            1 => Some(MetricKind::Gauge),
            2 => Some(MetricKind::Histogram),
            _ => None,
        }
    }

    /// Envoy keeps the metric type in the low two bits of the metric id.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::from_raw((id & 0x3) as i32)
    }

    pub fn tag(self) -> u32 {
        match self {
            MetricKind::Counter => 0,
            MetricKind::Gauge => 1,
            MetricKind::Histogram => 2,
        }
    }
}

/// Serializes header pairs the way the host hands them to the plugin:
/// `u32 count`, then `count` pairs of `u32 key_len, u32 value_len`, then each key and value
/// followed by a NUL byte. All integers little-endian.
pub fn serialize_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut size = 4;
    for (k, v) in pairs {
        size += 8 + k.as_ref().len() + v.as_ref().len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Parses a serialized map sent by the plugin. An empty buffer (or a single NUL byte) is an
/// empty map; a truncated or inconsistent buffer yields `None` (Envoy treats it as empty).
pub fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.len() < 4 {
        return Some(Vec::new());
    }
    let count = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let header_end = 4usize.checked_add(count.checked_mul(8)?)?;
    if header_end > bytes.len() {
        return None;
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        let k = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        sizes.push((k, v));
    }
    let mut pos = header_end;
    let mut out = Vec::with_capacity(count);
    for (k, v) in sizes {
        let key = bytes.get(pos..pos.checked_add(k)?)?.to_vec();
        pos = pos.checked_add(k)?.checked_add(1)?;
        let value = bytes.get(pos..pos.checked_add(v)?)?.to_vec();
        pos = pos.checked_add(v)?.checked_add(1)?;
        out.push((key, value));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trip_matches_the_sdk_layout() {
        // The example from the SDK's own tests (hostcalls.rs, SERIALIZED_MAP).
        let pairs = [
            (":method", "GET"),
            (":path", "/bytes/1"),
            (":authority", "httpbin.org"),
            ("Powered-By", "proxy-wasm"),
        ];
        let bytes = serialize_pairs(&pairs);
        assert_eq!(&bytes[0..4], &[4, 0, 0, 0]);
        assert_eq!(&bytes[4..12], &[7, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&bytes[36..44], b":method\0");
        let back = deserialize_pairs(&bytes).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back[3].0, b"Powered-By");
        assert_eq!(back[3].1, b"proxy-wasm");
    }

    #[test]
    fn truncated_maps_are_rejected() {
        assert_eq!(deserialize_pairs(&[]).unwrap().len(), 0);
        assert_eq!(deserialize_pairs(&[0]).unwrap().len(), 0);
        assert!(deserialize_pairs(&[1, 0, 0, 0, 5, 0, 0, 0]).is_none());
        assert!(deserialize_pairs(&[1, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, b'a']).is_none());
    }
}
