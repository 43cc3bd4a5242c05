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

/// Who caused an event an admin causes (a revocation): what authorized the
/// request, as `gateway::actor` tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// The bearer `admin_token`, which names nobody.
    AdminToken,
    /// An admin-role session: its cookie, or a verified JWT that names an admin.
    AdminSession {
        username: String,
        session_id: SessionId,
    },
}

impl Actor {
    /// An admin-role session as the actor.
    pub fn session(s: &Session) -> Actor {
        Actor::AdminSession {
            username: s.username.clone(),
            session_id: s.id,
        }
    }

    fn view(&self) -> ActorView {
        match self {
            Actor::AdminToken => ActorView::AdminToken,
            Actor::AdminSession {
                username,
                session_id,
            } => ActorView::AdminSession {
                username: username.clone(),
                session_id: uuid_of(session_id),
            },
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
    /// Who caused it: set on revocations, `None` on the rest (and on revocations
    /// recorded before it existed). The Worker keeps events as JSON, where an
    /// absent field reads as `None`; Envoy's shared data keeps them in postcard,
    /// where the feed of an older filter reads as empty instead (`record::load`:
    /// undecodable is default), once, on an upgrade without an Envoy restart.
    #[serde(default)]
    pub by: Option<Actor>,
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
        self.push_for(
            kind,
            session.id,
            &session.username,
            &session.role,
            at_ms,
            None,
        );
    }

    /// Session `session` was revoked by `by`.
    pub fn push_revocation(&mut self, session: &Session, by: Option<Actor>, at_ms: u64) {
        let (id, name, role) = (session.id, &session.username, &session.role);
        self.push_for(Kind::Revocation, id, name, role, at_ms, by);
    }

    /// `push` with only what an event keeps of its session, and who caused it.
    pub fn push_for(
        &mut self,
        kind: Kind,
        id: SessionId,
        username: &str,
        role: &str,
        at_ms: u64,
        by: Option<Actor>,
    ) {
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
            by,
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
                    session_id: uuid_of(&e.session_id),
                    by: e.by.as_ref().map(Actor::view),
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
    /// Who caused it (revocations): `{"via": "admin_token"}` or
    /// `{"via": "admin_session", "username": ..., "session_id": ...}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<ActorView>,
}

/// `Actor` in the events route's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum ActorView {
    AdminToken,
    AdminSession {
        username: String,
        session_id: String,
    },
}

fn uuid_of(id: &SessionId) -> String {
    uuid::Uuid::from_bytes(id.0).hyphenated().to_string()
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
    fn a_revocation_names_who_revoked_and_other_events_nobody() {
        let mut e = Events::default();
        e.push(Kind::Login, &s("a"), 1);
        e.push_revocation(&s("a"), Some(Actor::AdminToken), 2);
        let admin = Session {
            id: SessionId([9; 16]),
            role: "admin".into(),
            ..s("root")
        };
        e.push_revocation(&s("b"), Some(Actor::session(&admin)), 3);
        e.push_revocation(&s("c"), None, 4);
        assert_eq!(e.revocations_total, 3);
        let json = serde_json::to_value(e.view(0)).unwrap();
        let events = json["events"].as_array().unwrap();
        assert_eq!(events[0]["kind"], "revocation");
        assert!(events[0].get("by").is_none(), "unknown: no field");
        assert_eq!(
            events[1]["by"],
            serde_json::json!({
                "via": "admin_session",
                "username": "root",
                "session_id": admin.uuid(),
            })
        );
        assert_eq!(events[2]["by"], serde_json::json!({"via": "admin_token"}));
        assert_eq!(events[3]["kind"], "login");
        assert!(events[3].get("by").is_none(), "{}", events[3]);
    }

    /// `Event` and `Events` as they were before `Event::by`.
    #[derive(Serialize)]
    struct OldEvent {
        seq: u64,
        kind: Kind,
        at_ms: u64,
        username: String,
        role: String,
        session_id: SessionId,
    }

    #[derive(Serialize)]
    struct OldEvents {
        next_seq: u64,
        totals: [u64; 5],
        unnamed_totals: [u64; 5],
        whoami: crate::whoami::lookups::Counts,
        recent: Vec<OldEvent>,
    }

    fn old_feed(first: u64, kinds: &[Kind], names: &[&str]) -> OldEvents {
        let recent: Vec<OldEvent> = kinds
            .iter()
            .zip(names.iter().cycle())
            .enumerate()
            .map(|(i, (kind, name))| OldEvent {
                seq: first + i as u64,
                kind: *kind,
                at_ms: 1_800_000_000_000 + i as u64,
                username: name.to_string(),
                role: "student".into(),
                session_id: SessionId([i as u8; 16]),
            })
            .collect();
        OldEvents {
            next_seq: first + recent.len() as u64,
            totals: [1; 5],
            unnamed_totals: [0; 5],
            whoami: Default::default(),
            recent,
        }
    }

    #[test]
    fn a_feed_stored_before_who_revoked_reads_as_none_in_json_and_fresh_in_postcard() {
        // The Worker keeps the feed as JSON: old events read, naming nobody.
        let old = old_feed(0, &[Kind::Login, Kind::Revocation], &["a"]);
        let json = serde_json::to_string(&old).unwrap().replace(
            r#""totals":[1,1,1,1,1]"#,
            r#""logins_total":1,"logouts_total":0,"expiries_total":0,"evictions_total":0,"revocations_total":1"#,
        );
        let e: Events = serde_json::from_str(&json).unwrap();
        assert_eq!((e.recent.len(), e.revocations_total), (2, 1));
        assert!(e.recent.iter().all(|x| x.by.is_none()));
        // Envoy's shared data keeps it in postcard, which has no field names: an
        // older filter's feed does not decode (`record::load` then starts a fresh
        // one) rather than decode into other values. Young feeds (from seq 0,
        // where a seq reads as `Some`), one event, full ones, every kind.
        let kinds = [
            Kind::Login,
            Kind::Logout,
            Kind::Expiry,
            Kind::Eviction,
            Kind::Revocation,
            Kind::Unnamed(crate::typed::Unnamed::NoIdentity),
        ];
        let names = ["", "a", "bo", "eve", "alice", "x".repeat(200).leak()];
        for first in [0, 1, 127, 128, 500] {
            for n in [1, 2, 3, 7, MAX_EVENTS] {
                for k in 0..kinds.len() {
                    for skip in 0..names.len() {
                        let order: Vec<Kind> =
                            kinds.iter().cycle().skip(k).take(n).copied().collect();
                        let who: Vec<&str> =
                            names.iter().cycle().skip(skip).take(n).copied().collect();
                        let bytes = postcard::to_allocvec(&old_feed(first, &order, &who)).unwrap();
                        let read = postcard::from_bytes::<Events>(&bytes);
                        assert!(read.is_err(), "{first} {n} {k} {skip}: {read:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn after_param_parses_or_defaults() {
        assert_eq!(after_param(b"/__headcount/events?after=12"), 12);
        assert_eq!(after_param(b"/__headcount/events?after=x"), 0);
        assert_eq!(after_param(b"/__headcount/events"), 0);
    }
}
