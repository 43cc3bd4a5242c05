//! The main-thread singleton (`envoy.bootstrap.wasm` with `singleton: true`,
//! root id `handoff::SINGLETON_ROOT_ID`, the filter's `vm_id`): it applies the
//! activity worker VMs hand over, sweeps, counts, sets gauges, keeps history and
//! the dashboard's stats snapshot, so none of that runs between a worker's
//! requests. The rules are the core's (`handoff`); this file is the Envoy side:
//! the beat, the queue, and one `Vm` per registered app.

use crate::host::{self, meeting_store};
use crate::vm::Vm;
use headcount_core::handoff::{self, Handoff, APPS_KEY, BEAT_KEY, CONFIG_KEY, QUEUE_NAME};
use headcount_core::{stats, traffic, AppName, SharedStore};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// A worker VM's start: records its app and config where the singleton finds
/// them. Nothing fails for want of a singleton, so errors are only logged.
pub fn register(store: &crate::vm::Store, raw: &[u8]) {
    let same = matches!(store.get(CONFIG_KEY), Ok(Some((v, _))) if v == raw);
    if !same {
        if let Err(e) = host::overwrite(store, CONFIG_KEY, raw) {
            host::warn(&format!("config not shared with the singleton: {e}"));
        }
    }
    let global = meeting_store();
    for _ in 0..4 {
        let (list, cas) = match global.get(APPS_KEY) {
            Ok(Some((v, cas))) => (Some(v), Some(cas)),
            Ok(None) => (None, None),
            Err(e) => return host::warn(&format!("app not registered: {e}")),
        };
        let Some(new) = handoff::register(list.as_deref(), store.app()) else {
            return;
        };
        if global.set(APPS_KEY, &new, cas).is_ok() {
            return;
        }
    }
    host::warn("app not registered with the singleton: the apps list kept changing");
}

/// The singleton's queue if it beats (resolved once, kept in `cached`); `None`
/// means this worker does the work itself.
pub fn queue(cached: &Cell<Option<u32>>, now: u64) -> Option<u32> {
    let beat = match meeting_store().get(BEAT_KEY) {
        Ok(Some((v, _))) => Some(handoff::read_ms(&v)),
        _ => None,
    };
    if !handoff::alive(beat, now) {
        return None;
    }
    if cached.get().is_none() {
        let vm_id = host::property(&["plugin_vm_id"])?;
        let vm_id = String::from_utf8_lossy(&vm_id).into_owned();
        let id = proxy_wasm::hostcalls::resolve_shared_queue(&vm_id, QUEUE_NAME).ok()??;
        cached.set(Some(id));
    }
    cached.get()
}

/// Puts one handoff on the singleton's queue; false if the host refused.
pub fn enqueue(queue: u32, bytes: &[u8]) -> bool {
    match proxy_wasm::hostcalls::enqueue_shared_queue(queue, Some(bytes)) {
        Ok(()) => true,
        Err(s) => {
            host::warn(&format!(
                "handoff not queued ({s:?}); kept for the next tick"
            ));
            false
        }
    }
}

/// One registered app, as the singleton keeps it.
struct App {
    vm: Rc<Vm>,
    /// The config it was built from (a reload shows as different bytes).
    raw: Vec<u8>,
    /// When its last snapshot was made.
    snapshot_at: Option<u64>,
}

pub struct Singleton {
    queue: u32,
    apps: RefCell<HashMap<AppName, App>>,
}

impl Singleton {
    /// Root context `on_configure` of the bootstrap service: the configuration
    /// must be empty or `{}` (the singleton follows what the apps' filters say).
    pub fn configure(raw: &[u8]) -> Result<Singleton, String> {
        handoff::check_singleton_config(raw)?;
        let queue = proxy_wasm::hostcalls::register_shared_queue(QUEUE_NAME)
            .map_err(|s| format!("the singleton's queue: {s:?}"))?;
        host::info("singleton: applying, sweeping and counting for every app of this vm_id");
        Ok(Singleton {
            queue,
            apps: RefCell::new(HashMap::new()),
        })
    }

    /// Every `BEAT_MS`: beats, follows the apps list, and for each app writes
    /// what is buffered, sweeps when due and renews a snapshot being read.
    pub fn tick(&self, now: u64) {
        if let Err(e) = host::overwrite(&meeting_store(), BEAT_KEY, &now.to_le_bytes()) {
            host::warn(&format!("singleton: no beat ({e})"));
        }
        self.follow_apps();
        let apps: Vec<(Rc<Vm>, bool)> = self
            .apps
            .borrow_mut()
            .values_mut()
            .map(|a| (a.vm.clone(), snapshot_due(a, now)))
            .collect();
        for (vm, snapshot) in apps {
            vm.flush(now);
            vm.housekeep(now);
            if snapshot {
                self.snapshot(&vm, now);
            }
        }
    }

    /// Root context `on_queue_ready`: takes every handoff waiting and writes it.
    pub fn woken(&self, queue: u32, now: u64) {
        if queue != self.queue {
            return;
        }
        let mut touched: Vec<Rc<Vm>> = Vec::new();
        while let Ok(Some(bytes)) = proxy_wasm::hostcalls::dequeue_shared_queue(queue) {
            let handoff = match Handoff::decode(&bytes) {
                Ok(h) => h,
                Err(e) => {
                    host::warn(&format!("singleton: {e}; dropped"));
                    continue;
                }
            };
            let Some(vm) = self.app(&handoff.app) else {
                host::warn(&format!(
                    "singleton: activity of unregistered app `{}` dropped",
                    handoff.app
                ));
                continue;
            };
            vm.absorb(handoff);
            if !touched.iter().any(|t| Rc::ptr_eq(t, &vm)) {
                touched.push(vm);
            }
        }
        touched.iter().for_each(|vm| vm.flush(now));
    }

    /// An app's `Vm`, following the registry first if it is new.
    fn app(&self, name: &AppName) -> Option<Rc<Vm>> {
        if !self.apps.borrow().contains_key(name) {
            self.follow_apps();
        }
        self.apps.borrow().get(name).map(|a| a.vm.clone())
    }

    /// Builds a `Vm` for each registered app that is new or whose config changed.
    fn follow_apps(&self) {
        let names = match meeting_store().get(APPS_KEY) {
            Ok(Some((v, _))) => handoff::apps(&v),
            _ => return,
        };
        for name in names {
            let store = host::app_store(name.clone());
            let Ok(Some((raw, _))) = store.get(CONFIG_KEY) else {
                continue;
            };
            let known = self.apps.borrow().get(&name).is_some_and(|a| a.raw == raw);
            if known {
                continue;
            }
            match Vm::for_app(&raw, name.clone()) {
                Ok(vm) => {
                    host::info(&format!("singleton: following app `{name}`"));
                    let app = App {
                        vm: Rc::new(vm),
                        raw,
                        snapshot_at: None,
                    };
                    self.apps.borrow_mut().insert(name, app);
                }
                Err(e) => host::warn(&format!("singleton: app `{name}` not followed: {e}")),
            }
        }
    }

    /// Writes the stats report a dashboard reads (`?snapshot=1`).
    fn snapshot(&self, vm: &Vm, now: u64) {
        let store = &vm.store;
        let report = traffic::load(store)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                vm.snapshot
                    .borrow_mut()
                    .report_json(store, now, &vm.cfg, stats::DEFAULT_LISTED, t.figures(now))
                    .map_err(|e| e.to_string())
            });
        let stored = report.and_then(|r| {
            host::overwrite(
                store,
                handoff::SNAPSHOT_KEY,
                &handoff::encode_snapshot(now, &r),
            )
            .map_err(|e| e.to_string())
        });
        if let Err(e) = stored {
            host::warn(&format!(
                "singleton: no stats snapshot for `{}`: {e}",
                vm.app()
            ));
        }
    }
}

/// Whether `app` needs a snapshot now (and, if so, notes that one is made).
fn snapshot_due(app: &mut App, now: u64) -> bool {
    let wanted = match app.vm.store.get(handoff::WANTED_KEY) {
        Ok(Some((v, _))) => Some(handoff::read_ms(&v)),
        _ => None,
    };
    let due = handoff::snapshot_due(app.snapshot_at, wanted, now);
    if due {
        app.snapshot_at = Some(now);
    }
    due
}
