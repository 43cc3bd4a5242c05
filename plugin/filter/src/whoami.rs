//! The Envoy side of `whoami` (the core's `whoami.rs`): a login's stream queues
//! a lookup; the VM's root context sends it on its next tick (every
//! `flush_interval_ms / FLUSH_SLICES`: a call made by the stream itself would be
//! cancelled with the stream, which never waits for it) with
//! `dispatch_http_call` to the app's cluster, and settles the session when
//! Envoy hands the answer back (or the timeout's empty one).

use crate::host;
use crate::vm::Vm;
use headcount_core::events::Kind;
use headcount_core::flow;
use headcount_core::identity::{self, CookieChange, Identity};
use headcount_core::ids::{CookieHash, SessionId};
use headcount_core::typed::Unnamed;
use headcount_core::whoami::Credential;
use proxy_wasm::types::{BufferType, MapType};
use std::collections::BTreeMap;
use std::time::Duration;

/// Lookups waiting for a tick, per VM; past it the session is named by the
/// login's later sources at once (and the log says so).
pub const MAX_QUEUED: usize = 256;

/// One session to ask the app about.
pub struct Lookup {
    pub id: SessionId,
    /// The session cookie's hash, to follow a rotation on the answer.
    pub hash: CookieHash,
    /// The session's cookie or token: held only until the call is sent.
    pub credential: Option<Credential>,
    /// The login request's `:authority`, unless configured.
    pub authority: Vec<u8>,
    /// What names the session if the app cannot say.
    pub fallback: Identity,
}

/// A VM's lookups: queued by streams, in flight by call token.
#[derive(Default)]
pub struct Calls {
    queued: Vec<Lookup>,
    in_flight: BTreeMap<u32, Lookup>,
}

impl Calls {
    /// Queues a lookup; gives it back when the queue is full.
    pub fn queue(&mut self, lookup: Lookup) -> Result<(), Lookup> {
        if self.queued.len() >= MAX_QUEUED {
            return Err(lookup);
        }
        self.queued.push(lookup);
        Ok(())
    }
}

/// Root context, on each tick: sends every queued lookup. One that cannot be
/// sent (no such cluster, a cookie that is not text) is settled by its fallback.
pub fn send(vm: &Vm, now: u64) {
    let Some(w) = vm.cfg.whoami.as_ref() else {
        return;
    };
    let queued = std::mem::take(&mut vm.whoami.borrow_mut().queued);
    for mut lookup in queued {
        let authority = w
            .authority
            .as_deref()
            .map(str::as_bytes)
            .unwrap_or(&lookup.authority)
            .to_vec();
        let Some(credential) = lookup.credential.take() else {
            settle(vm, lookup, None, now);
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
                vm.whoami.borrow_mut().in_flight.insert(token, lookup);
            }
            Some(Err(status)) => {
                host::warn(&format!(
                    "whoami call to cluster `{}` not sent ({status:?}); the login's other sources name it",
                    w.cluster
                ));
                settle(vm, lookup, None, now);
            }
            None => settle(vm, lookup, None, now),
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
        host::info(&format!(
            "whoami answered {status} naming nobody; the login's other sources name it"
        ));
    }
    // A cookie the app rotates on this answer is followed.
    let name = &vm.cfg.session_cookie;
    let rotated = headers
        .all("set-cookie")
        .rev()
        .find_map(|v| identity::set_cookie(v, name, now));
    if let Some(CookieChange::Set(value)) = rotated {
        let to = vm.hasher.hash(&value);
        if to != lookup.hash {
            if let Err(e) = vm.table().rotate(&lookup.hash, &to, now, &vm.cfg) {
                host::warn(&format!("whoami's cookie rotation not followed: {e}"));
            }
        }
    }
    settle(vm, lookup, answer, now);
}

/// Names the session: the app's answer, else the fallback; nobody at all is
/// counted as an unnamed login.
fn settle(vm: &Vm, lookup: Lookup, answer: Option<Identity>, now: u64) {
    let cfg = &vm.cfg;
    let Some(who) = flow::settle(cfg, answer, lookup.fallback) else {
        host::warn("login names nobody (whoami and the other sources); followed unnamed");
        host::add_counter(vm.metrics.unnamed, 1);
        if let Ok(Some(s)) = vm.table().session_by_id(&lookup.id) {
            vm.events(Kind::Unnamed(Unnamed::NoIdentity), &[s], now);
        }
        return;
    };
    match vm.table().identify(&lookup.id, &who, cfg) {
        Ok(Some((s, evicted))) => {
            host::info(&format!(
                "whoami: {} as {} ({})",
                s.username,
                s.role,
                s.uuid()
            ));
            if !evicted.is_empty() {
                for e in &evicted {
                    vm.forget(e, &e.cookie);
                }
                host::add_counter(vm.metrics.evictions, evicted.len() as u64);
                vm.events(Kind::Eviction, &evicted, now);
            }
        }
        Ok(None) => {}
        Err(e) => host::warn(&format!("whoami's answer not recorded: {e}")),
    }
}
