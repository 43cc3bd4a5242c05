//! Expiry for the fleet. A Durable Object has an alarm; the collectors share
//! the sweeps instead: every `sweep_interval_seconds` each collector tries to
//! claim each shard of each app nodes have sent to, and the one that wins a
//! shard sweeps it (`Ledger::sweep`), delivers the sweep's follow-ups to the
//! other shards, and, on shard 0, samples the history while it is being
//! sampled. A collector that dies leaves its claims to expire; the next
//! interval's sweep is someone else's.

use crate::on_shard;
use crate::redis_ledger::StepError;
use crate::service::{now_ms, Collector};
use headcount_core::ledger::route::Pending;
use headcount_core::ledger::wire::Op;
use headcount_core::ledger::Here;
use headcount_core::AppName;
use std::sync::Arc;
use std::time::Duration;

/// Sweeps every interval until the process ends.
pub async fn run(c: Arc<Collector>) {
    let every = Duration::from_millis(c.cfg.sweep_interval_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let c = c.clone();
        let done = tokio::task::spawn_blocking(move || sweep_all(&c, every)).await;
        match done {
            Ok(lines) => lines
                .iter()
                .for_each(|l| eprintln!("headcount-collector: {l}")),
            Err(e) => eprintln!("headcount-collector: sweep failed: {e}"),
        }
    }
}

/// One round over every app and shard; what to log.
pub fn sweep_all(c: &Collector, every: Duration) -> Vec<String> {
    let mut log = Vec::new();
    let apps = match c.store.apps() {
        Ok(a) => a,
        Err(e) => return vec![format!("cannot list the apps to sweep: {e}")],
    };
    for (app, shards) in apps {
        for shard in 0..shards {
            match c.store.claim_sweep(&app, shard, every) {
                Ok(true) => {
                    if let Err(e) = sweep_one(c, &app, shard, shards) {
                        log.push(format!("sweep of {app} shard {shard} failed: {e}"));
                    }
                }
                Ok(false) => {}
                Err(e) => log.push(format!("cannot claim {app} shard {shard}: {e}")),
            }
        }
    }
    log
}

fn sweep_one(c: &Collector, app: &AppName, shard: u32, shards: u32) -> Result<(), StepError> {
    let (cfg, here) = (&c.cfg, Here::new(shard, shards, now_ms()));
    let forward = on_shard!(&c.store, app, shard, cfg, here, |l| l
        .sweep()
        .map(|s| s.outcome.reply.forward))?;
    deliver(c, app, shards, forward)?;
    if shard == 0 {
        sample(c, app, shards)?;
    }
    Ok(())
}

/// A sweep's follow-ups, each on its shard; what they send on leads to nothing
/// further (cookie entries, per-user entries, events).
fn deliver(c: &Collector, app: &AppName, shards: u32, ops: Vec<Op>) -> Result<(), StepError> {
    let mut pending = Pending::default();
    ops.into_iter().for_each(|op| pending.push(op, shards));
    let cfg = &c.cfg;
    for batch in pending.batches(shards, now_ms(), None, |_| None) {
        let (shard, here) = (batch.shard, Here::new(batch.shard, shards, now_ms()));
        on_shard!(&c.store, app, shard, cfg, here, |l| l.batch(batch.clone()))?;
    }
    Ok(())
}

/// Every shard's active sessions into this minute's history (shard 0), while
/// the history is being sampled.
fn sample(c: &Collector, app: &AppName, shards: u32) -> Result<(), StepError> {
    let cfg = &c.cfg;
    let now = now_ms();
    let sampling = on_shard!(&c.store, app, 0, cfg, Here::new(0, shards, now), |l| l
        .sampling())?;
    if !sampling {
        return Ok(());
    }
    let (mut sessions, mut stored) = (Vec::new(), 0);
    for shard in 0..shards {
        let reply = on_shard!(&c.store, app, shard, cfg, Here::new(0, 1, now), |l| l
            .stats())?;
        sessions.extend(reply.sessions);
        stored += reply.stored_sessions;
    }
    on_shard!(&c.store, app, 0, cfg, Here::new(0, shards, now), |l| l
        .sample_history(&sessions, stored))
}
