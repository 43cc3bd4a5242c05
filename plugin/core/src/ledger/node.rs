//! A fleet node's side of the ledger for a host whose calls are answered later,
//! in a callback (an Envoy VM's `dispatch_http_call`), with no I/O of its own:
//! the host records activity into `buffer`, asks `flush` for the calls to make,
//! makes them, and hands each answer (or failure) to `answered`.
//!
//! The rules it keeps, as a Worker isolate's flush does:
//! - at most one batch in flight per shard, and nothing newer for a shard goes
//!   before its unanswered batch (so a shard sees a node's ops in order);
//! - a batch without an answer is sent again as it was, under the same number,
//!   so a shard that did apply it answers from memory and counts nothing twice,
//!   however long the collectors are away (meanwhile new activity waits in the
//!   bounded buffer); a batch the collector refuses is given up at once and its
//!   ops are counted lost;
//! - follow-ups a shard returns go out with the next flush, addressed by what
//!   the node learnt (`route::Known`); touches nobody knew are tried once more;
//! - with `enforce_revocation`, each batch asks for its shard's revoked list
//!   when it changed, and the node keeps the values (`revoked::RevokedSet`).

use super::buffer::Buffer;
use super::revoked::RevokedSet;
use super::route::{Known, Pending, Sequencer};
use super::wire::{Batch, BatchReply};
use crate::ids::NodeId;
use std::collections::BTreeMap;

/// A call the host makes: `batch` to shard `batch.shard` (`POST
/// address::collector_path(app, shard, "/batch")`), answered with `id`.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: u64,
    pub batch: Batch,
}

/// How a call ended.
#[derive(Debug)]
pub enum Reply {
    /// The shard's answer (200).
    Batch(BatchReply),
    /// No answer: the call failed, timed out, or the collector or its store was
    /// unavailable (503). The batch is sent again.
    Unreachable,
    /// The collector refused the batch (400: a newer protocol, a bad batch).
    /// Sending it again would change nothing: it is given up.
    Refused,
}

/// What an answer changed, for the host to act on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answered {
    /// Touches the shard did not know, queued to be tried once more (a rotation
    /// or login seen by another node may not have landed yet).
    pub unknown: usize,
    /// Ops given up with this answer (a batch sent too often without an answer).
    pub lost: usize,
}

pub struct Node {
    shards: u32,
    enforce_revocation: bool,
    /// What requests added since the last flush.
    pub buffer: Buffer,
    known: Known,
    sequencer: Option<Sequencer>,
    /// Follow-ups for the next flush.
    pending: Pending,
    /// Revoked cookie values the shards reported (`enforce_revocation`).
    pub revoked: RevokedSet,
    /// Batches sent and not answered, by call id, with how often each was sent
    /// before this send.
    in_flight: BTreeMap<u64, (Batch, u32)>,
    next_call: u64,
    /// Ops given up so far (for the host's metric).
    pub lost: u64,
}

impl Node {
    /// A node of a ledger of `shards` shards. `origin`: a random id for this
    /// node, never reused (`None` without randomness: batches go unsequenced,
    /// and a failed one is put back into the buffer instead).
    pub fn new(shards: u32, enforce_revocation: bool, origin: Option<NodeId>) -> Node {
        Node {
            shards: shards.max(1),
            enforce_revocation,
            buffer: Buffer::default(),
            known: Known::default(),
            sequencer: origin.map(Sequencer::new),
            pending: Pending::default(),
            revoked: RevokedSet::default(),
            in_flight: BTreeMap::new(),
            next_call: 1,
            lost: 0,
        }
    }

    /// Nothing buffered, nothing to send again, nothing waiting for an answer.
    pub fn is_idle(&self) -> bool {
        self.buffer.is_empty()
            && self.pending.is_empty()
            && self.in_flight.is_empty()
            && !self.sequencer.as_ref().is_some_and(Sequencer::has_unacked)
    }

    /// Calls waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn busy(&self, shard: u32) -> bool {
        self.in_flight.values().any(|(b, _)| b.shard == shard)
    }

    fn send(&mut self, batch: Batch, sends: u32, calls: &mut Vec<Call>) {
        let id = self.next_call;
        self.next_call += 1;
        calls.push(Call {
            id,
            batch: batch.clone(),
        });
        self.in_flight.insert(id, (batch, sends));
    }

    /// The calls to make now: batches to send again first, then one new batch
    /// per shard with nothing in flight, from the follow-ups and the buffer.
    /// What is for a busy shard waits for the next flush.
    pub fn flush(&mut self, now: u64) -> Vec<Call> {
        let mut calls = Vec::new();
        let resend = self
            .sequencer
            .as_mut()
            .map(Sequencer::take_unacked)
            .unwrap_or_default();
        for (batch, sends) in resend {
            if self.busy(batch.shard) {
                if let Some(s) = self.sequencer.as_mut() {
                    s.failed(batch, sends);
                }
            } else {
                self.send(batch, sends, &mut calls);
            }
        }
        let (ops, traffic) = self.buffer.take();
        for op in ops {
            let op = self.known.address(op);
            self.pending.push(op, self.shards);
        }
        let enforce = self.enforce_revocation;
        let revoked = &self.revoked;
        let rev = |shard: u32| enforce.then(|| revoked.rev(shard));
        let batches = self.pending.batches(self.shards, now, Some(traffic), rev);
        for mut batch in batches {
            let waiting = self.busy(batch.shard)
                || self
                    .sequencer
                    .as_ref()
                    .is_some_and(|s| s.has_unacked_for(batch.shard));
            if waiting {
                self.buffer.restore(batch.ops, batch.traffic);
                continue;
            }
            if let Some(s) = self.sequencer.as_mut() {
                s.stamp(&mut batch);
            }
            self.send(batch, 0, &mut calls);
        }
        calls
    }

    /// How call `id` ended.
    pub fn answered(&mut self, id: u64, reply: Reply, now: u64) -> Answered {
        let mut out = Answered::default();
        let Some((batch, sends)) = self.in_flight.remove(&id) else {
            return out;
        };
        match reply {
            Reply::Batch(mut reply) => {
                if let Some(list) = reply.revoked.take() {
                    self.revoked.sync(batch.shard, list, now);
                }
                let missing = self.pending.absorb(reply, &mut self.known, self.shards);
                out.unknown = missing.len();
                missing.into_iter().for_each(|op| self.buffer.retry(op));
            }
            Reply::Unreachable => match self.sequencer.as_mut() {
                Some(s) if batch.seq > 0 => s.keep(batch, sends.saturating_add(1)),
                _ => self.buffer.restore(batch.ops, batch.traffic),
            },
            Reply::Refused => {
                out.lost = batch.ops.len();
                self.lost += out.lost as u64;
            }
        }
        out
    }
}
