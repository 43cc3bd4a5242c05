//! Fleet mode (`fleet` in the config): this VM is a node of a fleet whose one
//! ledger the collectors keep (`headcount-collector`, over Redis). The VM keeps
//! no table: streams add their activity and session ops to the core's
//! `ledger::node::Node`, and the root context sends its batches on each tick
//! with `dispatch_http_call` to the collectors' cluster, handing each answer
//! back to the node. A login or logout does not wait for the tick: its stream
//! wakes the root context through this VM's own shared queue, and the root
//! sends at once (the Rust SDK gives a call's answer to the context that made
//! it, and a stream's may be gone by then). Follow-ups a shard returns go out
//! as soon as its answer arrives.

use crate::host;
use crate::vm::Store;
use headcount_core::fleet::Fleet as FleetConfig;
use headcount_core::ids::{CookieHash, NodeId};
use headcount_core::ledger::address;
use headcount_core::ledger::node::{Node, Reply};
use headcount_core::ledger::wire::{BatchReply, Op, RevokeReply, RevokedAdd};
use headcount_core::record;
use headcount_core::table::{SessionTable, REVOKED_KEY};
use headcount_core::AppName;
use headcount_core::{Config, Session};
use proxy_wasm::types::{BufferType, MapType};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Duration;

/// Unanswered batches in a row that make an outage.
const OUTAGE: u32 = 3;

/// Largest answer read from a collector (a batch reply with its follow-ups
/// and, with `enforce_revocation`, a shard's revoked list).
const MAX_REPLY: usize = 8 << 20;

pub struct Fleet {
    pub cfg: FleetConfig,
    app: AppName,
    node: RefCell<Node>,
    /// Calls in flight: Envoy's token -> the node's call id.
    calls: RefCell<BTreeMap<u32, u64>>,
    /// This VM's wake-up queue (`None`: the host gave none; urgent ops then
    /// wait for the tick).
    queue: Option<u32>,
    /// A wake-up is queued and not yet handled.
    woken: Cell<bool>,
    /// Streams holding their response until their session op has landed.
    waiters: RefCell<Vec<Waiter>>,
    /// Batches in a row that got no answer: from `OUTAGE` on, the collectors
    /// count as down and nothing is held (one dead replica among live ones
    /// fails every other call, which is not an outage).
    failures: Cell<u32>,
    /// The root context's id (to return to after resuming a stream).
    root: Cell<u32>,
    /// Envoy counter of ops given up.
    lost_metric: Option<u32>,
    /// The node's shared data (this app's): the revoked values any of its VMs
    /// learnt, so every worker refuses them as soon as one knows.
    store: Store,
    /// Envoy gauge: revoked values the node holds.
    revoked_metric: Option<u32>,
}

/// A stream whose login, logout or rotation waits to land: it goes on once
/// flush `epoch` has settled (`Node::settled`), the collectors fail, or
/// `deadline` passes.
struct Waiter {
    context: u32,
    epoch: u64,
    deadline: u64,
}

impl Fleet {
    /// Runs in the root context's `on_configure`: registers the VM's queue.
    pub fn new(
        cfg: FleetConfig,
        app: AppName,
        (enforce_revocation, ask_unknown): (bool, bool),
        (lost_metric, revoked_metric): (Option<u32>, Option<u32>),
    ) -> Fleet {
        let origin = host::random16().map(NodeId);
        let queue = origin.and_then(|id| {
            let name = format!("headcount.fleet.{}", hex(&id.0));
            proxy_wasm::hostcalls::register_shared_queue(&name)
                .map_err(|s| host::warn(&format!("fleet: no wake-up queue ({s:?})")))
                .ok()
        });
        let mut node = Node::new(cfg.shards, enforce_revocation, origin);
        node.ask_unknown = ask_unknown;
        Fleet {
            node: RefCell::new(node),
            cfg,
            store: host::app_store(app.clone()),
            app,
            calls: RefCell::new(BTreeMap::new()),
            queue,
            woken: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
            failures: Cell::new(0),
            root: Cell::new(0),
            lost_metric,
            revoked_metric,
        }
    }

    fn healthy(&self) -> bool {
        self.failures.get() < OUTAGE
    }

    /// Root context, `on_configure`: its id.
    pub fn set_root(&self, id: u32) {
        self.root.set(id);
    }

    /// A stream that queued a session op: whether it should hold its response
    /// until the op has landed (read-your-writes: the user's next request, on
    /// any node, finds the session). Not while the collectors fail: traffic
    /// never waits on them then.
    pub fn hold(&self, context: u32, now: u64) -> bool {
        if !self.can_hold() {
            return false;
        }
        self.waiters.borrow_mut().push(Waiter {
            context,
            epoch: self.node.borrow().epoch() + 1,
            deadline: now + self.cfg.timeout_ms,
        });
        true
    }

    /// Whether streams are held now (`hold`): the collectors answer, and a
    /// wake-up queue sends their ops at once.
    pub fn can_hold(&self) -> bool {
        self.healthy() && self.queue.is_some()
    }

    /// Root context: lets go the streams whose ops have landed (all of them
    /// while the collectors fail), and those waiting past their deadline.
    pub fn release(&self, now: u64) {
        let healthy = self.healthy();
        let node = self.node.borrow();
        let mut go = Vec::new();
        self.waiters.borrow_mut().retain(|w| {
            let done = !healthy || now >= w.deadline || node.settled(w.epoch);
            if done {
                go.push(w.context);
            }
            !done
        });
        drop(node);
        if go.is_empty() {
            return;
        }
        for context in go {
            // A stream reset meanwhile is gone: nothing to resume.
            if proxy_wasm::hostcalls::set_effective_context(context).is_ok() {
                let _ = proxy_wasm::hostcalls::resume_http_response();
            }
        }
        let _ = proxy_wasm::hostcalls::set_effective_context(self.root.get());
    }

    /// Root context, `on_queue_ready`: whether the queue is this VM's wake-up
    /// queue; if so, empties it and sends what is urgent.
    pub fn woken(&self, queue: u32, now: u64) -> bool {
        if self.queue != Some(queue) {
            return false;
        }
        while let Ok(Some(_)) = proxy_wasm::hostcalls::dequeue_shared_queue(queue) {}
        self.woken.set(false);
        self.flush(now);
        true
    }

    /// A stream: asks the root context to send now (once per wake-up).
    fn wake(&self) {
        let Some(queue) = self.queue else { return };
        if self.woken.get() || !self.node.borrow().urgent() {
            return;
        }
        match proxy_wasm::hostcalls::enqueue_shared_queue(queue, Some(b"1")) {
            Ok(()) => self.woken.set(true),
            Err(s) => host::warn(&format!("fleet: wake-up not queued ({s:?})")),
        }
    }

    /// Whether something should be sent before the next interval.
    pub fn urgent(&self) -> bool {
        self.node.borrow().urgent()
    }

    /// Counts one proxied request (`cookie`: its session key, if any).
    pub fn record(&self, cookie: Option<CookieHash>, start_ms: u64, response_us: Option<u64>) {
        self.node
            .borrow_mut()
            .buffer
            .record(cookie, start_ms, response_us);
    }

    /// Counts one proxied request that its session op counts (a token's first
    /// sighting): its time only.
    pub fn record_counted(&self, start_ms: u64, response_us: Option<u64>) {
        self.node
            .borrow_mut()
            .buffer
            .record_counted(start_ms, response_us);
    }

    /// Queues a session op (a login, logout or rotation); false if the buffer
    /// is full and the op is lost (logged by the caller).
    /// Queues a session op (a login, logout, rotation, a token's first
    /// sighting, whoami's answer): it goes at once. False if the bounded buffer
    /// is full (the collectors away too long): the op is lost, logged and
    /// counted (`headcount_fleet_lost_ops_total`).
    pub fn push(&self, op: Op) -> bool {
        let what = op_name(&op);
        let mut node = self.node.borrow_mut();
        let pushed = node.buffer.push(op);
        node.buffer.urgent |= pushed;
        drop(node);
        if !pushed {
            self.lost(1, what);
        }
        self.wake();
        pushed
    }

    /// Counts and logs ops given up.
    fn lost(&self, n: usize, what: &str) {
        host::error(&format!("fleet: {n} op(s) lost ({what})"));
        host::add_counter(self.lost_metric, n as u64);
    }

    /// A touch nobody knew, tried once more with the next flush.
    pub fn retry(&self, op: Op) {
        self.node.borrow_mut().buffer.retry(op);
    }

    /// A touch held back while its session began, sent after it.
    pub fn resend(&self, op: Op) {
        self.node.borrow_mut().buffer.resend(op);
    }

    /// Whether a revoked session's value, as this VM or another worker of the
    /// node learnt from the collectors (the node's shared list).
    pub fn is_revoked(&self, hash: &CookieHash, now: u64) -> bool {
        self.node.borrow().revoked.is_revoked(hash, now)
            || SessionTable::new(&self.store)
                .is_revoked(hash, now)
                .unwrap_or(false)
    }

    /// After this VM's revoked set may have grown (`before`: its size then):
    /// merges it into the node's shared list, and sets the node's gauge.
    fn share_revoked(&self, before: usize, now: u64) {
        let node = self.node.borrow();
        if node.revoked.len() == before {
            return;
        }
        let mine: Vec<(CookieHash, u64)> = node.revoked.entries().collect();
        drop(node);
        let merged = record::update(
            &self.store,
            REVOKED_KEY,
            |r: &mut Vec<(CookieHash, u64)>| {
                r.retain(|(h, t)| *t >= now && !mine.iter().any(|(m, _)| m == h));
                r.extend(mine.iter().copied());
                (true, r.len())
            },
        );
        match merged {
            Ok(n) => host::set_gauge(self.revoked_metric, n as u64),
            Err(e) => host::warn(&format!(
                "fleet: revoked values not shared with the node: {e}"
            )),
        }
    }

    /// Root context (a tick, a wake-up, an answer with follow-ups): sends what
    /// the node has.
    pub fn flush(&self, now: u64) {
        self.flush_with(now, false);
    }

    /// A flush; `interval`: the interval's (with `enforce_revocation`, an idle
    /// VM then asks for shard 0's revoked list all the same).
    pub fn flush_with(&self, now: u64, interval: bool) {
        let mut node = self.node.borrow_mut();
        let mut calls = node.flush(now);
        if interval && calls.is_empty() {
            calls.extend(node.heartbeat(now));
        }
        drop(node);
        for call in calls {
            let body = serde_json::to_vec(&call.batch).unwrap_or_default();
            match self.call(call.batch.shard, "/batch", &body) {
                Ok(token) => {
                    self.calls.borrow_mut().insert(token, call.id);
                }
                Err(e) => {
                    host::warn(&format!("fleet: a batch not sent ({e}); kept"));
                    self.failures.set(OUTAGE);
                    self.node
                        .borrow_mut()
                        .answered(call.id, Reply::Unreachable, now);
                }
            }
        }
        self.release(now);
    }

    /// Root context: an answer to one of this VM's calls; `None` if the call
    /// was not the fleet's, else the first misses to ask the app about
    /// (`whoami.begin_unknown`; see `Node::ask_unknown`).
    pub fn answered(&self, token: u32, body_size: usize, now: u64) -> Option<Vec<Op>> {
        let id = self.calls.borrow_mut().remove(&token)?;
        let headers = host::Headers::read(MapType::HttpCallResponseHeaders);
        let status = headers
            .get(":status")
            .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
            .unwrap_or(0);
        let reply = match status {
            200 if body_size <= MAX_REPLY => {
                let body =
                    host::body(BufferType::HttpCallResponseBody, body_size).unwrap_or_default();
                match serde_json::from_slice::<BatchReply>(&body) {
                    Ok(r) => Reply::Batch(r),
                    Err(e) => {
                        host::warn(&format!("fleet: an unreadable answer ({e}); kept"));
                        Reply::Unreachable
                    }
                }
            }
            400 => Reply::Refused,
            _ => Reply::Unreachable,
        };
        let was = self.healthy();
        let failures = match reply {
            Reply::Batch(_) => 0,
            _ => self.failures.get().saturating_add(1),
        };
        self.failures.set(failures);
        if was && !self.healthy() {
            // Once per outage; the batches are kept and sent again.
            host::warn(&format!(
                "fleet: the collectors answered {status} (0: no answer) {failures} times in a row; \
                 ops kept until they are back"
            ));
        } else if self.healthy() && !was {
            host::info("fleet: the collectors answer again");
        }
        let before = self.node.borrow().revoked.len();
        let out = self.node.borrow_mut().answered(id, reply, now);
        self.share_revoked(before, now);
        if out.unknown > 0 {
            host::debug(&format!(
                "fleet: {} touches unknown to the shard",
                out.unknown
            ));
        }
        if out.lost > 0 {
            self.lost(out.lost, "a batch the collector refused");
        }
        if self.urgent() {
            self.flush(now);
        } else {
            self.release(now);
        }
        Some(out.missed)
    }
}

impl Fleet {
    pub fn app(&self) -> &AppName {
        &self.app
    }

    /// Sends `body` to `op` of shard `shard` (fleet admin routes); the token
    /// Envoy will answer with.
    pub fn call(&self, shard: u32, op: &str, body: &[u8]) -> Result<u32, String> {
        let path = address::collector_path(&self.app, shard, op);
        let auth = format!("Bearer {}", self.cfg.token);
        let headers = vec![
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", "headcount-collector"),
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
            // Envoy itself tries another pick when a replica refuses the
            // connection (a batch is safe to send twice: it is numbered).
            ("x-envoy-retry-on", "connect-failure,refused-stream"),
            ("x-envoy-max-retries", "2"),
        ];
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        proxy_wasm::hostcalls::dispatch_http_call(
            &self.cfg.cluster,
            headers,
            Some(body),
            Vec::new(),
            timeout,
        )
        .map_err(|s| format!("cluster `{}`: {s:?}", self.cfg.cluster))
    }

    /// A shard ended a session by revocation: the node's side
    /// (`Node::revoked_session`); the follow-ups go at once.
    pub fn revoked_session(
        &self,
        reply: RevokeReply,
        cfg: &Config,
        now: u64,
    ) -> Option<(Session, Vec<RevokedAdd>)> {
        let mut node = self.node.borrow_mut();
        let before = node.revoked.len();
        let out = node.revoked_session(reply, cfg, now);
        node.buffer.urgent = true;
        drop(node);
        self.share_revoked(before, now);
        self.wake();
        out
    }

    /// Revoked values a shard reported (`/revoked`'s answer).
    pub fn revoked_values(&self, values: Vec<(CookieHash, u64)>, now: u64) {
        let before = self.node.borrow().revoked.len();
        self.node.borrow_mut().revoked.add(values, now);
        self.share_revoked(before, now);
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Login { .. } => "a login",
        Op::Bearer { .. } => "a token's session",
        Op::Logout { .. } | Op::EndSession { .. } => "a logout",
        Op::Rotate { .. } | Op::RotateSession { .. } => "a rotation",
        Op::Identify { .. } => "whoami's answer",
        Op::Counts { .. } => "whoami's counts",
        Op::Event { .. } => "an event",
        _ => "a follow-up",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
