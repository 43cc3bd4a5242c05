//! A bounded feed of recent session events and the lifetime counters behind the
//! Prometheus metrics.

use crate::session::{Session, SessionId};
use crate::stats::rfc3339;
use crate::typed::Unnamed;
use serde::{Deserialize, Serialize};

pub const EVENTS_KEY: &str = "headcount.v1.events";
/// Events kept; older ones fall off.
pub const MAX_EVENTS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Login,
    Logout,
    Expiry,
    Eviction,
    Revocation,
    /// A login the app accepted that names nobody, or whose typed name was
    /// ambiguous (then another source may have named the user).
    Unnamed(Unnamed),
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Logout => "logout",
            Kind::Expiry => "expiry",
            Kind::Eviction => "eviction",
            Kind::Revocation => "revocation",
            Kind::Unnamed(_) => "unnamed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub kind: Kind,
    pub at_ms: u64,
    pub username: String,
    pub role: String,
    pub session_id: SessionId,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Events {
    pub next_seq: u64,
    pub logins_total: u64,
    pub logouts_total: u64,
    pub expiries_total: u64,
    pub evictions_total: u64,
    pub revocations_total: u64,
    /// Unnamed logins, per `Unnamed::ALL` reason.
    #[serde(default)]
    pub unnamed_totals: [u64; 5],
    /// Lookups of unknown credentials (`whoami.begin_unknown`).
    #[serde(default)]
    pub whoami: crate::whoami::lookups::Counts,
    /// Oldest first.
    pub recent: Vec<Event>,
}

impl Events {
    pub fn push(&mut self, kind: Kind, session: &Session, at_ms: u64) {
        self.push_for(kind, session.id, &session.username, &session.role, at_ms);
    }

    /// `push` with only what an event keeps of its session.
    pub fn push_for(&mut self, kind: Kind, id: SessionId, username: &str, role: &str, at_ms: u64) {
        if let Some(counter) = self.counter(kind) {
            *counter += 1;
        }
        self.recent.push(Event {
            seq: self.next_seq,
            kind,
            at_ms,
            username: username.to_string(),
            role: role.to_string(),
            session_id: id,
        });
        self.next_seq += 1;
        if self.recent.len() > MAX_EVENTS {
            let extra = self.recent.len() - MAX_EVENTS;
            self.recent.drain(..extra);
        }
    }

    fn counter(&mut self, kind: Kind) -> Option<&mut u64> {
        match kind {
            Kind::Login => Some(&mut self.logins_total),
            Kind::Logout => Some(&mut self.logouts_total),
            Kind::Expiry => Some(&mut self.expiries_total),
            Kind::Eviction => Some(&mut self.evictions_total),
            Kind::Revocation => Some(&mut self.revocations_total),
            // `Unnamed::ALL` is in declaration order.
            Kind::Unnamed(why) => self.unnamed_totals.get_mut(why as usize),
        }
    }

    /// Events with `seq >= after`, newest first.
    pub fn view(&self, after: u64) -> EventsView {
        EventsView {
            events: self
                .recent
                .iter()
                .rev()
                .filter(|e| e.seq >= after)
                .map(|e| EventView {
                    seq: e.seq,
                    kind: e.kind.name(),
                    reason: match e.kind {
                        Kind::Unnamed(why) => Some(why.name()),
                        _ => None,
                    },
                    at: rfc3339(e.at_ms),
                    username: e.username.clone(),
                    role: e.role.clone(),
                    session_id: uuid::Uuid::from_bytes(e.session_id.0)
                        .hyphenated()
                        .to_string(),
                })
                .collect(),
            next: self.next_seq,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventView {
    pub seq: u64,
    pub kind: &'static str,
    /// Why an `unnamed` event names nobody.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub at: String,
    pub username: String,
    pub role: String,
    pub session_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventsView {
    pub events: Vec<EventView>,
    pub next: u64,
}

/// `after=N` from a request path's query string (0 when absent or malformed).
pub fn after_param(path: &[u8]) -> u64 {
    crate::gateway::query_param(path, "after").unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str) -> Session {
        Session {
            id: SessionId([7; 16]),
            user_id: name.into(),
            username: name.into(),
            role: "student".into(),
            ip: String::new(),
            user_agent: String::new(),
            login_ms: 0,
            last_ms: 0,
            cookie: crate::session::CookieHash([0; 16]),
            aliases: vec![],
        }
    }

    #[test]
    fn bounded_newest_first_with_counters() {
        let mut e = Events::default();
        for i in 0..150 {
            e.push(
                if i % 2 == 0 {
                    Kind::Login
                } else {
                    Kind::Logout
                },
                &s("a"),
                i,
            );
        }
        e.push(Kind::Expiry, &s("b"), 200);
        assert_eq!(e.recent.len(), MAX_EVENTS);
        assert_eq!(
            (e.logins_total, e.logouts_total, e.expiries_total),
            (75, 75, 1)
        );
        let v = e.view(148);
        assert_eq!(
            v.events.iter().map(|x| x.seq).collect::<Vec<_>>(),
            vec![150, 149, 148]
        );
        assert_eq!(v.events[0].kind, "expiry");
        assert_eq!(v.next, 151);
    }

    #[test]
    fn after_param_parses_or_defaults() {
        assert_eq!(after_param(b"/__headcount/events?after=12"), 12);
        assert_eq!(after_param(b"/__headcount/events?after=x"), 0);
        assert_eq!(after_param(b"/__headcount/events"), 0);
    }
}
