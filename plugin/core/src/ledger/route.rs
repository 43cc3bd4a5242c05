//! The node side of the protocol, apart from I/O: which shard each op goes to,
//! what the node learns from replies, and how a multi-shard report is merged.
//! A host sends what `Pending::batches` gives, one request per shard, and feeds
//! the replies back; rounds continue while follow-ups remain.

use super::wire::{Batch, BatchReply, Op, StatsReply, TrafficPart};
use crate::ids::{CookieHash, NodeId, SessionId};
use crate::session::Session;
use crate::traffic::{Traffic, TrafficDelta};
use std::collections::{BTreeMap, HashMap};

/// Cookie hashes whose session id a node has learnt (bounded; cleared when full).
pub const MAX_KNOWN: usize = 65_536;

/// Rounds of cross-shard follow-ups delivered in one flush.
pub const MAX_ROUNDS: usize = 6;

/// cookie hash -> session id, learnt from logins and the shards' follow-ups, so
/// that ops on a known cookie go straight to its session's shard (one round
/// instead of two).
#[derive(Debug, Default)]
pub struct Known {
    map: HashMap<CookieHash, SessionId>,
}

impl Known {
    pub fn get(&self, hash: &CookieHash) -> Option<SessionId> {
        self.map.get(hash).copied()
    }

    fn put(&mut self, hash: CookieHash, id: SessionId) {
        if self.map.len() >= MAX_KNOWN {
            self.map.clear();
        }
        self.map.insert(hash, id);
    }

    pub fn forget(&mut self, hash: &CookieHash) {
        self.map.remove(hash);
    }

    /// Learns cookie -> session from an op a shard returned or the node sends.
    pub fn learn(&mut self, op: &Op) {
        match op {
            Op::Login { session } | Op::Bearer { session, .. } => {
                self.put(session.cookie, session.id)
            }
            Op::TouchSession { id, hash, .. } | Op::Index { hash, id, .. } => self.put(*hash, *id),
            Op::RotateSession { id, via, to, .. } => {
                via.iter()
                    .chain(std::iter::once(to))
                    .for_each(|h| self.put(*h, *id));
            }
            Op::EndSession { hash, .. } | Op::Logout { hash, .. } => self.forget(hash),
            _ => {}
        }
    }

    /// Addresses an op on a cookie whose session is known to the session's shard
    /// directly, skipping the cookie index lookup; learns from it.
    pub fn address(&mut self, op: Op) -> Op {
        let op = match op {
            Op::Touch {
                hash,
                last_ms,
                requests,
                retry,
            } => match self.get(&hash) {
                Some(id) => Op::TouchSession {
                    id,
                    hash,
                    last_ms,
                    requests,
                    retry,
                },
                None => Op::Touch {
                    hash,
                    last_ms,
                    requests,
                    retry,
                },
            },
            Op::Rotate { from, via, to, at } => match self.get(&from) {
                Some(id) => Op::RotateSession { id, via, to, at },
                None => Op::Rotate { from, via, to, at },
            },
            Op::Logout { hash, at } => match self.get(&hash) {
                Some(id) => Op::EndSession { id, hash },
                None => Op::Logout { hash, at },
            },
            other => other,
        };
        self.learn(&op);
        op
    }
}

/// Ops waiting to be sent, by shard.
#[derive(Debug, Default)]
pub struct Pending {
    by_shard: BTreeMap<u32, Vec<Op>>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.by_shard.is_empty()
    }

    pub fn push(&mut self, op: Op, shards: u32) {
        self.by_shard.entry(op.shard(shards)).or_default().push(op);
    }

    /// Everything left, in shard order (to put back in the buffer).
    pub fn into_ops(self) -> Vec<Op> {
        self.by_shard.into_values().flatten().collect()
    }

    /// One batch per shard with ops; `traffic` (if any) rides the first of them,
    /// or a batch of its own to shard 0. `revoked_rev` says which revision of a
    /// shard's revoked list the node holds (`None`: not enforcing).
    pub fn batches(
        &mut self,
        shards: u32,
        now: u64,
        traffic: Option<TrafficPart>,
        revoked_rev: impl Fn(u32) -> Option<u64>,
    ) -> Vec<Batch> {
        let traffic_shard = self.by_shard.keys().next().copied().unwrap_or(0);
        let mut batches: Vec<Batch> = std::mem::take(&mut self.by_shard)
            .into_iter()
            .map(|(shard, ops)| Batch {
                revoked_rev: revoked_rev(shard),
                ..Batch::new(shard, shards, now, ops)
            })
            .collect();
        if let Some(t) = traffic.filter(|t| !t.is_empty()) {
            match batches.iter_mut().find(|b| b.shard == traffic_shard) {
                Some(b) => b.traffic = t,
                None => batches.push(Batch {
                    traffic: t,
                    revoked_rev: revoked_rev(traffic_shard),
                    ..Batch::new(traffic_shard, shards, now, Vec::new())
                }),
            }
        }
        batches
    }

    /// Takes in a shard's reply: its follow-ups join the next round (learnt
    /// first); touches nobody knew are returned, for the buffer to retry.
    pub fn absorb(&mut self, reply: BatchReply, known: &mut Known, shards: u32) -> Vec<Op> {
        for m in &reply.missing {
            if let Op::Touch { hash, .. } = m {
                known.forget(hash);
            }
        }
        for op in reply.forward {
            known.learn(&op);
            self.push(op, shards);
        }
        reply.missing
    }
}

/// A node's numbering of its batches (`Batch::origin`, `Batch::seq`), per shard,
/// and the batches whose answer never came. Such a batch is sent again as it
/// was, before anything newer for its shard, so a shard that did apply it
/// answers from memory and nothing is counted twice.
#[derive(Debug)]
pub struct Sequencer {
    origin: NodeId,
    next: HashMap<u32, u64>,
    /// By shard: the batch, and how often it was sent without an answer.
    unacked: BTreeMap<u32, (Batch, u32)>,
}

/// Sends of one batch without an answer before the node gives it up (a shard
/// that refuses it, say a newer protocol's, would otherwise block its shard).
pub const MAX_SENDS: u32 = 8;

impl Sequencer {
    /// `origin`: a random id for this node (never reused).
    pub fn new(origin: NodeId) -> Sequencer {
        Sequencer {
            origin,
            next: HashMap::new(),
            unacked: BTreeMap::new(),
        }
    }

    /// Numbers a new batch for its shard.
    pub fn stamp(&mut self, batch: &mut Batch) {
        let next = self.next.entry(batch.shard).or_insert(1);
        batch.origin = Some(self.origin);
        batch.seq = *next;
        *next += 1;
    }

    /// A batch whose answer never came: kept to be sent again as it is. False
    /// when it was sent `MAX_SENDS` times already: given up (its ops are lost).
    pub fn failed(&mut self, batch: Batch, sends: u32) -> bool {
        if sends >= MAX_SENDS {
            return false;
        }
        self.unacked.insert(batch.shard, (batch, sends));
        true
    }

    /// A batch whose answer never came, kept to be sent again however often it
    /// failed (a fleet node: the collectors are down, not refusing).
    pub fn keep(&mut self, batch: Batch, sends: u32) {
        self.unacked.insert(batch.shard, (batch, sends));
    }

    pub fn has_unacked(&self) -> bool {
        !self.unacked.is_empty()
    }

    /// Whether a batch for `shard` waits to be sent again.
    pub fn has_unacked_for(&self, shard: u32) -> bool {
        self.unacked.contains_key(&shard)
    }

    /// The batches to send again, with how often each was sent (put back with
    /// `failed` if they fail again).
    pub fn take_unacked(&mut self) -> Vec<(Batch, u32)> {
        std::mem::take(&mut self.unacked).into_values().collect()
    }
}

/// Every shard's share of a report, merged: sessions side by side, traffic added
/// with the core's own merge, and the rows the shards hold.
#[derive(Debug, Default)]
pub struct Gathered {
    pub sessions: Vec<Session>,
    pub traffic: Traffic,
    pub stored_sessions: u64,
    pub stored_cookies: u64,
    pub stored_revoked: u64,
}

impl Gathered {
    pub fn add(&mut self, reply: StatsReply, now: u64) {
        self.sessions.extend(reply.sessions);
        self.stored_sessions += reply.stored_sessions;
        self.stored_cookies += reply.stored_cookies;
        // Every shard keeps every revocation: the largest list is the count.
        self.stored_revoked = self.stored_revoked.max(reply.stored_revoked);
        let t = reply.traffic;
        let counts_today = t.day == now / 86_400_000;
        let delta = TrafficDelta {
            authenticated: if counts_today {
                t.authenticated_today
            } else {
                0
            },
            anonymous: if counts_today { t.anonymous_today } else { 0 },
            buckets: t.ring,
        };
        self.traffic.merge(&delta, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> CookieHash {
        CookieHash([n; 16])
    }

    fn s(n: u8) -> SessionId {
        SessionId([n; 16])
    }

    #[test]
    fn known_cookies_go_straight_to_their_session() {
        let mut known = Known::default();
        let touch = Op::Touch {
            hash: h(1),
            last_ms: 5,
            requests: 2,
            retry: false,
        };
        assert_eq!(known.address(touch.clone()), touch);
        known.learn(&Op::Index {
            hash: h(1),
            id: s(9),
            until: 10,
        });
        assert_eq!(
            known.address(touch),
            Op::TouchSession {
                id: s(9),
                hash: h(1),
                last_ms: 5,
                requests: 2,
                retry: false
            }
        );
        // A logout of a known cookie ends its session directly, and forgets it.
        assert_eq!(
            known.address(Op::Logout { hash: h(1), at: 6 }),
            Op::EndSession {
                id: s(9),
                hash: h(1)
            }
        );
        assert_eq!(known.get(&h(1)), None);
    }

    #[test]
    fn a_batch_that_failed_is_sent_again_with_its_number() {
        let mut seq = Sequencer::new(NodeId([7; 16]));
        let mut a = Batch::new(0, 2, 1, vec![Op::Evict { id: s(2) }]);
        let mut b = Batch::new(0, 2, 1, Vec::new());
        let mut c = Batch::new(1, 2, 1, Vec::new());
        seq.stamp(&mut a);
        seq.stamp(&mut b);
        seq.stamp(&mut c);
        assert_eq!((a.seq, b.seq, c.seq), (1, 2, 1), "numbered per shard");
        assert_eq!(a.origin, Some(NodeId([7; 16])));
        assert!(!seq.has_unacked());
        assert!(seq.failed(b, 1));
        let mut again = seq.take_unacked();
        assert_eq!(again.len(), 1);
        let (b, sends) = again.remove(0);
        assert_eq!((b.shard, b.seq, sends), (0, 2, 1));
        assert!(!seq.has_unacked());
        assert!(!seq.failed(b, MAX_SENDS), "given up after MAX_SENDS");
        assert!(!seq.has_unacked());
    }

    #[test]
    fn traffic_rides_the_first_batch_or_goes_alone_to_shard_zero() {
        let traffic = TrafficPart {
            anonymous: 3,
            buckets: Vec::new(),
        };
        let mut p = Pending::default();
        p.push(Op::Evict { id: s(2) }, 4);
        let b = p.batches(4, 1, Some(traffic.clone()), |_| None);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].traffic.anonymous, 3);
        assert!(p.is_empty());
        let b = p.batches(4, 1, Some(traffic), |s| Some(u64::from(s) + 7));
        assert_eq!((b.len(), b[0].shard, b[0].revoked_rev), (1, 0, Some(7)));
        assert!(p
            .batches(4, 1, Some(TrafficPart::default()), |_| None)
            .is_empty());
    }
}
