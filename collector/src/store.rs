//! Where a collector keeps the ledger: `memory` (one process: the demo, the
//! service's own tests) or Redis (`redis_ledger`), behind one `Store`. A call
//! on a shard is one atomic step either way: under the shard's lock in memory,
//! an optimistic step in Redis.

use crate::redis_ledger::{RedisLedger, StepError, StoreError, Target};
use headcount_core::ledger::{LedgerError, MemoryLedger};
use headcount_core::AppName;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub enum Store {
    Memory(MemoryShards),
    Redis(RedisLedger),
}

/// One shard in memory, behind its own lock.
type Shard = Arc<Mutex<MemoryLedger>>;

/// Shards kept in this process, each behind its own lock.
#[derive(Default)]
pub struct MemoryShards {
    shards: Mutex<HashMap<(AppName, u32), Shard>>,
    apps: Mutex<HashMap<AppName, u32>>,
}

impl MemoryShards {
    pub fn shard(&self, app: &AppName, shard: u32) -> Result<Shard, StepError> {
        let mut all = self
            .shards
            .lock()
            .map_err(|_| StepError::Store(StoreError("a shard lock was poisoned".into())))?;
        Ok(all.entry((app.clone(), shard)).or_default().clone())
    }
}

/// An error of a ledger call on either store (a refusal, a store's own error),
/// as the service answers it.
pub trait IntoStep {
    fn into_step(self) -> StepError;
}

impl IntoStep for StoreError {
    fn into_step(self) -> StepError {
        StepError::Store(self)
    }
}

impl IntoStep for std::convert::Infallible {
    fn into_step(self) -> StepError {
        match self {}
    }
}

impl<E: IntoStep> IntoStep for LedgerError<E> {
    fn into_step(self) -> StepError {
        match self {
            LedgerError::Refused(why) => StepError::Refused(why),
            LedgerError::Store(e) => e.into_step(),
        }
    }
}

pub fn step_error<E: IntoStep>(e: E) -> StepError {
    e.into_step()
}

/// Runs `$body` with `$l` a `Ledger` over shard `$shard` of `$app` in `$store`,
/// as one atomic step; `Result<T, StepError>`.
#[macro_export]
macro_rules! on_shard {
    ($store:expr, $app:expr, $shard:expr, $cfg:expr, $here:expr, |$l:ident| $body:expr) => {
        match $store {
            $crate::store::Store::Memory(m) => m.shard($app, $shard).and_then(|cell| {
                let mut guard = cell.lock().map_err(|_| {
                    $crate::redis_ledger::StepError::Store($crate::redis_ledger::StoreError(
                        "a shard lock was poisoned".into(),
                    ))
                })?;
                let $l = &mut headcount_core::ledger::Ledger::new(&mut *guard, $cfg, $here);
                $body.map_err($crate::store::step_error)
            }),
            $crate::store::Store::Redis(r) => r
                .step($app, $shard, |s| {
                    let $l = &mut headcount_core::ledger::Ledger::new(s, $cfg, $here);
                    $body.map_err($crate::store::step_error)
                })
                .map(|done| done.value),
        }
    };
}

impl Store {
    /// `memory`, or a Redis URL (`redis_ledger::Target::parse`).
    pub fn open(spec: &str) -> Result<Store, String> {
        if spec == "memory" {
            return Ok(Store::Memory(MemoryShards::default()));
        }
        if !spec.starts_with("redis") && !spec.starts_with("valkey") {
            return Err(format!(
                "--store: {spec:?} is neither `memory` nor a redis:// or redis+cluster:// URL"
            ));
        }
        Ok(Store::Redis(RedisLedger::new(Target::parse(spec)?)))
    }

    /// Whether the store answers (`GET /healthz`).
    pub fn ping(&self) -> Result<(), String> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.ping().map_err(|e| e.to_string()),
        }
    }

    /// Remembers that `app` has `shards` shards, for the sweeps.
    pub fn register(&self, app: &AppName, shards: u32) -> Result<(), String> {
        match self {
            Store::Memory(m) => {
                if let Ok(mut apps) = m.apps.lock() {
                    apps.insert(app.clone(), shards);
                }
                Ok(())
            }
            Store::Redis(r) => r.register(app, shards).map_err(|e| e.to_string()),
        }
    }

    /// Every app a node has sent to, with its shard count.
    pub fn apps(&self) -> Result<Vec<(AppName, u32)>, String> {
        match self {
            Store::Memory(m) => Ok(m
                .apps
                .lock()
                .map(|a| a.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default()),
            Store::Redis(r) => r.apps().map_err(|e| e.to_string()),
        }
    }

    /// Whether this collector won the sweep of shard `shard` of `app` for
    /// `every` (one collector sweeps each shard per interval).
    pub fn claim_sweep(&self, app: &AppName, shard: u32, every: Duration) -> Result<bool, String> {
        match self {
            Store::Memory(_) => Ok(true),
            Store::Redis(r) => r.claim_sweep(app, shard, every).map_err(|e| e.to_string()),
        }
    }
}
