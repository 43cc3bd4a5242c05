//! Traffic figures: counted locally per VM, merged into one shared record on flush.

use crate::record;
use crate::table::{SharedStore, StoreError, TableError};
use serde::{Deserialize, Serialize};

/// Seconds of per-second buckets kept; `avg_response_time_ms` covers all of them.
pub const RING_SECONDS: u64 = 60;
/// `current_rps` averages this many of the most recent seconds.
pub const RATE_SECONDS: u64 = 10;

const DAY_MS: u64 = 86_400_000;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub second: u64,
    pub requests: u64,
    pub response_us: u64,
    pub responses: u64,
}

impl Bucket {
    /// Adds this second's figures to the bucket of the same second in
    /// `buckets`, or appends it.
    fn add_into(&self, buckets: &mut Vec<Bucket>) {
        match buckets.iter_mut().find(|b| b.second == self.second) {
            Some(b) => {
                b.requests += self.requests;
                b.response_us += self.response_us;
                b.responses += self.responses;
            }
            None => buckets.push(*self),
        }
    }
}

/// What one VM saw since its last flush.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficDelta {
    pub authenticated: u64,
    pub anonymous: u64,
    pub buckets: Vec<Bucket>,
}

impl TrafficDelta {
    /// Counts one proxied request that started at `start_ms` and took `response_us`
    /// to answer (`None` when no response headers came back).
    pub fn record(&mut self, start_ms: u64, response_us: Option<u64>) {
        let second = start_ms / 1000;
        let (us, n) = response_us.map_or((0, 0), |us| (us, 1));
        match self.buckets.iter_mut().find(|b| b.second == second) {
            Some(b) => {
                b.requests += 1;
                b.response_us += us;
                b.responses += n;
            }
            None => self.buckets.push(Bucket {
                second,
                requests: 1,
                response_us: us,
                responses: n,
            }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.authenticated == 0 && self.anonymous == 0 && self.buckets.is_empty()
    }

    /// Adds another VM's delta to this one (the singleton gathers the workers').
    pub fn absorb(&mut self, other: &TrafficDelta) {
        self.authenticated += other.authenticated;
        self.anonymous += other.anonymous;
        for o in &other.buckets {
            o.add_into(&mut self.buckets);
        }
    }
}

/// The shared record every VM adds its deltas to.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// UTC day number (days since the epoch) the `*_today` counters belong to.
    pub day: u64,
    pub requests_today: u64,
    pub authenticated_today: u64,
    pub anonymous_today: u64,
    pub ring: Vec<Bucket>,
}

pub const TRAFFIC_KEY: &str = "headcount.v1.traffic";

impl Traffic {
    pub fn merge(&mut self, delta: &TrafficDelta, now_ms: u64) {
        self.roll_day(now_ms);
        self.authenticated_today += delta.authenticated;
        self.anonymous_today += delta.anonymous;
        self.requests_today += delta.authenticated + delta.anonymous;
        let oldest = (now_ms / 1000).saturating_sub(RING_SECONDS);
        for d in &delta.buckets {
            if d.second < oldest {
                continue;
            }
            d.add_into(&mut self.ring);
        }
        self.ring.retain(|b| b.second >= oldest);
    }

    fn roll_day(&mut self, now_ms: u64) {
        let day = now_ms / DAY_MS;
        if day != self.day {
            *self = Traffic {
                day,
                ring: std::mem::take(&mut self.ring),
                ..Traffic::default()
            };
        }
    }

    /// The figures as reported at `now_ms`.
    pub fn figures(&self, now_ms: u64) -> TrafficFigures {
        let today = now_ms / DAY_MS == self.day;
        let now_s = now_ms / 1000;
        let recent = |b: &&Bucket| b.second + RATE_SECONDS >= now_s && b.second < now_s;
        let rate_requests: u64 = self.ring.iter().filter(recent).map(|b| b.requests).sum();
        let window = |b: &&Bucket| b.second + RING_SECONDS >= now_s;
        let (us, n) = self
            .ring
            .iter()
            .filter(window)
            .fold((0u64, 0u64), |(us, n), b| {
                (us + b.response_us, n + b.responses)
            });
        TrafficFigures {
            current_rps: round2(rate_requests as f64 / RATE_SECONDS as f64),
            avg_response_time_ms: if n == 0 {
                0.0
            } else {
                round2(us as f64 / n as f64 / 1000.0)
            },
            requests_today: if today { self.requests_today } else { 0 },
            authenticated_requests_today: if today { self.authenticated_today } else { 0 },
            anonymous_requests_today: if today { self.anonymous_today } else { 0 },
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrafficFigures {
    pub current_rps: f64,
    pub avg_response_time_ms: f64,
    pub requests_today: u64,
    pub authenticated_requests_today: u64,
    pub anonymous_requests_today: u64,
}

/// Reads the shared traffic record (empty if never written or unreadable).
pub fn load(store: &impl SharedStore) -> Result<Traffic, StoreError> {
    Ok(record::load(store, TRAFFIC_KEY)?.0)
}

/// Adds a VM's delta to the shared record.
pub fn add(store: &impl SharedStore, delta: &TrafficDelta, now_ms: u64) -> Result<(), TableError> {
    record::update(store, TRAFFIC_KEY, |t: &mut Traffic| {
        t.merge(delta, now_ms);
        (true, ())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_counts_and_rates() {
        let t0 = 1_000_000 * 1000;
        let mut d = TrafficDelta::default();
        for i in 0..20 {
            d.record(t0 + i * 100, Some(2_000));
        }
        d.authenticated = 15;
        d.anonymous = 5;
        let mut t = Traffic::default();
        t.merge(&d, t0 + 2_000);
        let f = t.figures(t0 + 2_500);
        assert_eq!(f.requests_today, 20);
        assert_eq!(f.authenticated_requests_today, 15);
        assert_eq!(f.anonymous_requests_today, 5);
        assert_eq!(f.current_rps, 2.0);
        assert_eq!(f.avg_response_time_ms, 2.0);
        // Ten seconds later the rate window has moved past them.
        assert_eq!(t.figures(t0 + 13_000).current_rps, 0.0);
    }

    #[test]
    fn a_new_day_starts_from_zero() {
        let mut t = Traffic::default();
        let mut d = TrafficDelta {
            anonymous: 3,
            ..TrafficDelta::default()
        };
        t.merge(&d, DAY_MS * 5 + 10);
        assert_eq!(t.figures(DAY_MS * 5 + 20).requests_today, 3);
        assert_eq!(t.figures(DAY_MS * 6 + 20).requests_today, 0);
        d.anonymous = 1;
        t.merge(&d, DAY_MS * 6 + 30);
        assert_eq!(t.figures(DAY_MS * 6 + 40).requests_today, 1);
    }
}
