//! The Envoy side of the boundary: every host call goes through `hostcalls`
//! (Result-returning) and host statuses become core types or logged errors here.

use headcount_core::table::{SharedStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

/// CAS token meaning "only if the key does not exist yet": Envoy creates a missing
/// key whatever the token, and no live key carries this one in practice.
const CREATE_ONLY: u32 = u32::MAX;

/// Envoy's shared data, as the core's `SharedStore`: one space per `vm_id`, which
/// the plugins of several apps may share. Only `app_store` makes one, so every
/// read and write goes through an app's namespace.
#[derive(Debug, Clone, Copy)]
pub struct EnvoyStore {
    _only_through_app_store: (),
}

/// Shared data as `app` sees it: every key under its namespace.
pub fn app_store(app: headcount_core::AppName) -> headcount_core::Scoped<EnvoyStore> {
    headcount_core::Scoped::new(
        EnvoyStore {
            _only_through_app_store: (),
        },
        app,
    )
}

/// Shared data outside every app's namespace: only the keys by which worker VMs
/// and the main-thread singleton find each other (`handoff::BEAT_KEY`,
/// `handoff::APPS_KEY`), which hold no `/` and so meet no app's key.
pub fn meeting_store() -> EnvoyStore {
    EnvoyStore {
        _only_through_app_store: (),
    }
}

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

/// Host time in Unix microseconds (0 if the host refuses). Through the raw import:
/// the SDK's `get_current_time` panics on a bad status, and its `SystemTime` detour
/// (u128 arithmetic in Wasm) was a tenth of an anonymous request's hook.
pub fn now_us() -> u64 {
    let mut ns: u64 = 0;
    // SAFETY: the host writes one u64 through the pointer it is given.
    if unsafe { proxy_get_current_time_nanoseconds(&mut ns) } == Status::Ok as u32 {
        ns / 1000
    } else {
        0
    }
}

pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// A whole header map, read with one hostcall (`proxy_get_header_map_pairs`).
/// Reading headers one by one costs Envoy a hostcall plus a call back into the
/// VM (to allocate the copy) per header present; the whole map is one of each.
/// The host's serialized map is kept as it came and indexed once (the SDK's
/// `get_map_bytes` would allocate two vectors per header). Values are raw
/// bytes: they are attacker-controlled and may not be UTF-8.
pub struct Headers {
    data: Vec<u8>,
    /// (name, value) byte ranges into `data`.
    pairs: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

#[link(wasm_import_module = "env")]
extern "C" {
    // Statuses as plain u32: a value outside `Status` would be undefined behaviour.
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

impl Headers {
    pub fn read(map: MapType) -> Headers {
        let mut ptr: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer to `size` bytes it allocated through
        // the SDK's `proxy_on_memory_allocate` (a `Vec<u8>` of capacity `size`,
        // leaked), which this takes ownership of exactly once, as the SDK does.
        let data = unsafe {
            let status = proxy_get_header_map_pairs(map, &mut ptr, &mut size);
            if status == Status::Ok as u32 && !ptr.is_null() {
                Vec::from_raw_parts(ptr, size, size)
            } else {
                Vec::new()
            }
        };
        let pairs = index_pairs(&data).unwrap_or_default();
        Headers { data, pairs }
    }

    fn values<'a>(&'a self, name: &'a str) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'a {
        self.pairs.iter().filter_map(move |(k, v)| {
            let key = self.data.get(k.clone())?;
            key.eq_ignore_ascii_case(name.as_bytes())
                .then(|| self.data.get(v.clone()))
                .flatten()
        })
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let (_, v) = self.pairs.iter().find(|(k, _)| {
            self.data
                .get(k.clone())
                .is_some_and(|key| key.eq_ignore_ascii_case(name.as_bytes()))
        })?;
        self.data.get(v.clone())
    }

    /// Every value of `name` (e.g. each `set-cookie`), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'a {
        self.values(name)
    }

    /// The `cookie` header; several (HTTP/2 may split it) are joined with "; ".
    pub fn cookie(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        let mut values = self.values("cookie");
        let first = values.next()?;
        let Some(second) = values.next() else {
            return Some(std::borrow::Cow::Borrowed(first));
        };
        let mut joined = first.to_vec();
        for v in std::iter::once(second).chain(values) {
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(v);
        }
        Some(std::borrow::Cow::Owned(joined))
    }
}

/// A request's headers, read as needed: the few every request may need
/// (`TARGETED`) one hostcall each, the whole map (`Headers`) only when a name
/// outside them is asked for. An anonymous request (no cookie) then costs two
/// small reads (`:path`, and `cookie`, absent: no copy into the VM) instead of
/// copying and indexing the whole map: 3.3k -> 0.6k Wasm instructions for its
/// header hook in the harness. Once the map is read, every name comes from it.
pub struct RequestHeaders {
    full: std::cell::OnceCell<Headers>,
    one: [std::cell::OnceCell<Option<Vec<u8>>>; TARGETED.len()],
}

/// Read one by one; every other name reads the whole map.
const TARGETED: [&str; 4] = [":path", ":method", "cookie", "user-agent"];

impl RequestHeaders {
    pub fn new() -> RequestHeaders {
        RequestHeaders {
            full: std::cell::OnceCell::new(),
            one: Default::default(),
        }
    }

    /// The whole map (read once).
    fn full(&self) -> &Headers {
        self.full
            .get_or_init(|| Headers::read(MapType::HttpRequestHeaders))
    }

    /// The first value of `TARGETED[i]`.
    fn targeted(&self, i: usize) -> Option<&[u8]> {
        let name = TARGETED.get(i)?;
        if let Some(full) = self.full.get() {
            return full.get(name);
        }
        self.one
            .get(i)?
            .get_or_init(|| {
                hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
                    .ok()
                    .flatten()
            })
            .as_deref()
    }

    pub fn path(&self) -> Option<&[u8]> {
        self.targeted(0)
    }

    pub fn method(&self) -> Option<&[u8]> {
        self.targeted(1)
    }

    pub fn user_agent(&self) -> Option<&[u8]> {
        self.targeted(3)
    }

    /// The first value of `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        match TARGETED.iter().position(|t| *t == name) {
            Some(i) => self.targeted(i),
            None => self.full().get(name),
        }
    }

    /// The `cookie` header: the first one, unless the whole map was read
    /// (then all of them joined, as `Headers::cookie`).
    pub fn cookie(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        match self.full.get() {
            Some(full) => full.cookie(),
            None => self.targeted(2).map(std::borrow::Cow::Borrowed),
        }
    }

    /// Every `cookie` header joined: reads the whole map if there is a cookie
    /// at all (HTTP/2 may send one header per cookie).
    pub fn all_cookies(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        self.targeted(2)?;
        self.full().cookie()
    }
}

type PairRanges = Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>;

/// proxy-wasm's map serialization: a u32 count, then a (name length, value
/// length) u32 pair per header, then each name and value followed by a NUL.
/// `None` if the host's bytes do not add up.
fn index_pairs(data: &[u8]) -> Option<PairRanges> {
    let u32_at = |at: usize| -> Option<usize> {
        let b: [u8; 4] = data.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    if data.is_empty() {
        return Some(Vec::new());
    }
    let count = u32_at(0)?;
    let mut p = count.checked_mul(8)?.checked_add(4)?;
    let mut pairs = Vec::with_capacity(count.min(256));
    for n in 0..count {
        let (k_len, v_len) = (u32_at(4 + n * 8)?, u32_at(8 + n * 8)?);
        let k = p..p.checked_add(k_len)?;
        p = k.end.checked_add(1)?;
        let v = p..p.checked_add(v_len)?;
        p = v.end.checked_add(1)?;
        if v.end > data.len() {
            return None;
        }
        pairs.push((k, v));
    }
    Some(pairs)
}

/// Whether `map` has a header `name`: one hostcall, and no copy into the VM when
/// it is absent (the common case this is for).
pub fn has_header(map: MapType, name: &str) -> bool {
    matches!(hostcalls::get_map_value_bytes(map, name), Ok(Some(_)))
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

/// Writes `value` at `key` whatever is there (a CAS retry or two if VMs race).
pub fn overwrite(store: &impl SharedStore, key: &str, value: &[u8]) -> Result<(), StoreError> {
    let mut last = StoreError::CasMismatch;
    for _ in 0..4 {
        let cas = store.get(key)?.map(|(_, cas)| cas);
        match store.set(key, value, cas) {
            Err(StoreError::CasMismatch) => last = StoreError::CasMismatch,
            other => return other,
        }
    }
    Err(last)
}

/// Answers the stream from the plugin; the request never reaches the upstream.
pub fn respond(answer: &headcount_core::answer::Answer) {
    let extra = answer.headers();
    let headers: Vec<(&str, &str)> = std::iter::once(("content-type", answer.content_type))
        .chain(extra.iter().map(|(n, v)| (*n, v.as_str())))
        .collect();
    let status = u32::from(answer.status);
    if let Err(s) = hostcalls::send_http_response(status, headers, Some(&answer.body)) {
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
