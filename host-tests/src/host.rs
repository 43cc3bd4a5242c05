//! [`Host`]: what one Envoy process shares between the worker VMs of the filter.

use crate::abi::LogLevel;
use crate::engine::{self, Compiled};
use crate::error::Error;
use crate::shared::{lock, Metric, Shared, SharedDataStats};
use crate::vm::{Vm, VmInner, VmOptions};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2026-11-28T10:00:00Z: where every host's clock starts, so timestamps are reproducible.
pub const START_UNIX_SECONDS: u64 = 1_795_860_000;

enum Source {
    Default,
    Compiled(Arc<Compiled>),
}

/// The shared side of an Envoy process: clock, shared data, queues, metrics. Create VMs of
/// the filter from it with [`Host::vm`]; they all see the same shared state, like Envoy's
/// worker threads. Clones refer to the same host.
#[derive(Clone)]
pub struct Host {
    shared: Arc<Shared>,
    source: Arc<Source>,
    vms: Arc<Mutex<Vec<Weak<Mutex<VmInner>>>>>,
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

impl Host {
    /// A host for the built filter (see [`crate::default_module_path`]). The module is loaded
    /// on the first [`Host::vm`] call.
    pub fn new() -> Self {
        Self::with_source(Source::Default)
    }

    /// A host for another module (binary, or text format when wasmtime's `wat` feature is on).
    pub fn with_module_bytes(bytes: impl AsRef<[u8]>) -> Result<Self, Error> {
        let compiled = engine::compile(bytes.as_ref())?;
        Ok(Self::with_source(Source::Compiled(compiled)))
    }

    fn with_source(source: Source) -> Self {
        Host {
            shared: Arc::new(Shared::new(START_UNIX_SECONDS * 1_000_000_000)),
            source: Arc::new(source),
            vms: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Starts a VM with this plugin configuration (JSON text) and the default VM options.
    pub fn vm(&self, plugin_config: &str) -> Result<Vm, Error> {
        self.vm_with(VmOptions {
            plugin_config: plugin_config.as_bytes().to_vec(),
            ..VmOptions::default()
        })
    }

    /// Starts a VM: instantiate, `_initialize`/`_start`, root context, `proxy_on_vm_start`,
    /// `proxy_on_configure`.
    pub fn vm_with(&self, opts: VmOptions) -> Result<Vm, Error> {
        let compiled = match &*self.source {
            Source::Default => engine::default_compiled()?,
            Source::Compiled(c) => c.clone(),
        };
        let vm = Vm::start(self.shared.clone(), &compiled, &opts)?;
        lock(&self.vms).push(vm.weak());
        Ok(vm)
    }

    fn live_vms(&self) -> Vec<Arc<Mutex<VmInner>>> {
        let mut vms = lock(&self.vms);
        vms.retain(|w| w.strong_count() > 0);
        vms.iter().filter_map(Weak::upgrade).collect()
    }

    // ---- clock ---------------------------------------------------------------------------

    /// Current host time (what `proxy_get_current_time_nanoseconds` and WASI clocks return).
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.shared.clock.nanos())
    }

    pub fn now_nanos(&self) -> u64 {
        self.shared.clock.nanos()
    }

    pub fn set_time(&self, t: SystemTime) {
        let nanos = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.shared
            .clock
            .0
            .store(nanos, std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves the clock forward (no tick is fired; see [`Host::tick_all`]).
    pub fn advance(&self, d: Duration) {
        self.shared
            .clock
            .0
            .fetch_add(d.as_nanos() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// Fires one tick on every live VM that asked for ticks; returns how many ticked.
    pub fn tick_all(&self) -> Result<usize, Error> {
        let mut n = 0;
        for vm in self.live_vms() {
            if Vm::tick_inner(&vm)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// [`Host::advance`] then [`Host::tick_all`].
    pub fn advance_and_tick(&self, d: Duration) -> Result<usize, Error> {
        self.advance(d);
        self.tick_all()
    }

    /// Delivers pending `proxy_on_queue_ready` notifications on every VM.
    pub fn pump(&self) -> Result<usize, Error> {
        let mut n = 0;
        for vm in self.live_vms() {
            n += Vm::deliver_inner(&vm)?;
        }
        Ok(n)
    }

    /// The level `proxy_get_log_level` reports (default info, like Envoy). Logging itself is
    /// captured at every level.
    pub fn set_log_level(&self, level: LogLevel) {
        *lock(&self.shared.log_level) = level;
    }

    // ---- shared data ---------------------------------------------------------------------

    /// Total bytes of keys and values in shared data.
    pub fn shared_data_bytes(&self) -> usize {
        lock(&self.shared.data).bytes()
    }

    /// Number of shared-data keys.
    pub fn shared_data_len(&self) -> usize {
        lock(&self.shared.data).len()
    }

    /// Every shared-data key (lossy UTF-8), sorted.
    pub fn shared_data_keys(&self) -> Vec<String> {
        lock(&self.shared.data).keys()
    }

    /// A key's value and CAS, without counting as a plugin read.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let mut data = lock(&self.shared.data);
        let stats = data.stats;
        let found = data.get(key.as_bytes());
        data.stats = stats;
        found
    }

    /// Writes a key unconditionally, as another process would.
    pub fn set_shared_data(&self, key: &str, value: &[u8]) {
        let mut data = lock(&self.shared.data);
        let stats = data.stats;
        data.set(key.as_bytes(), value, 0);
        data.stats = stats;
    }

    /// Makes the next `n` conditional (`cas != 0`) sets of existing keys starting with
    /// `key_prefix` fail with `CasMismatch`: just before each, the host bumps the key's CAS as
    /// if another worker had rewritten it (the value is left alone). Use `""` for every key.
    pub fn force_cas_mismatches(&self, key_prefix: &str, n: u32) {
        lock(&self.shared.data).force_mismatches(key_prefix.as_bytes(), n);
    }

    /// Forced mismatches not yet consumed.
    pub fn pending_forced_mismatches(&self) -> u32 {
        lock(&self.shared.data).pending_forced()
    }

    pub fn shared_data_stats(&self) -> SharedDataStats {
        lock(&self.shared.data).stats
    }

    /// Items waiting in the named queue (of the default vm id).
    pub fn queue_len(&self, name: &str) -> usize {
        let queues = lock(&self.shared.queues);
        queues
            .queues
            .values()
            .filter(|q| q.name == name)
            .map(|q| q.items.len())
            .sum()
    }

    // ---- metrics -------------------------------------------------------------------------

    /// A counter's total, a gauge's value, or a histogram's sample count, by the name the
    /// plugin defined.
    pub fn metric(&self, name: &str) -> Option<i64> {
        lock(&self.shared.metrics)
            .by_name
            .get(name)
            .map(|m| m.value)
    }

    pub fn metric_full(&self, name: &str) -> Option<Metric> {
        lock(&self.shared.metrics).by_name.get(name).cloned()
    }

    /// Every metric name, sorted.
    pub fn metric_names(&self) -> Vec<String> {
        lock(&self.shared.metrics).by_name.keys().cloned().collect()
    }
}
