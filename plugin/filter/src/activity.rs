//! This VM's activity not yet written to shared data: one `Pending` per cookie
//! (the core's, coalesced), and the traffic counts. Touches are coalesced here so
//! the request path never writes shared data; a flush settles them with the core's
//! rule (`activity::settle`: found, retried once or while the app is asked
//! about it, or anonymous).

use headcount_core::activity::{self, Asking, Pending, Settled, MAX_PENDING};
use headcount_core::ids::MacMap;
use headcount_core::table::shard_of;
use headcount_core::traffic::TrafficDelta;
use headcount_core::{CookieHash, Session};

/// Who made a request, as far as the stream knows when it finishes.
pub enum Requester {
    Anonymous,
    /// A session cookie: whether it is a known session is settled at flush.
    Cookie(CookieHash),
    /// A verified bearer token's session: authenticated whatever the flush finds
    /// (the session may be evicted meanwhile by another worker).
    Bearer(CookieHash),
    /// A known session that this very request ended (logout).
    EndedSession,
}

#[derive(Default)]
pub struct Activity {
    pending: MacMap<Pending>,
    pub traffic: TrafficDelta,
}

impl Activity {
    /// Counts one finished request.
    pub fn record(&mut self, who: Requester, start_ms: u64, response_us: Option<u64>) {
        self.traffic.record(start_ms, response_us);
        let room = |pending: &MacMap<Pending>, h: &CookieHash| {
            pending.len() < MAX_PENDING || pending.contains_key(h)
        };
        match who {
            Requester::EndedSession => self.traffic.authenticated += 1,
            Requester::Cookie(h) if room(&self.pending, &h) => {
                self.pending
                    .entry(h)
                    .or_insert(Pending::new(start_ms, 0))
                    .add(start_ms, 1);
            }
            Requester::Bearer(h) => {
                // Its session stays fresh, but the request counts as authenticated now.
                if room(&self.pending, &h) {
                    self.pending
                        .entry(h)
                        .or_insert(Pending::new(start_ms, 0))
                        .add(start_ms, 0);
                }
                self.traffic.authenticated += 1;
            }
            _ => self.traffic.anonymous += 1,
        }
    }

    /// Adds activity another VM buffered (the singleton's side of a handoff).
    /// Past `MAX_PENDING` cookies, the new ones count as anonymous, as when
    /// recorded.
    pub fn absorb(&mut self, pending: Vec<(CookieHash, Pending)>, traffic: &TrafficDelta) {
        self.traffic.absorb(traffic);
        for (h, p) in pending {
            if let Some(mine) = self.pending.get_mut(&h) {
                mine.absorb(p);
            } else if self.pending.len() < MAX_PENDING {
                self.pending.insert(h, p);
            } else {
                self.traffic.anonymous += p.requests;
            }
        }
    }

    /// Whether activity of this cookie waits for a flush.
    pub fn is_pending(&self, hash: &CookieHash) -> bool {
        self.pending.contains_key(hash)
    }

    /// Moves buffered activity from a rotated-away cookie value to the new one.
    pub fn rekey(&mut self, from: &CookieHash, to: &CookieHash) {
        if let Some(p) = self.pending.remove(from) {
            let q = self
                .pending
                .entry(*to)
                .or_insert(Pending { requests: 0, ..p });
            q.add(p.last_ms, p.requests);
        }
    }

    /// Settles buffered activity of a session that just ended, under any of its
    /// cookie values: those requests were authenticated when they were made.
    pub fn forget(&mut self, session: &Session, request_cookie: &CookieHash) {
        let values = session.cookies(Some(request_cookie));
        for h in &values {
            if let Some(p) = self.pending.remove(h) {
                self.traffic.authenticated += p.requests;
            }
        }
    }

    /// Takes the buffered cookies of flush slice `slice` of `slices` (by cookie
    /// shard, so a slice reads that share of the cookie shards), or all of them.
    pub fn take(&mut self, slice: Option<(u64, u64)>) -> Vec<(CookieHash, Pending)> {
        match slice {
            None => self.pending.drain().collect(),
            Some((slice, slices)) => {
                let mut batch = Vec::new();
                self.pending.retain(|h, p| {
                    let mine = shard_of(h) as u64 % slices == slice;
                    if mine {
                        batch.push((*h, *p));
                    }
                    !mine
                });
                batch
            }
        }
    }

    /// What the table said of each taken cookie (`found`, in batch order), and
    /// whether the app is being asked about it. Returns the cookies not found
    /// (retried next flush), and those found.
    pub fn settle(
        &mut self,
        batch: Vec<(CookieHash, Pending)>,
        found: Vec<bool>,
        asking: impl Fn(&CookieHash) -> Asking,
    ) -> (Vec<CookieHash>, Vec<CookieHash>) {
        let (mut missed, mut known) = (Vec::new(), Vec::new());
        for ((h, p), found) in batch.into_iter().zip(found) {
            let asked = if found { Asking::No } else { asking(&h) };
            match activity::settle(p, found, asked) {
                Settled::Authenticated(n) => {
                    self.traffic.authenticated += n;
                    known.push(h);
                }
                // The VM is single-threaded: nothing arrived for `h` since the take.
                Settled::Retry(p) => {
                    self.pending.insert(h, p);
                    missed.push(h);
                }
                Settled::Anonymous(n) => self.traffic.anonymous += n,
            }
        }
        (missed, known)
    }

    /// Puts back a batch whose flush failed (newer activity for a cookie wins).
    pub fn restore(&mut self, batch: Vec<(CookieHash, Pending)>) {
        for (h, p) in batch {
            self.pending.entry(h).or_insert(p);
        }
    }
}
