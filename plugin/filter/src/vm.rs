//! Per-VM state: config, cookie hasher, metric ids and the activity waiting to be
//! flushed. Touches are coalesced here so the request path never writes shared data.

use crate::activity::{Activity, Requester};
use crate::host::{self, EnvoyStore};
use headcount_core::activity::{self, Pending};
use headcount_core::bearer::TokenCache;
use headcount_core::events::{Actor, Events, Kind, EVENTS_KEY};
use headcount_core::handoff::Handoff;
use headcount_core::history::{History, HISTORY_KEY};
use headcount_core::record;
use headcount_core::snapshot::Snapshot;
use headcount_core::stats::Counts;
use headcount_core::table::TableError;
use headcount_core::table::{SessionTable, SharedStore, StoreError, SHARDS};
use headcount_core::traffic;
use headcount_core::{AppName, Config, CookieCache, CookieHash, CookieHasher, Scoped, Session};
use proxy_wasm::types::MetricType;
use std::cell::{Cell, RefCell};

const SECRET_KEY: &str = "headcount.v1.secret";
const SWEEP_KEY: &str = "headcount.v1.next_sweep";
/// Session and cookie shards cleaned of orphans and stale cookie entries per sweep
/// (expired sessions are found in the activity shards, all of them every sweep):
/// a whole round takes 32 sweeps, 160 s at the default interval.
const SWEEP_WINDOW: usize = 16;
/// The flush is spread over this many ticks per `flush_interval_ms`: each tick writes
/// the activity buffered for a quarter of the cookie shards, so no single timer call
/// holds the worker for the whole flush (4 ms at 10k sessions under load).
pub const FLUSH_SLICES: u64 = 4;
/// Cookie values whose HMAC a VM remembers (32 B each: 1 MiB per VM, allocated at the
/// first cookie): a repeat cookie then costs a SipHash instead of an HMAC-SHA-256.
const COOKIE_CACHE_SLOTS: usize = 32_768;

pub struct Metrics {
    active_users: Option<u32>,
    active_sessions: Option<u32>,
    roles: Vec<(String, Option<u32>)>,
    pub logins: Option<u32>,
    pub logouts: Option<u32>,
    pub expiries: Option<u32>,
    pub evictions: Option<u32>,
    pub unnamed: Option<u32>,
    pub whoami_begun: Option<u32>,
    pub whoami_nobody: Option<u32>,
    pub whoami_throttled: Option<u32>,
}

/// Shared data as this plugin instance's app sees it: every key under its app.
pub type Store = Scoped<EnvoyStore>;

pub struct Vm {
    pub cfg: Config,
    /// Shared data in this app's namespace; every read and write goes through it.
    pub store: Store,
    pub hasher: CookieHasher,
    /// Request cookie values hashed recently (see `COOKIE_CACHE_SLOTS`).
    pub cookie_cache: RefCell<CookieCache>,
    /// `ignore_user_agents`, ready to scan for.
    pub agents: headcount_core::identity::AgentScan,
    pub metrics: Metrics,
    /// Activity and traffic not yet written.
    activity: RefCell<Activity>,
    /// Verified (and refused) bearer tokens, so a token is checked once per VM.
    pub tokens: RefCell<TokenCache>,
    /// Session shards kept decoded between stats reads and sweeps.
    pub snapshot: RefCell<Snapshot>,
    /// Where the next sweep's cleaning window starts.
    sweep_cursor: Cell<usize>,
    /// Ticks so far: which flush slice is next.
    ticks: Cell<u64>,
    /// `whoami` lookups, queued by streams and sent by the root context.
    pub whoami: RefCell<crate::whoami::Calls>,
    /// Fleet mode: the node side of the collectors' ledger (no table here).
    pub fleet: Option<crate::fleet::Fleet>,
    /// The main-thread singleton's queue, once resolved.
    singleton: Cell<Option<u32>>,
}

impl Vm {
    /// Validates the config and prepares shared state. The error is the log line.
    /// A worker's app (not in fleet mode) is registered for the main-thread
    /// singleton, with its config, so that the singleton can do its periodic work.
    pub fn configure(raw: &[u8]) -> Result<Vm, String> {
        let cfg = Config::from_json(raw).map_err(|e| format!("{e}"))?;
        let plugin_name =
            host::property(&["plugin_name"]).map(|n| String::from_utf8_lossy(&n).into_owned());
        let app = AppName::choose(cfg.app.as_ref(), plugin_name.as_deref())
            .map_err(|e| format!("{e}"))?;
        let vm = Vm::build(cfg, app)?;
        host::info(&format!(
            "configured for app `{}` (login {} {}, cookie `{}`, window {} s)",
            vm.app(),
            vm.cfg.login_method,
            vm.cfg.login_path,
            vm.cfg.session_cookie,
            vm.cfg.active_window_ms / 1000
        ));
        if vm.fleet.is_none() {
            crate::singleton::register(&vm.store, raw);
        }
        Ok(vm)
    }

    /// The singleton's view of an app a worker registered: the same config, the
    /// same metrics (Envoy keeps one series per name), no requests of its own.
    pub fn for_app(raw: &[u8], app: AppName) -> Result<Vm, String> {
        let cfg = Config::from_json(raw).map_err(|e| format!("{e}"))?;
        Vm::build(cfg, app)
    }

    fn build(mut cfg: Config, app: AppName) -> Result<Vm, String> {
        let store = host::app_store(app.clone());
        cfg.app = Some(app.clone());
        let secret = match &cfg.cookie_hash_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => shared_secret(&store)
                .map_err(|e| format!("cannot set up the cookie hash secret: {e}"))?,
        };
        let gauge = |name: &str| host::define_metric(MetricType::Gauge, &stat_name(name, &app));
        let counter = |name: &str| host::define_metric(MetricType::Counter, &stat_name(name, &app));
        let metrics = Metrics {
            active_users: gauge("headcount_active_users"),
            active_sessions: gauge("headcount_active_sessions"),
            roles: cfg
                .roles
                .iter()
                .map(|r| {
                    (
                        r.clone(),
                        gauge(&format!(
                            "headcount_active_users_by_role.role.{}",
                            metric_safe(r)
                        )),
                    )
                })
                .collect(),
            logins: counter("headcount_logins_total"),
            logouts: counter("headcount_logouts_total"),
            expiries: counter("headcount_expiries_total"),
            evictions: counter("headcount_evictions_total"),
            unnamed: counter("headcount_unnamed_logins_total"),
            whoami_begun: counter("headcount_whoami_begun_total"),
            whoami_nobody: counter("headcount_whoami_nobody_total"),
            whoami_throttled: counter("headcount_whoami_throttled_total"),
        };
        let Some(cache_key) = host::random16() else {
            return Err("the host gave no randomness for the cookie cache key".into());
        };
        let cfg_fleet = cfg.fleet.clone().map(|f| {
            let ask = cfg.whoami.as_ref().is_some_and(|w| w.begin_unknown);
            let lost = counter("headcount_fleet_lost_ops_total");
            let revoked = gauge("headcount_fleet_revoked_values");
            crate::fleet::Fleet::new(
                f,
                app.clone(),
                (cfg.enforce_revocation, ask),
                (lost, revoked),
            )
        });
        Ok(Vm {
            hasher: CookieHasher::new(&secret),
            cookie_cache: RefCell::new(CookieCache::new(cache_key, COOKIE_CACHE_SLOTS)),
            agents: headcount_core::identity::AgentScan::new(&cfg.ignore_user_agents),
            cfg,
            store,
            metrics,
            activity: RefCell::new(Activity::default()),
            tokens: RefCell::new(TokenCache::new()),
            snapshot: RefCell::new(Snapshot::new()),
            sweep_cursor: Cell::new(0),
            ticks: Cell::new(0),
            whoami: RefCell::new(crate::whoami::Calls::default()),
            fleet: cfg_fleet,
            singleton: Cell::new(None),
        })
    }

    pub fn table(&self) -> SessionTable<'_, Store> {
        SessionTable::new(&self.store)
    }

    pub fn app(&self) -> &AppName {
        self.store.app()
    }

    /// Counts one finished request (see `Activity::record`).
    pub fn record(&self, who: Requester, start_ms: u64, response_us: Option<u64>) {
        self.activity
            .borrow_mut()
            .record(who, start_ms, response_us);
    }

    /// Moves buffered activity from a rotated-away cookie value to the new one.
    pub fn rekey(&self, from: &CookieHash, to: &CookieHash) {
        self.activity.borrow_mut().rekey(from, to);
    }

    /// Settles buffered activity of a session that just ended.
    pub fn forget(&self, session: &Session, request_cookie: &CookieHash) {
        self.activity.borrow_mut().forget(session, request_cookie);
    }

    /// One timer tick (`FLUSH_SLICES` per `flush_interval_ms`): flushes one slice of
    /// the buffered activity, and sweeps if this VM wins the sweep slot.
    pub fn tick(&self, now: u64) {
        let tick = self.ticks.get();
        self.ticks.set(tick.wrapping_add(1));
        if let Some(f) = &self.fleet {
            // The collectors sweep; a node sends what it has once per interval
            // (sooner if something is urgent and no wake-up got through).
            let interval = tick % FLUSH_SLICES == 0;
            if interval || f.urgent() {
                f.flush_with(now, interval);
            } else {
                f.release(now);
            }
            crate::whoami::send(self, now);
            return;
        }
        if let Some(queue) = crate::singleton::queue(&self.singleton, now) {
            // The singleton applies, sweeps and counts; this VM only hands over.
            if tick % FLUSH_SLICES == 0 {
                self.hand_off(queue, now);
            }
            crate::whoami::send(self, now);
            return;
        }
        self.flush_slice(now, Some(tick % FLUSH_SLICES));
        crate::whoami::send(self, now);
        self.housekeep(now);
    }

    /// Sweeps if this VM wins the sweep slot (the singleton's ticks, or a
    /// worker's without one).
    pub fn housekeep(&self, now: u64) {
        if self.claim_sweep(now) {
            self.sweep(now);
        }
    }

    /// Hands this VM's buffered activity and traffic to the singleton's queue
    /// (kept for the next tick if the queue refuses it). With `begin_unknown`,
    /// the credentials kept as candidates are looked up here, read-only: the
    /// singleton cannot ask the app about them.
    fn hand_off(&self, queue: u32, now: u64) {
        let (pending, traffic) = {
            let mut a = self.activity.borrow_mut();
            (a.take(None), std::mem::take(&mut a.traffic))
        };
        if pending.is_empty() && traffic.is_empty() {
            return;
        }
        self.ask_about_candidates(&pending, now);
        // Those the app is being asked about stay here until the answer, which
        // may begin their session: the singleton would settle them without it.
        let (pending, held) = {
            let calls = self.whoami.borrow();
            activity::hold_asked(pending, |h| calls.asking(h))
        };
        self.activity.borrow_mut().restore(held);
        if pending.is_empty() && traffic.is_empty() {
            return;
        }
        let handoff = Handoff {
            app: self.app().clone(),
            pending,
            traffic,
        };
        let sent = handoff
            .encode()
            .is_some_and(|bytes| crate::singleton::enqueue(queue, &bytes));
        if !sent {
            let mut a = self.activity.borrow_mut();
            a.restore(handoff.pending);
            a.traffic.absorb(&handoff.traffic);
        }
    }

    /// The singleton's side of `hand_off`: adds a worker's activity and
    /// traffic to this app's, written at the next `flush`.
    pub fn absorb(&self, handoff: Handoff) {
        self.activity
            .borrow_mut()
            .absorb(handoff.pending, &handoff.traffic);
    }

    /// `begin_unknown` with the singleton: which of the handed-over cookies that
    /// were kept as candidates lead to no session (asked about) or to one.
    fn ask_about_candidates(&self, pending: &[(CookieHash, Pending)], now: u64) {
        if !self.cfg.whoami.as_ref().is_some_and(|w| w.begin_unknown) {
            return;
        }
        let (mut missed, mut known) = (Vec::new(), Vec::new());
        {
            let calls = self.whoami.borrow();
            for (h, _) in pending.iter().filter(|(h, _)| calls.candidates.has(h)) {
                match self.table().resolve(h, now) {
                    Ok(Some(_)) => known.push(*h),
                    Ok(None) => missed.push(*h),
                    Err(_) => {}
                }
            }
        }
        self.ask_about(&missed, &known, now);
    }

    /// Writes all coalesced activity and traffic now (before answering a data route).
    pub fn flush(&self, now: u64) {
        self.flush_slice(now, None);
    }

    /// Writes the coalesced activity of the cookies in `slice` (all with `None`): one
    /// CAS write per touched shard; then the traffic counted so far.
    fn flush_slice(&self, now: u64, slice: Option<u64>) {
        let batch = self
            .activity
            .borrow_mut()
            .take(slice.map(|s| (s, FLUSH_SLICES)));
        if !batch.is_empty() {
            let touches: Vec<(CookieHash, u64)> =
                batch.iter().map(|(h, p)| (*h, p.last_ms)).collect();
            match self.table().touch(&touches, now) {
                Ok(found) => {
                    let (missed, known) = {
                        let calls = self.whoami.borrow();
                        let asking = |h: &CookieHash| calls.asking(h);
                        self.activity.borrow_mut().settle(batch, found, asking)
                    };
                    self.ask_about(&missed, &known, now);
                }
                Err(e) => {
                    host::warn(&format!("activity flush failed, will retry: {e}"));
                    self.activity.borrow_mut().restore(batch);
                }
            }
        }
        let delta = std::mem::take(&mut self.activity.borrow_mut().traffic);
        if !delta.is_empty() {
            if let Err(e) = traffic::add(&self.store, &delta, now) {
                host::warn(&format!("traffic flush failed: {e}"));
                self.activity.borrow_mut().traffic = delta;
            }
        }
    }

    /// `begin_unknown`: queues a whoami lookup for each credential whose
    /// session a flush did not find (first miss), if its request was kept as a
    /// candidate; forgets the candidates of credentials found.
    fn ask_about(&self, missed: &[CookieHash], known: &[CookieHash], now: u64) {
        if !self.cfg.whoami.as_ref().is_some_and(|w| w.begin_unknown) {
            return;
        }
        let mut calls = self.whoami.borrow_mut();
        known.iter().for_each(|h| calls.candidates.forget(h));
        for h in missed {
            let Some(c) = calls.candidates.take(h) else {
                continue;
            };
            if calls.nobody.holds(h, now) {
                continue;
            }
            if calls.queue(crate::whoami::Lookup::unknown(*h, c)).is_err() {
                drop(calls);
                host::warn("whoami queue full; an unknown session is not asked about");
                calls = self.whoami.borrow_mut();
            }
        }
        // Candidates no flush will answer for (their activity went with a
        // logout, a rotation or the buffer's bound) make room for new ones.
        let activity = self.activity.borrow();
        calls.candidates.prune(now, |h| activity.is_pending(h));
    }

    /// A request's credential, kept until a flush shows whether its session
    /// is known (`begin_unknown`); `facts` builds the candidate, only if kept.
    pub fn keep_candidate(
        &self,
        hash: CookieHash,
        now: u64,
        facts: impl FnOnce() -> Option<headcount_core::whoami::lookups::Candidate>,
    ) {
        let mut calls = self.whoami.borrow_mut();
        if calls.candidates.wants(&hash) && !calls.nobody.holds(&hash, now) {
            if let Some(c) = facts() {
                calls.candidates.add(hash, c, now);
            }
        }
    }

    /// One VM per sweep interval wins this CAS and does the sweep.
    fn claim_sweep(&self, now: u64) -> bool {
        let store = &self.store;
        let (next, cas) = match store.get(SWEEP_KEY) {
            Ok(Some((v, cas))) => (headcount_core::handoff::read_ms(&v), Some(cas)),
            Ok(None) => (0, None),
            Err(_) => return false,
        };
        if now < next {
            return false;
        }
        let at = now.saturating_add(self.cfg.sweep_interval_ms);
        store.set(SWEEP_KEY, &at.to_le_bytes(), cas).is_ok()
    }

    /// Removes expired sessions and publishes the counts as gauges.
    fn sweep(&self, now: u64) {
        let table = self.table();
        let start = self.sweep_cursor.get() % SHARDS;
        self.sweep_cursor.set((start + SWEEP_WINDOW) % SHARDS);
        match table.sweep(start..(start + SWEEP_WINDOW).min(SHARDS), now, &self.cfg) {
            Ok(ended) => {
                host::add_counter(self.metrics.expiries, ended.len() as u64);
                self.events(Kind::Expiry, &ended, now);
            }
            Err(e) => host::warn(&format!("sweep failed: {e}")),
        }
        match self.counts(now) {
            Ok(counts) => {
                self.publish(&counts);
                let sampled = record::update(&self.store, HISTORY_KEY, |h: &mut History| {
                    h.record(&counts, now);
                    (true, ())
                });
                if let Err(e) = sampled {
                    host::warn(&format!("history not recorded: {e}"));
                }
            }
            Err(e) => host::warn(&format!("gauge update failed: {e}")),
        }
    }

    /// One pass over every session's activity (details decoded only where changed).
    pub fn counts(&self, now: u64) -> Result<Counts, TableError> {
        self.snapshot
            .borrow_mut()
            .counts(&self.store, now, &self.cfg)
    }

    fn publish(&self, c: &Counts) {
        host::set_gauge(self.metrics.active_users, c.active_users as u64);
        host::set_gauge(self.metrics.active_sessions, c.active_sessions as u64);
        for (role, id) in &self.metrics.roles {
            host::set_gauge(*id, c.by_role.get(role).copied().unwrap_or(0) as u64);
        }
    }

    /// Adds session events to the shared feed (and its lifetime counters).
    pub fn events(&self, kind: Kind, sessions: &[Session], now: u64) {
        if sessions.is_empty() {
            return;
        }
        let pushed = record::update(&self.store, EVENTS_KEY, |ev: &mut Events| {
            sessions.iter().for_each(|s| ev.push(kind, s, now));
            (true, ())
        });
        if let Err(e) = pushed {
            host::warn(&format!("{} event not recorded: {e}", kind.name()));
        }
    }

    /// Adds the event of `session`'s revocation by `by` to the shared feed.
    pub fn revocation_event(&self, session: &Session, by: Option<Actor>, now: u64) {
        let pushed = record::update(&self.store, EVENTS_KEY, |ev: &mut Events| {
            ev.push_revocation(session, by.clone(), now);
            (true, ())
        });
        if let Err(e) = pushed {
            host::warn(&format!("revocation event not recorded: {e}"));
        }
    }
}

/// A metric's stat name for one app: `<metric>.app.<app>`. Envoy keeps each app's
/// series apart by name; the `stats_tags` of envoy/envoy.yaml turn the suffix into
/// the label `app` (and `.role.<role>` into `role`), so `/stats/prometheus` shows
/// `headcount_active_users{app="shop"}` as the plugin's own metrics route does.
fn stat_name(metric: &str, app: &AppName) -> String {
    format!("{metric}.app.{app}")
}

/// Role names in stat names keep `[a-z0-9_]`; anything else becomes `_`.
fn metric_safe(role: &str) -> String {
    role.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The cookie hash key all VMs of one app share: the first VM to start makes it.
fn shared_secret(store: &Store) -> Result<Vec<u8>, String> {
    if let Some((v, _)) = store.get(SECRET_KEY).map_err(|e| e.to_string())? {
        if v.len() == 32 {
            return Ok(v);
        }
    }
    let (a, b) = (host::random16(), host::random16());
    let (Some(a), Some(b)) = (a, b) else {
        return Err("the host gave no randomness; set cookie_hash_secret".into());
    };
    let fresh: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
    match store.set(SECRET_KEY, &fresh, None) {
        Ok(()) | Err(StoreError::CasMismatch) => {}
        Err(e) => return Err(e.to_string()),
    }
    // Whoever won the race, everyone uses the stored one.
    match store.get(SECRET_KEY).map_err(|e| e.to_string())? {
        Some((v, _)) if v.len() == 32 => Ok(v),
        _ => Err("shared secret missing after write".into()),
    }
}
