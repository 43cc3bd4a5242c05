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
use super::wire::{Batch, BatchReply, Op, RevokeReply, RevokedAdd};
use crate::config::Config;
use crate::ids::NodeId;
use crate::session::Session;
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
#[derive(Debug, Default, PartialEq)]
pub struct Answered {
    /// Touches the shard did not know, queued to be tried once more (a rotation
    /// or login seen by another node may not have landed yet).
    pub unknown: usize,
    /// Ops given up with this answer (a batch sent too often without an answer).
    pub lost: usize,
    /// With `ask_unknown`: the unknown touches (first misses: a second miss is
    /// counted anonymous by the shard), for the host to ask the app about
    /// (`whoami.begin_unknown`) or give back with `buffer.retry`.
    pub missed: Vec<Op>,
}

/// Ops in one batch from a node at most: a shard applies a batch in one step,
/// so a bounded batch keeps each call well within the host's timeout even
/// when its ops are costly (logins evicting others under `max_sessions`); the
/// rest of a shard's ops go as soon as the batch is answered.
pub const MAX_NODE_BATCH: usize = 128;

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
    /// and the flush it (or the op it follows up) first went with.
    in_flight: BTreeMap<u64, (Batch, u32, u64)>,
    next_call: u64,
    /// Flushes so far.
    epoch: u64,
    /// The oldest flush whose follow-ups (or held-back ops) wait to be sent.
    pending_born: Option<u64>,
    /// Ops given up so far (for the host's metric).
    pub lost: u64,
    /// Hand first misses to the host (`Answered::missed`) instead of retrying
    /// them here.
    pub ask_unknown: bool,
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
            epoch: 0,
            pending_born: None,
            ask_unknown: false,
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
        self.in_flight.values().any(|(b, _, _)| b.shard == shard)
    }

    fn send(&mut self, batch: Batch, sends: u32, born: u64, calls: &mut Vec<Call>) {
        let id = self.next_call;
        self.next_call += 1;
        calls.push(Call {
            id,
            batch: batch.clone(),
        });
        self.in_flight.insert(id, (batch, sends, born));
    }

    /// The calls to make now: batches to send again first, then one new batch
    /// per shard with nothing in flight, from the follow-ups and the buffer.
    /// What is for a busy shard waits for the next flush.
    pub fn flush(&mut self, now: u64) -> Vec<Call> {
        self.epoch += 1;
        let epoch = self.epoch;
        // New batches carry the oldest flush whose follow-ups they may hold.
        let born = self.pending_born.take().map_or(epoch, |b| b.min(epoch));
        let mut calls = Vec::new();
        let resend = self
            .sequencer
            .as_mut()
            .map(Sequencer::take_unacked)
            .unwrap_or_default();
        for (batch, sends) in resend {
            if self.busy(batch.shard) {
                // Kept as it is (never given up here: an unanswered batch
                // waits however long the collectors are away).
                if let Some(s) = self.sequencer.as_mut() {
                    s.keep(batch, sends);
                }
                self.pending_born = Some(self.pending_born.map_or(born, |b| b.min(born)));
            } else {
                // Sent again with the oldest flush it may carry ops of: a host
                // waiting for those is not let go before it lands.
                self.send(batch, sends, born, &mut calls);
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
                // A session op held back goes as soon as the shard answers,
                // not with the next interval (touches may wait for it).
                let urgent = batch
                    .ops
                    .iter()
                    .any(|op| !matches!(op, Op::Touch { .. } | Op::TouchSession { .. }));
                self.buffer.restore(batch.ops, batch.traffic);
                self.buffer.urgent |= urgent;
                self.pending_born = Some(self.pending_born.map_or(born, |b| b.min(born)));
                continue;
            }
            if batch.ops.len() > MAX_NODE_BATCH {
                let rest = batch.ops.split_off(MAX_NODE_BATCH);
                self.buffer.restore(rest, Default::default());
                self.buffer.urgent = true;
                self.pending_born = Some(self.pending_born.map_or(born, |b| b.min(born)));
            }
            if let Some(s) = self.sequencer.as_mut() {
                s.stamp(&mut batch);
            }
            self.send(batch, 0, born, &mut calls);
        }
        calls
    }

    /// What a node does with a shard's answer to a revocation (`POST /revoke`):
    /// forgets the session's cookie values, queues the follow-ups, and, with
    /// `enforce_revocation`, refuses the values at once and returns the
    /// `POST /revoked` queries that tell every shard (so every node learns them
    /// with its next batch's reply). `None`: no such live session.
    pub fn revoked_session(
        &mut self,
        reply: RevokeReply,
        cfg: &Config,
        now: u64,
    ) -> Option<(Session, Vec<RevokedAdd>)> {
        let session = reply.session?;
        let values = session.cookies(None);
        values.iter().for_each(|v| self.known.forget(v));
        for op in reply.forward {
            if !self.buffer.push(op) {
                self.lost += 1;
            }
        }
        if !self.enforce_revocation {
            return Some((session, Vec::new()));
        }
        let until = session.deadline(cfg);
        self.revoked.add(values.iter().map(|h| (*h, until)), now);
        let shards = self.shards;
        let adds = (0..shards)
            .map(|shard| RevokedAdd {
                id: session.id,
                hashes: values.clone(),
                until,
                shard,
                shards,
            })
            .collect();
        Some((session, adds))
    }

    /// Whether something should go now rather than with the next interval's
    /// flush: a login or logout waits in the buffer, or a shard's follow-ups
    /// (the cookie index entry of a new session, say) wait to be sent.
    pub fn urgent(&self) -> bool {
        self.buffer.urgent || !self.pending.is_empty()
    }

    /// The flushes so far: what was in the buffer now goes with flush
    /// `epoch() + 1` or later (a host waiting for an op notes that number).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether what was buffered before flush `epoch` has landed with its
    /// follow-ups: that flush happened, and no call from it or earlier, nor a
    /// follow-up of theirs, nor a batch of theirs that went unanswered and waits
    /// to be sent again, is still outstanding.
    pub fn settled(&self, epoch: u64) -> bool {
        self.epoch >= epoch
            && self.in_flight.values().all(|(_, _, born)| *born > epoch)
            && self.pending_born.is_none_or(|born| born > epoch)
    }

    /// With `enforce_revocation`, a node that sent nothing this interval asks
    /// shard 0 for its revoked list all the same (an empty, unsequenced batch),
    /// so every node learns a revocation within an interval, busy or not.
    pub fn heartbeat(&mut self, now: u64) -> Option<Call> {
        if !self.enforce_revocation || self.busy(0) {
            return None;
        }
        let batch = Batch {
            revoked_rev: Some(self.revoked.rev(0)),
            ..Batch::new(0, self.shards, now, Vec::new())
        };
        let mut calls = Vec::new();
        self.send(batch, 0, self.epoch, &mut calls);
        calls.pop()
    }

    /// How call `id` ended.
    pub fn answered(&mut self, id: u64, reply: Reply, now: u64) -> Answered {
        let mut out = Answered::default();
        let Some((batch, sends, born)) = self.in_flight.remove(&id) else {
            return out;
        };
        match reply {
            Reply::Batch(mut reply) => {
                if let Some(list) = reply.revoked.take() {
                    self.revoked.sync(batch.shard, list, now);
                }
                if !reply.forward.is_empty() {
                    self.pending_born = Some(self.pending_born.map_or(born, |b| b.min(born)));
                }
                let missing = self.pending.absorb(reply, &mut self.known, self.shards);
                out.unknown = missing.len();
                for op in missing {
                    match op {
                        Op::Touch { .. } if self.ask_unknown => out.missed.push(op),
                        op => self.buffer.retry(op),
                    }
                }
            }
            Reply::Unreachable => {
                // Its ops have not landed: whoever waits for them waits on.
                self.pending_born = Some(self.pending_born.map_or(born, |b| b.min(born)));
                match self.sequencer.as_mut() {
                    Some(s) if batch.seq > 0 => s.keep(batch, sends.saturating_add(1)),
                    _ => self.buffer.restore(batch.ops, batch.traffic),
                }
            }
            Reply::Refused => {
                out.lost = batch.ops.len();
                self.lost += out.lost as u64;
            }
        }
        out
    }
}
