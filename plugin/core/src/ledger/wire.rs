//! The ledger protocol: what a node (a Worker isolate today; an Envoy node in
//! fleet mode) sends to the shard that keeps a part of the session ledger, and
//! what it answers. JSON on the wire, versioned (`VERSION`), bounded
//! (`MAX_BATCH_OPS`). Cookie values never travel: only their keyed hashes.
//!
//! An op names a cookie or a session. The ledger keeps sessions by session id and
//! a cookie index (hash -> session id, until) by cookie hash, so an op on a cookie
//! leads to an op on its session, and an op on a session to index updates. A
//! shard applies the follow-ups that belong to it at once and returns the others,
//! which the node delivers next (`route::Pending`).

use crate::events::{Actor, Events, Kind};
use crate::history::History;
use crate::ids::{CookieHash, Id16, NodeId, SessionId, UserKey};
use crate::session::Session;
use crate::traffic::{Bucket, Traffic};
use serde::{Deserialize, Serialize};

/// The protocol version a node speaks (`Batch::v`). A shard refuses a batch of a
/// newer version rather than misread it; absent means 1.
pub const VERSION: u32 = 1;

/// Most ops in one batch; a larger one is refused whole.
pub const MAX_BATCH_OPS: usize = 131_072;

/// How long a shard remembers the last batch of a node (`Batch::origin`), so a
/// retry of it is answered from memory instead of applied twice.
pub const APPLIED_TTL_MS: u64 = 10 * 60_000;

pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

/// One state change, in the order the node saw it. Nodes send `Login`, `Bearer`,
/// `Touch`, `Rotate` and `Logout` (or their session forms, once they know the
/// session); the rest are follow-ups between shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A login succeeded: the session, with its first cookie in `session.cookie`.
    Login { session: Session },
    /// A verified bearer token's session (its key in `session.cookie`, its id
    /// derived from the key): started like a `Login` unless it is live already
    /// (so nodes starting it at once write one session) or the key is revoked.
    /// `requests`: the requests that sighted it, counted here (authenticated,
    /// or anonymous if revoked) instead of by a touch that could land after the
    /// session was evicted (0 from nodes that send the touch; absent before).
    Bearer {
        session: Session,
        #[serde(default, skip_serializing_if = "is_zero")]
        requests: u64,
    },
    /// `requests` requests carried this cookie, the last one at `last_ms`.
    /// `retry`: the second attempt for a cookie that was unknown the first time.
    Touch {
        hash: CookieHash,
        last_ms: u64,
        requests: u64,
        retry: bool,
    },
    /// The app re-issued the cookie: `from` -> each of `via` -> `to` (several
    /// rotations seen by one node between two flushes, oldest first).
    Rotate {
        from: CookieHash,
        via: Vec<CookieHash>,
        to: CookieHash,
        at: u64,
    },
    /// The session behind this cookie is over.
    Logout { hash: CookieHash, at: u64 },
    /// `Touch` once the cookie led to session `id`.
    TouchSession {
        id: SessionId,
        hash: CookieHash,
        last_ms: u64,
        requests: u64,
        retry: bool,
    },
    /// `Rotate` once the cookie led to session `id`.
    RotateSession {
        id: SessionId,
        via: Vec<CookieHash>,
        to: CookieHash,
        at: u64,
    },
    /// `Logout` once the cookie led to session `id`.
    EndSession { id: SessionId, hash: CookieHash },
    /// Cookie `hash` leads to session `id` until `until`.
    Index {
        hash: CookieHash,
        id: SessionId,
        until: u64,
    },
    /// Cookie `hash` leads to session `id` no longer than `until`.
    Shorten {
        hash: CookieHash,
        id: SessionId,
        until: u64,
    },
    /// Cookie `hash` no longer leads to session `id`.
    Unindex { hash: CookieHash, id: SessionId },
    /// Keeps the shard of session `keep` (just logged in) within its share of
    /// `max_sessions`: evicts the longest-idle others.
    Cap { keep: SessionId },
    /// Session `id` ended by a limit (`max_sessions_per_user`): an eviction.
    Evict { id: SessionId },
    /// Session `id` of user `user` (`session::user_key`) logged in at `login_ms`:
    /// the per-user index (only with `max_sessions_per_user`), on the user's shard.
    UserAdd {
        user: UserKey,
        id: SessionId,
        login_ms: u64,
    },
    /// Session `id` of `user` is over.
    UserRemove { user: UserKey, id: SessionId },
    /// Session `id` as the app named it (`whoami`), on the session's shard.
    Identify {
        id: SessionId,
        user_id: String,
        username: String,
        role: String,
    },
    /// Lookups of unknown credentials a node made, for the counters (shard 0).
    Counts {
        whoami: crate::whoami::lookups::Counts,
    },
    /// A session event for the feed and the lifetime counters (kept on shard 0);
    /// `by`: who caused it (a revocation's admin), absent from older nodes.
    Event {
        kind: Kind,
        at: u64,
        id: SessionId,
        username: String,
        role: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<Actor>,
    },
}

/// The key of what only shard 0 keeps: the event feed and the history.
pub const FEED_KEY: [u8; 16] = [0; 16];

impl Op {
    /// The key that decides which shard applies this op: the session id for ops
    /// on sessions, the cookie hash for ops on the cookie index, the user key for
    /// the per-user index.
    pub fn key(&self) -> [u8; 16] {
        *match self {
            Op::Login { session } | Op::Bearer { session, .. } => session.id.bytes(),
            Op::Touch { hash, .. }
            | Op::Logout { hash, .. }
            | Op::Index { hash, .. }
            | Op::Shorten { hash, .. }
            | Op::Unindex { hash, .. } => hash.bytes(),
            Op::Rotate { from, .. } => from.bytes(),
            Op::TouchSession { id, .. }
            | Op::RotateSession { id, .. }
            | Op::EndSession { id, .. }
            | Op::Evict { id, .. }
            | Op::Identify { id, .. } => id.bytes(),
            Op::Cap { keep, .. } => keep.bytes(),
            Op::UserAdd { user, .. } | Op::UserRemove { user, .. } => user.bytes(),
            Op::Event { .. } | Op::Counts { .. } => &FEED_KEY,
        }
    }

    /// Which of `shards` applies this op.
    pub fn shard(&self, shards: u32) -> u32 {
        crate::ids::shard(&self.key(), shards)
    }

    /// The feed event for `kind` happening to `s` at `at`.
    /// What a login whose name whoami settled (`flow::settle`: `who`) tells
    /// its session's shard: its identity, or, naming nobody, the unnamed-login
    /// event (the session is followed unnamed).
    pub fn settled_login(
        id: SessionId,
        who: Option<(String, String, String)>,
        default_role: &str,
        at: u64,
    ) -> Op {
        match who {
            Some((user_id, username, role)) => Op::Identify {
                id,
                user_id,
                username,
                role,
            },
            None => Op::Event {
                kind: Kind::Unnamed(crate::typed::Unnamed::NoIdentity),
                at,
                id,
                username: String::new(),
                role: default_role.to_string(),
                by: None,
            },
        }
    }

    pub fn event(kind: Kind, s: &Session, at: u64) -> Op {
        Op::Event {
            kind,
            at,
            id: s.id,
            username: s.username.clone(),
            role: s.role.clone(),
            by: None,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Traffic counted on a node since its last flush, before the ledger tells which
/// cookies were real (the shard adds those counts itself).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficPart {
    pub anonymous: u64,
    pub buckets: Vec<Bucket>,
}

impl TrafficPart {
    pub fn is_empty(&self) -> bool {
        self.anonymous == 0 && self.buckets.is_empty()
    }
}

/// `POST /batch` to shard `shard` of `shards`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Batch {
    /// Protocol version (`VERSION`); 0 (absent) reads as 1.
    #[serde(default)]
    pub v: u32,
    pub shard: u32,
    pub shards: u32,
    pub now: u64,
    pub ops: Vec<Op>,
    pub traffic: TrafficPart,
    /// With `enforce_revocation`: the revision of this shard's revoked list the
    /// node holds (0: none); the reply carries the list if it changed.
    #[serde(default)]
    pub revoked_rev: Option<u64>,
    /// Who sent it (a random id per node) and its number among that node's
    /// batches to this shard (from 1, no gaps). A batch whose reply was lost is
    /// sent again with the same number: the shard answers it from memory and
    /// counts nothing twice. `None` / 0: not sequenced (applied as it comes).
    #[serde(default)]
    pub origin: Option<NodeId>,
    #[serde(default)]
    pub seq: u64,
}

impl Batch {
    /// A batch of `ops` for `shard`, in this version of the protocol.
    pub fn new(shard: u32, shards: u32, now: u64, ops: Vec<Op>) -> Batch {
        Batch {
            v: VERSION,
            shard,
            shards,
            now,
            ops,
            traffic: TrafficPart::default(),
            revoked_rev: None,
            origin: None,
            seq: 0,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchReply {
    /// Touches of cookies nobody knows yet: the node sends them once more later
    /// (a rotation seen by another node may not have landed).
    pub missing: Vec<Op>,
    /// Follow-ups for other shards.
    pub forward: Vec<Op>,
    /// This shard's revoked cookie list, if its revision is not the one asked with.
    #[serde(default)]
    pub revoked: Option<RevokedList>,
}

/// Cookie hashes of revoked sessions, each with the time it may be forgotten (the
/// session's deadline), at revision `rev` of one shard's list.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokedList {
    pub rev: u64,
    pub entries: Vec<(CookieHash, u64)>,
}

/// `POST /revoke` to the session's shard: ends session `id` (a revocation) on
/// the request of `by`, whom its event names (absent from older nodes).
#[derive(Debug, Serialize, Deserialize)]
pub struct RevokeQuery {
    pub id: SessionId,
    pub shard: u32,
    pub shards: u32,
    #[serde(default)]
    pub by: Option<Actor>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RevokeReply {
    /// The session it ended; `None`: no such live session.
    pub session: Option<Session>,
    /// Follow-ups for other shards (cookie entries, per-user index, the event).
    pub forward: Vec<Op>,
}

/// `POST /revoked` to every shard (with `enforce_revocation`): remember `hashes`,
/// and the cookie entries of session `id` this shard holds, as revoked until `until`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokedAdd {
    pub id: SessionId,
    pub hashes: Vec<CookieHash>,
    pub until: u64,
    pub shard: u32,
    pub shards: u32,
}

/// `POST /feed` (shard 0): the event feed with its counters, and the history.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FeedReply {
    pub events: Events,
    pub history: History,
}

/// `POST /resolve`: the live session behind a cookie (`hash`, on the cookie's
/// shard) or with an id (`id`, on the session's shard), for the admin routes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Resolve {
    pub hash: Option<CookieHash>,
    pub id: Option<SessionId>,
    pub shard: u32,
    pub shards: u32,
    pub now: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ResolveReply {
    pub session: Option<Session>,
    /// The cookie leads to this session id, kept on another shard.
    pub id: Option<SessionId>,
}

/// `POST /stats`: one shard's share of the report.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatsQuery {
    pub now: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StatsReply {
    /// Sessions seen within the active window (the report applies the exact rule).
    pub sessions: Vec<Session>,
    pub traffic: Traffic,
    /// Rows held, for operators and the tests: live sessions and cookie entries
    /// (current cookies, rotated aliases, and orphans).
    pub stored_sessions: u64,
    pub stored_cookies: u64,
    /// Revoked cookie values kept (every shard keeps them all).
    #[serde(default)]
    pub stored_revoked: u64,
}

/// `POST /secret` (shard 0 only): the cookie hash key, made on first use.
#[derive(Debug, Serialize, Deserialize)]
pub struct SecretReply {
    pub secret: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u8) -> SessionId {
        SessionId([n; 16])
    }

    #[test]
    fn a_settled_login_names_its_session_or_reports_it_unnamed() {
        let who = Some(("7".to_string(), "ann".to_string(), "admin".to_string()));
        let named = Op::settled_login(s(1), who, "student", 5);
        assert!(matches!(&named, Op::Identify { id, username, role, .. }
            if *id == s(1) && username == "ann" && role == "admin"));
        let nobody = Op::settled_login(s(1), None, "student", 5);
        assert!(
            matches!(&nobody, Op::Event { kind: Kind::Unnamed(_), role, at: 5, .. }
            if role == "student")
        );
        assert_eq!(named.key(), [1; 16], "to the session's shard");
        assert_eq!(nobody.key(), FEED_KEY, "to the feed's");
    }

    #[test]
    fn ops_go_to_their_shards() {
        let user = crate::session::user_key("3");
        let add = Op::UserAdd {
            user,
            id: s(1),
            login_ms: 0,
        };
        assert_eq!(add.key(), user.0);
        assert_eq!(Op::Evict { id: s(2) }.key(), [2; 16]);
        assert_eq!(Op::Cap { keep: s(3) }.shard(4), s(3).shard(4));
        // A bearer session goes to its session's shard (the id), not its key's.
        let op = Op::Bearer {
            session: crate::ledger::testing::session(5, 6),
            requests: 0,
        };
        assert_eq!(op.key(), [5; 16]);
        let json = serde_json::to_string(&op).unwrap();
        assert!(json.contains("\"op\":\"bearer\""), "{json}");
        assert!(!json.contains("requests"), "as older nodes sent it: {json}");
        assert!(json.contains(&"05".repeat(16)), "ids are hex: {json}");
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), op);
        let event = Op::Event {
            kind: Kind::Login,
            at: 1,
            id: s(4),
            username: "u".into(),
            role: "r".into(),
            by: None,
        };
        assert_eq!(event.shard(8), 0, "the feed lives on shard 0");
        let json = serde_json::to_string(&event).unwrap();
        assert!(!json.contains("\"by\""), "{json}");
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), event);
        let by = Actor::AdminSession {
            username: "root".into(),
            session_id: s(9),
        };
        let revoked = Op::Event {
            kind: Kind::Revocation,
            at: 1,
            id: s(4),
            username: "u".into(),
            role: "r".into(),
            by: Some(by),
        };
        let json = serde_json::to_string(&revoked).unwrap();
        assert!(json.contains(&"09".repeat(16)), "ids are hex: {json}");
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), revoked);
    }

    #[test]
    fn batches_carry_their_version_and_older_ones_still_parse() {
        let batch = Batch::new(0, 1, 5, Vec::new());
        let json = serde_json::to_string(&batch).unwrap();
        assert!(json.contains("\"v\":1"), "{json}");
        // Batches from before the version field (and the revoked revision).
        let old: Batch = serde_json::from_str(
            r#"{"shard":0,"shards":1,"now":0,"ops":[],"traffic":{"anonymous":0,"buckets":[]}}"#,
        )
        .unwrap();
        assert_eq!((old.v, old.revoked_rev, old.seq), (0, None, 0));
    }

    #[test]
    fn a_revoke_names_who_asked_and_one_from_an_older_node_still_parses() {
        let q = RevokeQuery {
            id: s(1),
            shard: 0,
            shards: 1,
            by: Some(Actor::AdminToken),
        };
        let json = serde_json::to_string(&q).unwrap();
        let back: RevokeQuery = serde_json::from_str(&json).unwrap();
        assert_eq!(back.by, Some(Actor::AdminToken));
        let old: RevokeQuery = serde_json::from_str(&format!(
            r#"{{"id":"{}","shard":0,"shards":1}}"#,
            s(1).hex()
        ))
        .unwrap();
        assert_eq!((old.id, old.by), (s(1), None));
    }

    #[test]
    fn ops_are_tagged_json() {
        let op = Op::Logout {
            hash: CookieHash([1; 16]),
            at: 5,
        };
        let json = serde_json::to_string(&op).unwrap();
        assert!(json.contains("\"op\":\"logout\""), "{json}");
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), op);
    }
}
