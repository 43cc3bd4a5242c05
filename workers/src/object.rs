//! The `Sessions` Durable Object: one shard of the core's session ledger
//! (`headcount_core::ledger`), in SQLite (`store.rs`).
//!
//! `fetch` only routes; each `handle_*` reads the request, runs one `Ledger`
//! method over the store, logs what it says and answers. The alarm sweeps,
//! delivers the sweep's follow-ups to other shards, samples the history (shard
//! 0) and sets itself again. No session rule lives here.

use crate::shards;
use crate::store::Store;
use futures::future::join_all;
use headcount_core::ledger::address::{self, Admit};
use headcount_core::ledger::route::Pending;
use headcount_core::ledger::wire::{
    Batch, BatchReply, Resolve, RevokeQuery, RevokedAdd, StatsQuery, StatsReply,
};
use headcount_core::ledger::{Here, Ledger, LedgerError, Op, Outcome};
use headcount_core::{AppName, Config};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use worker::{
    console_error, console_log, durable_object, js_sys, DurableObject, Env, Method, Request,
    Response, Result, ScheduledTime, State,
};

#[durable_object]
pub struct Sessions {
    state: State,
    env: Env,
    /// Which shard of how many this object is, as the last request said (also
    /// kept in `meta`, for the alarm).
    placement: Cell<Option<(u32, u32)>>,
    /// The validated configuration, parsed once (PEM and JWKS included).
    config: RefCell<Option<Rc<Config>>>,
    /// The app whose sessions this object keeps (also in `meta`): the first one
    /// asked; requests for any other are refused.
    app: RefCell<Option<AppName>>,
}

impl DurableObject for Sessions {
    fn new(state: State, env: Env) -> Self {
        if let Err(e) = Store::new(&state).migrate() {
            console_error!("headcount: cannot create the session tables: {e}");
        }
        Self {
            state,
            env,
            placement: Cell::new(None),
            config: RefCell::new(None),
            app: RefCell::new(None),
        }
    }

    /// Routes each operation (`/{app}/{op}`) of this object's app to its
    /// `handle_*` method.
    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let cfg = match self.config() {
            Ok(c) => c,
            Err(e) => return Response::error(e, 500),
        };
        let path = req.path();
        let Some((app, op)) = address::parse_request_path(&path) else {
            return Response::error("no such operation", 404);
        };
        if let Err(why) = self.admit(&app)? {
            console_error!("headcount: {why}");
            return Response::error(why, 409);
        }
        match (req.method(), op) {
            (Method::Post, "/batch") => self.handle_batch(&cfg, req.json().await?).await,
            (Method::Post, "/resolve") => self.handle_resolve(&cfg, req.json().await?),
            (Method::Post, "/stats") => self.handle_stats(&cfg, req.json().await?),
            (Method::Post, "/secret") => self.handle_secret(&cfg),
            (Method::Post, "/revoke") => self.handle_revoke(&cfg, req.json().await?).await,
            (Method::Post, "/revoked") => self.handle_revoked(&cfg, req.json().await?).await,
            (Method::Post, "/feed") => self.handle_feed(&cfg),
            _ => Response::error("no such operation", 404),
        }
    }

    /// Expiry and cleanup: see `handle_alarm`.
    async fn alarm(&self) -> Result<Response> {
        let cfg = match self.config() {
            Ok(c) => c,
            Err(e) => return Response::error(e, 500),
        };
        self.handle_alarm(&cfg).await
    }
}

impl Sessions {
    fn config(&self) -> std::result::Result<Rc<Config>, String> {
        if let Some(cfg) = self.config.borrow().clone() {
            return Ok(cfg);
        }
        let raw = self
            .env
            .var("HEADCOUNT_CONFIG")
            .map(|v| v.to_string())
            .unwrap_or_default();
        let cfg = Rc::new(Config::from_json(raw.as_bytes()).map_err(|e| e.to_string())?);
        *self.config.borrow_mut() = Some(cfg.clone());
        Ok(cfg)
    }

    /// Whether this object serves `app` (`address::admit`); the first app asked
    /// becomes its own.
    fn admit(&self, app: &AppName) -> Result<std::result::Result<(), String>> {
        if self.app.borrow().as_ref() == Some(app) {
            return Ok(Ok(()));
        }
        let store = Store::new(&self.state);
        let kept = store.app()?;
        match address::admit(kept.as_ref(), app) {
            Admit::Serve => {}
            Admit::Adopt => store.put_app(app)?,
            Admit::Refuse(why) => return Ok(Err(why)),
        }
        *self.app.borrow_mut() = Some(app.clone());
        Ok(Ok(()))
    }

    /// The app this object keeps, for the alarm (which has no request to say).
    fn kept_app(&self, store: &Store) -> Result<AppName> {
        if let Some(app) = self.app.borrow().clone() {
            return Ok(app);
        }
        Ok(store.app()?.unwrap_or_else(AppName::default_app))
    }

    /// Remembers which shard this object is (the alarm has no request to say so).
    fn place(&self, store: &Store, shard: u32, shards: u32) -> Result<Here> {
        let here = (shard, shards.max(1));
        if self.placement.get() != Some(here) {
            store.put_placement(here)?;
            self.placement.set(Some(here));
        }
        Ok(Here::new(here.0, here.1, now_ms()))
    }

    /// This object's place as last recorded (shard 0 of 1 if it never heard).
    fn placed(&self, store: &Store) -> Result<Here> {
        let here = match self.placement.get() {
            Some(p) => p,
            None => store.placement()?.unwrap_or((0, 1)),
        };
        self.placement.set(Some(here));
        Ok(Here::new(here.0, here.1, now_ms()))
    }

    async fn handle_batch(&self, cfg: &Config, batch: Batch) -> Result<Response> {
        let mut store = Store::new(&self.state);
        let here = self.place(&store, batch.shard, batch.shards)?;
        let out = match Ledger::new(&mut store, cfg, here).batch(batch) {
            Ok(out) => out,
            Err(LedgerError::Refused(why)) => return Response::error(why, 400),
            Err(LedgerError::Store(e)) => return Err(e),
        };
        let reply = self.settle(&mut store, cfg, here, out).await?;
        Response::from_json(&reply)
    }

    /// Logs what the ledger said and sets the alarm if rows that expire were written.
    async fn settle(
        &self,
        store: &mut Store,
        cfg: &Config,
        here: Here,
        out: Outcome,
    ) -> Result<BatchReply> {
        log(&out.log);
        if out.needs_alarm {
            self.ensure_alarm(store, cfg, here).await?;
        }
        Ok(out.reply)
    }

    fn handle_resolve(&self, cfg: &Config, q: Resolve) -> Result<Response> {
        let mut store = Store::new(&self.state);
        let here = Here::new(q.shard, q.shards, q.now);
        Response::from_json(&Ledger::new(&mut store, cfg, here).resolve(q.hash, q.id)?)
    }

    fn handle_stats(&self, cfg: &Config, q: StatsQuery) -> Result<Response> {
        let mut store = Store::new(&self.state);
        let here = Here::new(0, 1, q.now);
        Response::from_json(&Ledger::new(&mut store, cfg, here).stats()?)
    }

    /// The cookie hash key, generated on first use and kept here (shard 0).
    fn handle_secret(&self, cfg: &Config) -> Result<Response> {
        let mut store = Store::new(&self.state);
        let mut random = [0u8; 32];
        getrandom::getrandom(&mut random)
            .map_err(|e| worker::Error::RustError(format!("no randomness: {e}")))?;
        let here = Here::new(0, 1, now_ms());
        Response::from_json(&Ledger::new(&mut store, cfg, here).secret(random)?)
    }

    /// Phase 1 of a revocation, on the session's shard; the follow-ups for other
    /// shards go back to the Worker.
    async fn handle_revoke(&self, cfg: &Config, q: RevokeQuery) -> Result<Response> {
        let mut store = Store::new(&self.state);
        let here = self.place(&store, q.shard, q.shards)?;
        let (reply, out) = Ledger::new(&mut store, cfg, here).revoke(q.id, q.by)?;
        self.settle(&mut store, cfg, here, out).await?;
        Response::from_json(&reply)
    }

    /// Phase 2 of a revocation (`enforce_revocation`), on every shard.
    async fn handle_revoked(&self, cfg: &Config, q: RevokedAdd) -> Result<Response> {
        let mut store = Store::new(&self.state);
        let here = self.place(&store, q.shard, q.shards)?;
        let added = Ledger::new(&mut store, cfg, here).revoked_add(q)?;
        self.ensure_alarm(&mut store, cfg, here).await?;
        Response::from_json(&added)
    }

    /// The event feed and the history (kept on shard 0).
    fn handle_feed(&self, cfg: &Config) -> Result<Response> {
        let mut store = Store::new(&self.state);
        let here = Here::new(0, 1, now_ms());
        Response::from_json(&Ledger::new(&mut store, cfg, here).feed()?)
    }

    /// Removes what is over (`Ledger::sweep`), delivers the follow-ups for other
    /// shards, samples the history on shard 0, and sets the next alarm.
    async fn handle_alarm(&self, cfg: &Config) -> Result<Response> {
        let mut store = Store::new(&self.state);
        let here = self.placed(&store)?;
        let app = self.kept_app(&store)?;
        let mut swept = Ledger::new(&mut store, cfg, here).sweep()?;
        log(&swept.outcome.log);
        if swept.ended > 0 || swept.stale_cookies > 0 || swept.revocations > 0 {
            console_log!(
                "headcount: alarm ended {} expired sessions, removed {} stale cookie entries and {} revocations",
                swept.ended,
                swept.stale_cookies,
                swept.revocations
            );
        }
        let forward = std::mem::take(&mut swept.outcome.reply.forward);
        if !forward.is_empty() {
            self.deliver(&app, here, forward).await;
        }
        if Ledger::new(&mut store, cfg, here).sampling()? {
            if let Err(e) = self.sample_history(&mut store, cfg, &app, here).await {
                console_error!("headcount: history not sampled: {e}");
            }
        }
        self.schedule_alarm(&mut store, cfg, here, true).await?;
        Response::ok("swept")
    }

    /// Every shard's active sessions into this minute's peak.
    async fn sample_history(
        &self,
        store: &mut Store,
        cfg: &Config,
        app: &AppName,
        here: Here,
    ) -> Result<()> {
        let mut ledger = Ledger::new(store, cfg, here);
        let own = ledger.stats()?;
        let (mut sessions, mut stored) = (own.sessions, own.stored_sessions);
        let q = StatsQuery { now: here.now };
        let replies = join_all(
            (1..here.shards)
                .map(|shard| shards::call::<_, StatsReply>(&self.env, app, shard, "/stats", &q)),
        )
        .await;
        for reply in replies {
            let reply = reply.map_err(worker::Error::RustError)?;
            sessions.extend(reply.sessions);
            stored += reply.stored_sessions;
        }
        Ledger::new(store, cfg, here).sample_history(&sessions, stored)
    }

    /// Delivers the follow-ups of a sweep to the other shards, one batch each. A
    /// sweep's own shard applied its share already, and what it sends (cookie
    /// entries, per-user entries, events) leads to nothing further.
    async fn deliver(&self, app: &AppName, here: Here, ops: Vec<Op>) {
        let mut pending = Pending::default();
        ops.into_iter().for_each(|op| pending.push(op, here.shards));
        let batches = pending.batches(here.shards, now_ms(), None, |_| None);
        let replies = join_all(
            batches
                .iter()
                .map(|b| shards::call::<_, BatchReply>(&self.env, app, b.shard, "/batch", b)),
        )
        .await;
        for reply in replies {
            match reply {
                Ok(r) if r.forward.is_empty() => {}
                Ok(r) => console_error!("headcount: {} alarm follow-ups dropped", r.forward.len()),
                Err(e) => console_error!("headcount: alarm follow-ups not delivered: {e}"),
            }
        }
    }

    /// After writes: sets the alarm unless a pending one is soon enough.
    async fn ensure_alarm(&self, store: &mut Store, cfg: &Config, here: Here) -> Result<()> {
        let existing = self
            .state
            .storage()
            .get_alarm()
            .await?
            .map(|at| u64::try_from(at).unwrap_or(0));
        if Ledger::new(store, cfg, here).alarm_stale(existing)? {
            self.schedule_alarm(store, cfg, here, false).await?;
        }
        Ok(())
    }

    /// Sets the alarm for `Ledger::next_alarm`, or none if there is nothing to do.
    async fn schedule_alarm(
        &self,
        store: &mut Store,
        cfg: &Config,
        here: Here,
        after_sweep: bool,
    ) -> Result<()> {
        let storage = self.state.storage();
        match Ledger::new(store, cfg, here).next_alarm(after_sweep)? {
            None => storage.delete_alarm().await,
            Some(at) => {
                let date = js_sys::Date::new(&js_sys::Number::from(at as f64));
                storage.set_alarm(ScheduledTime::new(date)).await
            }
        }
    }
}

fn log(lines: &[String]) {
    for line in lines {
        console_log!("headcount: {line}");
    }
}

pub fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}
