//! Activity a node (a Worker isolate, an Envoy VM in fleet mode) has seen and
//! not yet sent to the ledger: an ordered list of ops with touches (and chains of
//! rotations) coalesced, plus the traffic counts. Plain data, no I/O.

use super::wire::{Op, TrafficPart};
use crate::ids::CookieHash;
use crate::traffic::TrafficDelta;
use std::collections::HashMap;

pub use crate::activity::MAX_PENDING;

/// Ops of any kind kept while the ledger is unreachable; beyond this new
/// session events are dropped (and logged) rather than growing without bound.
pub const MAX_OPS: usize = 2 * MAX_PENDING;

#[derive(Default)]
pub struct Buffer {
    ops: Vec<Op>,
    /// Index in `ops` of the touch that a new request with this cookie adds to.
    touch_at: HashMap<CookieHash, usize>,
    /// Index in `ops` of the rotation whose newest cookie is this hash: a further
    /// rotation of that cookie extends the chain instead of adding an op.
    rotation_to: HashMap<CookieHash, usize>,
    traffic: TrafficDelta,
    /// A login or logout is waiting: flush without waiting for the interval.
    pub urgent: bool,
}

impl Buffer {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.traffic.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Counts one proxied request that started at `start_ms`; `cookie` is the hash
    /// of its session cookie (none for anonymous requests and ignored agents).
    pub fn record(&mut self, cookie: Option<CookieHash>, start_ms: u64, response_us: Option<u64>) {
        self.traffic.record(start_ms, response_us);
        let Some(hash) = cookie else {
            self.traffic.anonymous += 1;
            return;
        };
        if let Some(Op::Touch {
            last_ms, requests, ..
        }) = self.touch_at.get(&hash).and_then(|i| self.ops.get_mut(*i))
        {
            *last_ms = (*last_ms).max(start_ms);
            *requests += 1;
            return;
        }
        if self.touch_at.len() >= MAX_PENDING || self.ops.len() >= MAX_OPS {
            self.traffic.anonymous += 1;
            return;
        }
        self.touch_at.insert(hash, self.ops.len());
        self.ops.push(Op::Touch {
            hash,
            last_ms: start_ms,
            requests: 1,
            retry: false,
        });
    }

    /// Counts one proxied request that a session op counts at the ledger (a
    /// token's first sighting, `Op::Bearer { requests }`): its time only.
    pub fn record_counted(&mut self, start_ms: u64, response_us: Option<u64>) {
        self.traffic.record(start_ms, response_us);
    }

    /// A touch the session table did not know: sent once more with the next flush.
    pub fn retry(&mut self, op: Op) {
        // Not coalesced with new touches: those still get their own retry.
        self.requeue(op, true);
    }

    /// A touch held back while its session began (a whoami lookup): sent again
    /// after the session's op, with a retry of its own as a login's request has
    /// (the cookie entry lands a round after the session). Later requests with
    /// the cookie add to it.
    pub fn resend(&mut self, op: Op) {
        self.requeue(op, false);
    }

    /// Queues a touch again; its requests were counted as traffic when made.
    /// With no room, they are anonymous.
    fn requeue(&mut self, op: Op, retry: bool) {
        let Op::Touch {
            hash,
            last_ms,
            requests,
            ..
        } = op
        else {
            return;
        };
        if self.ops.len() >= MAX_OPS {
            self.traffic.anonymous += requests;
            return;
        }
        if !retry {
            self.touch_at.insert(hash, self.ops.len());
        }
        self.ops.push(Op::Touch {
            hash,
            last_ms,
            requests,
            retry,
        });
    }

    /// Queues a session event. Returns false if the buffer is full (the event is lost).
    pub fn push(&mut self, op: Op) -> bool {
        if let Op::Rotate { from, to, at, .. } = &op {
            if let Some(i) = self.rotation_to.remove(from) {
                if let Some(Op::Rotate {
                    via,
                    to: last,
                    at: t,
                    ..
                }) = self.ops.get_mut(i)
                {
                    // from -> ... -> last(= this from) -> to: one op, one write.
                    via.push(*last);
                    *last = *to;
                    *t = (*t).max(*at);
                    self.touch_at.remove(from);
                    self.touch_at.remove(to);
                    self.rotation_to.insert(*to, i);
                    return true;
                }
            }
        }
        if self.ops.len() >= MAX_OPS {
            return false;
        }
        // Later requests with these cookies must come after this op.
        match &op {
            Op::Rotate { from, to, .. } => {
                self.touch_at.remove(from);
                self.touch_at.remove(to);
                self.rotation_to.remove(to);
                self.rotation_to.insert(*to, self.ops.len());
            }
            Op::Login { session } => {
                self.touch_at.remove(&session.cookie);
                self.rotation_to.remove(&session.cookie);
                self.urgent = true;
            }
            // Urgent or not is the caller's call (a first sighting is, a re-check is not).
            Op::Bearer { session, .. } => {
                self.touch_at.remove(&session.cookie);
                self.rotation_to.remove(&session.cookie);
            }
            Op::Logout { hash, .. } => {
                self.touch_at.remove(hash);
                self.rotation_to.remove(hash);
                self.urgent = true;
            }
            _ => {}
        }
        self.ops.push(op);
        true
    }

    /// Everything buffered, leaving the buffer empty.
    pub fn take(&mut self) -> (Vec<Op>, TrafficPart) {
        self.touch_at.clear();
        self.rotation_to.clear();
        self.urgent = false;
        let delta = std::mem::take(&mut self.traffic);
        let traffic = TrafficPart {
            anonymous: delta.anonymous,
            buckets: delta.buckets,
        };
        (std::mem::take(&mut self.ops), traffic)
    }

    /// Puts back what a failed flush took, ahead of anything newer.
    pub fn restore(&mut self, mut ops: Vec<Op>, traffic: TrafficPart) {
        let newer = std::mem::take(&mut self.ops);
        ops.truncate(MAX_OPS);
        self.ops = ops;
        self.touch_at.clear();
        self.rotation_to.clear();
        for op in newer {
            if self.ops.len() < MAX_OPS {
                self.ops.push(op);
            }
        }
        self.traffic.anonymous += traffic.anonymous;
        for b in traffic.buckets {
            match self
                .traffic
                .buckets
                .iter_mut()
                .find(|x| x.second == b.second)
            {
                Some(x) => {
                    x.requests += b.requests;
                    x.response_us += b.response_us;
                    x.responses += b.responses;
                }
                None => self.traffic.buckets.push(b),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> CookieHash {
        CookieHash([n; 16])
    }

    #[test]
    fn touches_coalesce_per_cookie() {
        let mut b = Buffer::default();
        for t in [10, 30, 20] {
            b.record(Some(h(1)), t, Some(5));
        }
        b.record(Some(h(2)), 40, None);
        b.record(None, 50, Some(1));
        let (ops, traffic) = b.take();
        assert_eq!(
            ops,
            vec![
                Op::Touch {
                    hash: h(1),
                    last_ms: 30,
                    requests: 3,
                    retry: false
                },
                Op::Touch {
                    hash: h(2),
                    last_ms: 40,
                    requests: 1,
                    retry: false
                },
            ]
        );
        assert_eq!(traffic.anonymous, 1);
        assert_eq!(traffic.buckets.iter().map(|b| b.requests).sum::<u64>(), 5);
        assert!(b.is_empty());
    }

    #[test]
    fn rotation_chains_collapse_and_keep_order() {
        let mut b = Buffer::default();
        b.record(Some(h(1)), 1, None);
        assert!(b.push(Op::Rotate {
            from: h(1),
            via: vec![],
            to: h(2),
            at: 1
        }));
        b.record(Some(h(2)), 2, None);
        assert!(b.push(Op::Rotate {
            from: h(2),
            via: vec![],
            to: h(3),
            at: 2
        }));
        b.record(Some(h(3)), 3, None);
        assert!(b.push(Op::Rotate {
            from: h(3),
            via: vec![],
            to: h(4),
            at: 3
        }));
        assert!(!b.urgent);
        let (ops, _) = b.take();
        assert_eq!(ops.len(), 4, "{ops:?}");
        assert_eq!(
            ops.get(1),
            Some(&Op::Rotate {
                from: h(1),
                via: vec![h(2), h(3)],
                to: h(4),
                at: 3
            })
        );
    }

    #[test]
    fn a_logout_is_urgent_and_orders_later_touches_after_it() {
        let mut b = Buffer::default();
        b.record(Some(h(1)), 1, None);
        assert!(b.push(Op::Logout { hash: h(1), at: 2 }));
        b.record(Some(h(1)), 3, None);
        assert!(b.urgent);
        let (ops, _) = b.take();
        assert!(matches!(ops.last(), Some(Op::Touch { requests: 1, .. })));
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn a_bearer_session_goes_before_later_touches_and_is_not_urgent_by_itself() {
        let session = crate::ledger::testing::session(9, 1);
        let mut b = Buffer::default();
        b.record(Some(h(1)), 1, None);
        assert!(b.push(Op::Bearer {
            session,
            requests: 0
        }));
        assert!(!b.urgent, "a re-check rides the timer flush");
        b.record(Some(h(1)), 2, None);
        let (ops, _) = b.take();
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert!(matches!(ops.get(1), Some(Op::Bearer { .. })));
        assert!(matches!(
            ops.get(2),
            Some(Op::Touch {
                last_ms: 2,
                requests: 1,
                ..
            })
        ));
    }

    #[test]
    fn restore_puts_failed_ops_first() {
        let mut b = Buffer::default();
        b.record(Some(h(1)), 1, Some(1));
        let (ops, traffic) = b.take();
        b.record(Some(h(2)), 2_000, Some(1));
        b.restore(ops, traffic);
        let (ops, traffic) = b.take();
        assert_eq!(ops.first().map(Op::key), Some(h(1).0));
        assert_eq!(ops.len(), 2);
        assert_eq!(traffic.buckets.len(), 2);
    }

    #[test]
    fn pending_cookies_are_bounded() {
        let mut b = Buffer::default();
        for i in 0..(MAX_PENDING + 10) {
            let mut x = [0u8; 16];
            x[..8].copy_from_slice(&(i as u64).to_le_bytes());
            b.record(Some(CookieHash(x)), 1, None);
        }
        assert_eq!(b.len(), MAX_PENDING);
        let (_, traffic) = b.take();
        assert_eq!(traffic.anonymous, 10);
    }
}
