//! The Envoy side of `whoami` (the core's `whoami`): who a session is, asked
//! of the app. Two kinds of lookups, both sent by the VM's root context on its
//! next tick (every `flush_interval_ms / FLUSH_SLICES`; a call made by a stream
//! would be cancelled with the stream, which never waits for it) with
//! `dispatch_http_call` to the app's cluster:
//! - a login's (queued by its stream): names the session it started;
//! - an unknown credential's (`begin_unknown`, queued by a flush that did not
//!   find its session): begins the session the app names, within the budget:
//!   `lookups_per_second` per node (a window in shared data, so every worker
//!   counts against one allowance) and `max_in_flight` per VM.

use crate::fleet::Fleet;
use crate::host;
use crate::vm::Vm;
use headcount_core::activity;
use headcount_core::bearer::{self, Start};
use headcount_core::events::{Events, Kind, EVENTS_KEY};
use headcount_core::flow;
use headcount_core::identity::{self, CookieChange, Identity};
use headcount_core::ids::{CookieHash, SessionId};
use headcount_core::ledger::wire::Op;
use headcount_core::record;
use headcount_core::typed::Unnamed;
use headcount_core::whoami::lookups::{self, Candidate, Counts, Verdict, Window};
use headcount_core::whoami::Credential;
use proxy_wasm::types::{BufferType, MapType};
use std::collections::BTreeMap;
use std::time::Duration;

/// Lookups waiting for a tick, per VM. A login's past it is named by its
/// later sources at once; an unknown credential's is not asked (throttled).
pub const MAX_QUEUED: usize = 256;

/// The per-second window of unknown-credential lookups, shared by the node.
const WINDOW_KEY: &str = "headcount.v1.whoami.window";

/// Whose lookup it is.
pub enum Asking {
    /// A login's session `id`; `fallback` names it if the app cannot.
    Login { id: SessionId, fallback: Identity },
    /// A credential no session was found for; the request's facts.
    Unknown { ip: String, user_agent: String },
}

/// One credential to ask the app about.
pub struct Lookup {
    pub kind: Asking,
    /// The credential's hash: the session's key.
    pub hash: CookieHash,
    /// The session's cookie or token: held only until the call is sent.
    pub credential: Option<Credential>,
    /// The request's `:authority`, unless configured.
    pub authority: Vec<u8>,
    /// Fleet mode: the unknown credential's touch, held until the answer
    /// (sent after the session it begins, or tried once more).
    pub touch: Option<Box<Op>>,
}

impl Lookup {
    /// The lookup of a credential a flush found no session for.
    pub fn unknown(hash: CookieHash, c: Candidate) -> Lookup {
        Lookup {
            kind: Asking::Unknown {
                ip: c.ip,
                user_agent: c.user_agent,
            },
            hash,
            credential: Some(c.credential),
            authority: c.authority,
            touch: None,
        }
    }
}

/// A VM's lookups: queued, in flight by call token, and what it remembers.
#[derive(Default)]
pub struct Calls {
    queued: Vec<Lookup>,
    in_flight: BTreeMap<u32, Lookup>,
    /// Unknown-credential lookups in flight (bounded by `max_in_flight`).
    unknown_in_flight: u32,
    /// Requests' credentials until a flush shows whether they are known.
    pub candidates: lookups::Candidates,
    /// Credentials the app named nobody for lately.
    pub nobody: lookups::Nobody,
}

impl Calls {
    /// Whether the app is being asked about this credential (a lookup queued
    /// or in flight): its buffered requests wait for the answer.
    pub fn asking(&self, hash: &CookieHash) -> activity::Asking {
        let asked = |l: &Lookup| l.hash == *hash;
        if self.queued.iter().any(asked) || self.in_flight.values().any(asked) {
            activity::Asking::Yes
        } else {
            activity::Asking::No
        }
    }

    /// Queues a lookup; gives it back when the queue is full.
    pub fn queue(&mut self, lookup: Lookup) -> Result<(), Lookup> {
        let asked = |l: &Lookup| l.hash == lookup.hash;
        let unknown = matches!(lookup.kind, Asking::Unknown { .. });
        if unknown && (self.queued.iter().any(asked) || self.in_flight.values().any(asked)) {
            return Ok(()); // already being asked
        }
        if self.queued.len() >= MAX_QUEUED {
            return Err(lookup);
        }
        self.queued.push(lookup);
        Ok(())
    }
}

/// Root context, on each tick: sends the queued lookups. A login's that cannot
/// be sent is settled by its fallback; an unknown credential's over the budget
/// is dropped and counted as throttled.
pub fn send(vm: &Vm, now: u64) {
    let Some(w) = vm.cfg.whoami.as_ref() else {
        return;
    };
    let queued = std::mem::take(&mut vm.whoami.borrow_mut().queued);
    let mut counts = Counts::default();
    for mut lookup in queued {
        if matches!(lookup.kind, Asking::Unknown { .. }) {
            let busy = vm.whoami.borrow().unknown_in_flight >= w.max_in_flight;
            if busy || !admit(vm, now, w.lookups_per_second) {
                counts.throttled += 1;
                if let (Some(f), Some(t)) = (&vm.fleet, lookup.touch.take()) {
                    f.retry(*t);
                }
                continue;
            }
        }
        let authority = w
            .authority
            .as_deref()
            .map(str::as_bytes)
            .unwrap_or(&lookup.authority)
            .to_vec();
        let Some(credential) = lookup.credential.take() else {
            let _ = finish(vm, lookup, None, now);
            continue;
        };
        let headers = w.headers(&credential);
        let text: Option<Vec<(&str, &str)>> = headers
            .iter()
            .map(|(k, v)| std::str::from_utf8(v).ok().map(|v| (*k, v)))
            .chain(std::iter::once(
                std::str::from_utf8(&authority)
                    .ok()
                    .map(|a| (":authority", a)),
            ))
            .collect();
        let timeout = Duration::from_millis(w.timeout_ms);
        let sent = text.map(|h| {
            proxy_wasm::hostcalls::dispatch_http_call(&w.cluster, h, None, Vec::new(), timeout)
        });
        match sent {
            Some(Ok(token)) => {
                let mut calls = vm.whoami.borrow_mut();
                if matches!(lookup.kind, Asking::Unknown { .. }) {
                    calls.unknown_in_flight += 1;
                }
                calls.in_flight.insert(token, lookup);
            }
            Some(Err(status)) => {
                host::warn(&format!(
                    "whoami call to cluster `{}` not sent ({status:?})",
                    w.cluster
                ));
                finish(vm, lookup, None, now);
            }
            None => {
                finish(vm, lookup, None, now);
            }
        }
    }
    count(vm, counts);
}

/// Takes one lookup from the node's allowance for this second.
fn admit(vm: &Vm, now: u64, per_second: u32) -> bool {
    let admitted = record::update(&vm.store, WINDOW_KEY, |w: &mut Window| {
        let ok = w.admit(now, per_second);
        (ok, ok)
    });
    match admitted {
        Ok(ok) => ok,
        Err(e) => {
            host::warn(&format!("whoami budget unreadable ({e}); not asked"));
            false
        }
    }
}

/// Root context, when Envoy hands back the answer to call `token` (also a
/// timeout or a reset: then there are no headers).
pub fn answered(vm: &Vm, token: u32, body_size: usize, now: u64) {
    let Some(lookup) = vm.whoami.borrow_mut().in_flight.remove(&token) else {
        return;
    };
    let Some(w) = vm.cfg.whoami.as_ref() else {
        return;
    };
    if matches!(lookup.kind, Asking::Unknown { .. }) {
        let mut calls = vm.whoami.borrow_mut();
        calls.unknown_in_flight = calls.unknown_in_flight.saturating_sub(1);
    }
    let headers = host::Headers::read(MapType::HttpCallResponseHeaders);
    let status = headers
        .get(":status")
        .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
        .unwrap_or(0);
    let body = match body_size {
        0 => Vec::new(),
        n if n <= headcount_core::whoami::MAX_ANSWER => {
            host::body(BufferType::HttpCallResponseBody, n).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let answer = w.answer(status, &body);
    if answer.is_none() {
        host::info(&format!("whoami answered {status} naming nobody"));
    }
    // A cookie the app rotates on this answer is followed.
    let name = &vm.cfg.session_cookie;
    let rotated = headers
        .all("set-cookie")
        .rev()
        .find_map(|v| identity::set_cookie(v, name, now));
    let finished = finish(vm, lookup, answer, now);
    if let (Some(CookieChange::Set(value)), Some(from)) = (rotated, finished) {
        let to = vm.hasher.hash(&value);
        if let Some(f) = vm.fleet.as_ref().filter(|_| to != from) {
            let rotate = Op::Rotate {
                from,
                via: Vec::new(),
                to,
                at: now,
            };
            f.push(rotate);
        } else if to != from {
            if let Err(e) = vm.table().rotate(&from, &to, now, &vm.cfg) {
                host::warn(&format!("whoami's cookie rotation not followed: {e}"));
            }
        }
    }
}

/// A lookup that could not even be queued: settled as if the app did not answer.
pub fn settle_unasked(vm: &Vm, lookup: Lookup, now: u64) {
    let _ = finish(vm, lookup, None, now);
}

/// Settles a lookup; returns the key of the session it named or began.
fn finish(vm: &Vm, lookup: Lookup, answer: Option<Identity>, now: u64) -> Option<CookieHash> {
    match lookup.kind {
        Asking::Login { id, fallback } => {
            name_login(vm, id, flow::settle(&vm.cfg, answer, fallback), now);
            Some(lookup.hash)
        }
        Asking::Unknown { ip, user_agent } => {
            let facts = (ip, user_agent);
            let v = lookups::verdict(&vm.cfg, &vm.hasher, lookup.hash, facts, answer, now);
            match &vm.fleet {
                Some(f) => fleet_begin(vm, f, lookup.hash, v, lookup.touch, now),
                None => begin(vm, lookup.hash, v, now),
            }
        }
    }
}

/// Fleet mode: the touches a batch's shard did not know (first misses). Those
/// with a kept credential are held and asked about; the rest are tried once
/// more, as without `begin_unknown`.
pub fn missed(vm: &Vm, fleet: &Fleet, missed: Vec<Op>, now: u64) {
    let mut calls = vm.whoami.borrow_mut();
    for op in missed {
        let Op::Touch { hash, .. } = &op else {
            fleet.retry(op);
            continue;
        };
        let hash = *hash;
        let c = calls
            .candidates
            .take(&hash)
            .filter(|_| !calls.nobody.holds(&hash, now));
        let Some(c) = c else {
            fleet.retry(op);
            continue;
        };
        let lookup = Lookup {
            touch: Some(Box::new(op)),
            ..Lookup::unknown(hash, c)
        };
        if let Err(mut lookup) = calls.queue(lookup) {
            lookup
                .touch
                .take()
                .into_iter()
                .for_each(|t| fleet.retry(*t));
        }
    }
    calls.candidates.prune(now, |_| false);
}

/// Fleet mode: begins the session of an unknown credential the app named (an
/// `Op::Bearer`: the ledger starts it unless it is live or revoked), the held
/// touch after it; or remembers that it named nobody.
fn fleet_begin(
    vm: &Vm,
    fleet: &Fleet,
    hash: CookieHash,
    verdict: Verdict,
    touch: Option<Box<Op>>,
    now: u64,
) -> Option<CookieHash> {
    match verdict {
        Verdict::Begin(session) => {
            host::info(&format!(
                "whoami: session of {} as {} begins ({})",
                session.username,
                session.role,
                session.uuid()
            ));
            if !fleet.push(Op::Bearer {
                session,
                requests: 0,
            }) {
                touch.into_iter().for_each(|t| fleet.retry(*t));
                return None;
            }
            touch.into_iter().for_each(|t| fleet.resend(*t));
            count(vm, Counts::BEGUN);
            Some(hash)
        }
        Verdict::Nobody { until } => {
            vm.whoami.borrow_mut().nobody.remember(hash, until, now);
            touch.into_iter().for_each(|t| fleet.retry(*t));
            count(vm, Counts::NOBODY);
            None
        }
    }
}

/// Names a login's session: the app's answer, else its fallback; nobody at all
/// is counted as an unnamed login.
fn name_login(vm: &Vm, id: SessionId, who: Option<(String, String, String)>, now: u64) {
    let cfg = &vm.cfg;
    if let Some(f) = &vm.fleet {
        if who.is_none() {
            host::warn("login names nobody (whoami and the other sources); followed unnamed");
            host::add_counter(vm.metrics.unnamed, 1);
        }
        let op = Op::settled_login(id, who, &cfg.default_role, now);
        f.push(op);
        return;
    }
    let Some(who) = who else {
        host::warn("login names nobody (whoami and the other sources); followed unnamed");
        host::add_counter(vm.metrics.unnamed, 1);
        if let Ok(Some(s)) = vm.table().session_by_id(&id) {
            vm.events(Kind::Unnamed(Unnamed::NoIdentity), &[s], now);
        }
        return;
    };
    match vm.table().identify(&id, &who, cfg) {
        Ok(Some((s, evicted))) => {
            host::info(&format!(
                "whoami: {} as {} ({})",
                s.username,
                s.role,
                s.uuid()
            ));
            evictions(vm, &evicted, now);
        }
        Ok(None) => {}
        Err(e) => host::warn(&format!("whoami's answer not recorded: {e}")),
    }
}

/// Begins the session of an unknown credential the app named (unless it is
/// live by now, or revoked), or remembers that it named nobody.
fn begin(vm: &Vm, hash: CookieHash, verdict: Verdict, now: u64) -> Option<CookieHash> {
    let (table, cfg) = (vm.table(), &vm.cfg);
    let session = match verdict {
        Verdict::Begin(s) => s,
        Verdict::Nobody { until } => {
            vm.whoami.borrow_mut().nobody.remember(hash, until, now);
            count(vm, Counts::NOBODY);
            return None;
        }
    };
    let existing = table.resolve(&hash, now).ok().flatten();
    let revoked = table.is_revoked(&hash, now).unwrap_or(true);
    match bearer::start(existing.as_ref(), revoked, now, cfg) {
        Start::Live => return Some(hash),
        Start::Revoked => {
            count(vm, Counts::NOBODY);
            return None;
        }
        Start::Restart | Start::New => {}
    }
    match table.insert(session.clone(), cfg) {
        Ok(evicted) => {
            evictions(vm, &evicted, now);
            host::add_counter(vm.metrics.logins, 1);
            vm.events(Kind::Login, std::slice::from_ref(&session), now);
            host::info(&format!(
                "whoami: session of {} as {} begins ({})",
                session.username,
                session.role,
                session.uuid()
            ));
            count(vm, Counts::BEGUN);
            Some(hash)
        }
        Err(e) => {
            host::warn(&format!("whoami's session not begun: {e}"));
            None
        }
    }
}

fn evictions(vm: &Vm, evicted: &[headcount_core::Session], now: u64) {
    if evicted.is_empty() {
        return;
    }
    for e in evicted {
        vm.forget(e, &e.cookie);
    }
    host::add_counter(vm.metrics.evictions, evicted.len() as u64);
    vm.events(Kind::Eviction, evicted, now);
}

/// Adds lookup outcomes to the node's counters (the metrics route's, and
/// Envoy's own).
fn count(vm: &Vm, counts: Counts) {
    if counts.is_empty() {
        return;
    }
    host::add_counter(vm.metrics.whoami_begun, counts.begun);
    host::add_counter(vm.metrics.whoami_nobody, counts.nobody);
    host::add_counter(vm.metrics.whoami_throttled, counts.throttled);
    if let Some(f) = &vm.fleet {
        f.push(Op::Counts { whoami: counts });
    } else {
        let added = record::update(&vm.store, EVENTS_KEY, |ev: &mut Events| {
            ev.whoami.add(counts);
            (true, ())
        });
        if let Err(e) = added {
            host::warn(&format!("whoami counts not recorded: {e}"));
        }
    }
    if counts.throttled > 0 {
        host::warn(&format!(
            "whoami: {} lookups of unknown credentials not sent (over lookups_per_second or max_in_flight)",
            counts.throttled
        ));
    }
}
