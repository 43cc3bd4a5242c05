//! State that Envoy keeps per process and shares between the worker VMs of one plugin: the
//! clock, the shared key/value store (with CAS), shared queues and the metrics store.
//!
//! Everything lives behind `Arc<Mutex<..>>` owned by one [`crate::Host`]; nothing is global, so
//! tests run in parallel without seeing each other.

use crate::abi::{status, MetricKind};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Locks a mutex, recovering the data if another test thread panicked while holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The clock the test controls, in nanoseconds since the Unix epoch.
#[derive(Clone, Debug)]
pub(crate) struct Clock(pub(crate) Arc<AtomicU64>);

impl Clock {
    pub(crate) fn nanos(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl wasmtime_wasi::HostWallClock for Clock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.nanos())
    }
}

impl wasmtime_wasi::HostMonotonicClock for Clock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.nanos()
    }
}

/// Counters about shared-data traffic, for assertions (e.g. that activity is coalesced).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedDataStats {
    /// `proxy_get_shared_data` calls.
    pub gets: u64,
    /// `proxy_set_shared_data` calls that succeeded.
    pub sets: u64,
    /// `proxy_set_shared_data` calls answered `CasMismatch` (forced ones included).
    pub cas_mismatches: u64,
    /// Of those, how many were forced by [`crate::Host::force_cas_mismatches`].
    pub forced_mismatches: u64,
}

#[derive(Default)]
pub(crate) struct SharedData {
    entries: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    cas_counter: u32,
    forced: Vec<(Vec<u8>, u32)>,
    pub(crate) stats: SharedDataStats,
}

impl SharedData {
    /// Envoy's `nextCas()`: starts at 1, skips 0 on wrap.
    fn next_cas(&mut self) -> u32 {
        self.cas_counter = self.cas_counter.wrapping_add(1);
        if self.cas_counter == 0 {
            self.cas_counter = 1;
        }
        self.cas_counter
    }

    pub(crate) fn get(&mut self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.stats.gets += 1;
        self.entries.get(key).cloned()
    }

    /// Envoy `SharedData::set`: `cas == 0` is unconditional; a non-zero `cas` must match the
    /// stored one when the key exists; a missing key is always created.
    pub(crate) fn set(&mut self, key: &[u8], value: &[u8], cas: u32) -> i32 {
        if self.entries.contains_key(key) && cas != 0 {
            let forced = self
                .forced
                .iter_mut()
                .find(|(prefix, left)| *left > 0 && key.starts_with(prefix));
            if let Some((_, left)) = forced {
                *left -= 1;
                // Another worker rewrote the key just before this set.
                let bumped = self.next_cas();
                if let Some(entry) = self.entries.get_mut(key) {
                    entry.1 = bumped;
                }
                self.stats.forced_mismatches += 1;
            }
        }
        let next = self.next_cas();
        match self.entries.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    self.stats.cas_mismatches += 1;
                    return status::CAS_MISMATCH;
                }
                *entry = (value.to_vec(), next);
            }
            None => {
                self.entries.insert(key.to_vec(), (value.to_vec(), next));
            }
        }
        self.stats.sets += 1;
        status::OK
    }

    pub(crate) fn force_mismatches(&mut self, prefix: &[u8], n: u32) {
        self.forced.push((prefix.to_vec(), n));
    }

    pub(crate) fn pending_forced(&self) -> u32 {
        self.forced.iter().map(|(_, n)| *n).sum()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|(k, (v, _))| k.len() + v.len())
            .sum()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .entries
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        keys.sort();
        keys
    }
}

/// One metric as the test reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub kind: MetricKind,
    /// Counter total or gauge value (histograms: number of samples).
    pub value: i64,
    /// Recorded samples (histograms only).
    pub samples: Vec<u64>,
}

#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) by_name: BTreeMap<String, Metric>,
}

impl Metrics {
    pub(crate) fn define(&mut self, kind: MetricKind, name: &str) {
        self.by_name.entry(name.to_owned()).or_insert(Metric {
            kind,
            value: 0,
            samples: Vec::new(),
        });
    }
}

pub(crate) struct Queue {
    pub(crate) items: VecDeque<Vec<u8>>,
    pub(crate) owner_vm: u32,
    pub(crate) owner_context: u32,
    pub(crate) name: String,
}

#[derive(Default)]
pub(crate) struct Queues {
    pub(crate) tokens: HashMap<(String, String), u32>,
    pub(crate) queues: HashMap<u32, Queue>,
    next_token: u32,
}

impl Queues {
    /// Envoy `registerQueue`: the same (vm_id, name) keeps its token and its items; the
    /// latest registration becomes the one notified.
    pub(crate) fn register(&mut self, vm_id: &str, name: &str, vm: u32, context: u32) -> u32 {
        let key = (vm_id.to_owned(), name.to_owned());
        let token = match self.tokens.get(&key) {
            Some(t) => *t,
            None => {
                self.next_token += 1;
                self.tokens.insert(key, self.next_token);
                self.next_token
            }
        };
        let q = self.queues.entry(token).or_insert_with(|| Queue {
            items: VecDeque::new(),
            owner_vm: vm,
            owner_context: context,
            name: name.to_owned(),
        });
        q.owner_vm = vm;
        q.owner_context = context;
        token
    }
}

/// Pending `proxy_on_queue_ready` notifications for one VM: (root context id, queue token).
pub(crate) type Mailbox = Arc<Mutex<VecDeque<(u32, u32)>>>;

pub(crate) struct Shared {
    pub(crate) clock: Clock,
    pub(crate) data: Mutex<SharedData>,
    pub(crate) metrics: Mutex<Metrics>,
    pub(crate) queues: Mutex<Queues>,
    pub(crate) mailboxes: Mutex<HashMap<u32, Mailbox>>,
    pub(crate) next_vm: AtomicU64,
    pub(crate) next_connection: AtomicU64,
    pub(crate) log_level: Mutex<crate::abi::LogLevel>,
}

impl Shared {
    pub(crate) fn new(start_nanos: u64) -> Self {
        Shared {
            clock: Clock(Arc::new(AtomicU64::new(start_nanos))),
            data: Mutex::new(SharedData::default()),
            metrics: Mutex::new(Metrics::default()),
            queues: Mutex::new(Queues::default()),
            mailboxes: Mutex::new(HashMap::new()),
            next_vm: AtomicU64::new(0),
            next_connection: AtomicU64::new(1),
            log_level: Mutex::new(crate::abi::LogLevel::Info),
        }
    }

    pub(crate) fn notify(&self, vm: u32, context: u32, token: u32) {
        let mailbox = lock(&self.mailboxes).get(&vm).cloned();
        if let Some(mailbox) = mailbox {
            lock(&mailbox).push_back((context, token));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_follows_envoy() {
        let mut d = SharedData::default();
        assert!(d.get(b"k").is_none());
        // A missing key is created whatever the cas.
        assert_eq!(d.set(b"k", b"1", 99), status::OK);
        let (_, cas) = d.get(b"k").unwrap();
        assert_eq!(cas, 1);
        assert_eq!(d.set(b"k", b"2", cas + 1), status::CAS_MISMATCH);
        assert_eq!(d.set(b"k", b"2", cas), status::OK);
        assert_eq!(d.set(b"k", b"3", 0), status::OK);
        let (v, cas) = d.get(b"k").unwrap();
        assert_eq!(v, b"3");
        d.force_mismatches(b"k", 2);
        assert_eq!(d.set(b"k", b"4", cas), status::CAS_MISMATCH);
        let (_, cas) = d.get(b"k").unwrap();
        assert_eq!(d.set(b"k", b"4", cas), status::CAS_MISMATCH);
        let (v, cas) = d.get(b"k").unwrap();
        assert_eq!(v, b"3", "forced mismatches leave the value alone");
        assert_eq!(d.set(b"k", b"4", cas), status::OK);
        assert_eq!(d.stats.forced_mismatches, 2);
        assert_eq!(d.stats.cas_mismatches, 3);
        assert_eq!(d.bytes(), 2);
    }
}
