//! Headcount as a proxy-wasm HTTP filter. A thin adapter: it reads bytes from the
//! host, asks `headcount-core` what they mean and writes the answer to shared data.

mod activity;
mod admin;
mod fleet;
mod fleet_admin;
mod host;
mod http;
mod singleton;
mod vm;
mod whoami;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::rc::Rc;

proxy_wasm::main! {{
    std::panic::set_hook(Box::new(|info| host::log(LogLevel::Critical, &format!("{info}"))));
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root { id, vm: None, singleton: None }) });
}}

/// One per VM (Envoy worker thread): holds the validated config and this VM's
/// not-yet-flushed activity.
struct Root {
    id: u32,
    vm: Option<Rc<vm::Vm>>,
    /// Set instead of `vm` when this root is the main-thread singleton.
    singleton: Option<singleton::Singleton>,
}

impl Root {
    /// Root context `on_configure` of the bootstrap service (root id
    /// `handoff::SINGLETON_ROOT_ID`): registers its queue and beats every
    /// `handoff::BEAT_MS`.
    fn configure_singleton(&mut self, raw: &[u8]) -> bool {
        match singleton::Singleton::configure(raw) {
            Ok(s) => {
                let beat = std::time::Duration::from_millis(headcount_core::handoff::BEAT_MS);
                if let Err(s) = proxy_wasm::hostcalls::set_tick_period(beat) {
                    host::error(&format!("singleton: no tick ({s:?})"));
                    return false;
                }
                self.singleton = Some(s);
                true
            }
            Err(message) => {
                host::error(&message);
                false
            }
        }
    }
}

impl Context for Root {
    /// Runs when the app answers a `whoami` call this root context sent (or the
    /// call failed or timed out): names the session (`whoami::answered`).
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(vm) = &self.vm {
            let now = host::now_ms();
            let fleet = vm.fleet.as_ref();
            match fleet.and_then(|f| Some((f, f.answered(token_id, body_size, now)?))) {
                Some((f, missed)) => whoami::missed(vm, f, missed, now),
                None => whoami::answered(vm, token_id, body_size, now),
            }
        }
    }
}

impl RootContext for Root {
    /// Runs when Envoy (re)loads the plugin config. Returns false, with a log line
    /// naming the field, when the config is invalid: Envoy then refuses the filter.
    fn on_configure(&mut self, size: usize) -> bool {
        let raw = host::body(proxy_wasm::types::BufferType::PluginConfiguration, size)
            .unwrap_or_default();
        let root_id = host::property(&["plugin_root_id"]).unwrap_or_default();
        if root_id == headcount_core::handoff::SINGLETON_ROOT_ID.as_bytes() {
            return self.configure_singleton(&raw);
        }
        match vm::Vm::configure(&raw) {
            Ok(vm) => {
                // The flush is spread over FLUSH_SLICES ticks per interval.
                let period = vm.cfg.flush_interval_ms / vm::FLUSH_SLICES;
                if let Err(s) =
                    proxy_wasm::hostcalls::set_tick_period(std::time::Duration::from_millis(period))
                {
                    host::warn(&format!(
                        "no tick ({s:?}); activity is flushed on the stats route only"
                    ));
                }
                if let Some(f) = &vm.fleet {
                    f.set_root(self.id);
                }
                self.vm = Some(Rc::new(vm));
                true
            }
            Err(message) => {
                host::error(&message);
                false
            }
        }
    }

    /// Runs when one of this VM's queues has items: the singleton's (workers
    /// handed over activity: written now), or a fleet wake-up (a stream queued
    /// a login or logout: sent to the collectors now).
    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Some(s) = &self.singleton {
            return s.woken(queue_id, host::now_ms());
        }
        if let Some(f) = self.vm.as_ref().and_then(|vm| vm.fleet.as_ref()) {
            f.woken(queue_id, host::now_ms());
        }
    }

    /// The singleton: every `handoff::BEAT_MS` (`Singleton::tick`). A worker:
    /// `FLUSH_SLICES` times per `flush_interval_ms`; while the singleton beats,
    /// hands its activity over once per interval; without it, writes a slice of
    /// this VM's coalesced activity and the traffic counted so far, and, if this
    /// VM wins the sweep slot, removes expired sessions and sets gauges.
    fn on_tick(&mut self) {
        if let Some(s) = &self.singleton {
            s.tick(host::now_ms());
        }
        if let Some(vm) = &self.vm {
            vm.tick(host::now_ms());
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        Some(Box::new(http::Stream::new(vm, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
