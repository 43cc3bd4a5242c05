//! The open-loop generator: requests at a constant rate, whatever the server does.
//!
//! Request `i` is due at `t0 + i / rate`. Each connection task takes the next
//! index from a shared counter once it is due (a permit from the [`pacer`]:
//! at once if it is already late), sends it, reads the answer and records
//! `finish − due`. When the
//! server stalls, every connection is busy, the next requests are taken late
//! and their wait counts in their latency: a closed-loop tool (wrk) would have
//! sent fewer requests instead and reported only the few slow ones
//! ("coordinated omission"; wrk2 corrects it the same way).

use crate::http::{self, Conn};
use crate::pacer;
use crate::schedule::{Mix, Schedule};
use hdrhistogram::Histogram;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// bench/load.lua's browser.
pub const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";

/// After the last request is due, requests not yet sent are dropped (counted
/// as `unsent`) once this much more has passed: the run ends by itself.
const STOP_GRACE: Duration = Duration::from_secs(2);

pub struct LoadConfig {
    pub addr: SocketAddr,
    pub path: String,
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    /// Session cookie values; a share `auth_share` of requests carry one.
    pub cookies: Vec<String>,
    pub auth_share: f64,
    pub cookie_name: String,
    pub user_agent: String,
    /// A request without a complete answer by then is an error.
    pub timeout: Duration,
}

/// Percentiles of a histogram, in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// What a run measured (warm-up requests excluded).
#[derive(Debug)]
pub struct Summary {
    pub rate_target: f64,
    pub duration_s: f64,
    pub connections: usize,
    pub auth_share: f64,
    /// Measured requests sent (or tried: a failed connect counts).
    pub sent: u64,
    /// Of those, answered 2xx in full.
    pub completed: u64,
    pub errors: u64,
    /// Due but never sent: the generator fell more than `STOP_GRACE` behind.
    pub unsent: u64,
    pub authenticated: u64,
    pub warmup_errors: u64,
    /// Completed requests per second of the measured window.
    pub achieved_rps: f64,
    /// From each request's due time to the last byte of its answer.
    pub latency_us: Percentiles,
    /// From due time to sending: the generator's own lateness plus the waits
    /// for a free connection (large when the server falls behind).
    pub lag_us: Percentiles,
    pub first_error: Option<String>,
}

impl Summary {
    pub fn to_json(&self) -> serde_json::Value {
        let p = |p: &Percentiles| {
            json!({"p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999, "max": p.max,
                   "mean": (p.mean * 10.0).round() / 10.0})
        };
        json!({
            "rate_target": self.rate_target, "duration_s": self.duration_s,
            "connections": self.connections, "auth_share": self.auth_share,
            "sent": self.sent, "completed": self.completed, "errors": self.errors,
            "unsent": self.unsent, "authenticated": self.authenticated,
            "warmup_errors": self.warmup_errors,
            "achieved_rps": (self.achieved_rps * 10.0).round() / 10.0,
            "latency_us": p(&self.latency_us), "lag_us": p(&self.lag_us),
            "first_error": self.first_error,
        })
    }
}

/// Runs the load and returns its figures. Ends at most `STOP_GRACE` + the
/// request timeout after the last request is due.
pub async fn run(cfg: &LoadConfig) -> Result<Summary, String> {
    let addr = crate::loopback(cfg.addr)?;
    let schedule = Schedule::new(cfg.rate, cfg.warmup, cfg.duration)?;
    let requests = Requests::build(cfg)?;
    // Every connection is open before the first request is due.
    let mut conns = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections.max(1) {
        conns.push(Some(Conn::connect(addr).await?));
    }
    let t0 = Instant::now() + Duration::from_millis(10);
    let permits = pacer::start(schedule, t0, conns.len())?;
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        schedule,
        requests,
        t0,
        hard_stop: t0 + schedule.end() + STOP_GRACE,
        permits,
        timeout: cfg.timeout,
        addr,
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| tokio::spawn(connection(shared.clone(), conn)))
        .collect();
    let mut tally = Tally::new()?;
    for task in tasks {
        let t = task
            .await
            .map_err(|e| format!("a connection task failed: {e}"))??;
        tally.merge(&t)?;
    }
    let measured_from = t0 + schedule.measured_from();
    let window = tally
        .last_finish
        .map_or(Duration::ZERO, |f| {
            f.saturating_duration_since(measured_from)
        })
        .max(cfg.duration);
    Ok(Summary {
        rate_target: cfg.rate,
        duration_s: cfg.duration.as_secs_f64(),
        connections: cfg.connections.max(1),
        auth_share: cfg.auth_share,
        sent: tally.sent,
        completed: tally.completed,
        errors: tally.errors,
        unsent: tally.unsent,
        authenticated: tally.authenticated,
        warmup_errors: tally.warmup_errors,
        achieved_rps: tally.completed as f64 / window.as_secs_f64().max(1e-9),
        latency_us: percentiles(&tally.latency),
        lag_us: percentiles(&tally.lag),
        first_error: tally.first_error,
    })
}

struct Shared {
    next: AtomicU64,
    schedule: Schedule,
    requests: Requests,
    t0: Instant,
    hard_stop: Instant,
    /// One per request that is due (see `pacer`).
    permits: Arc<Semaphore>,
    timeout: Duration,
    addr: SocketAddr,
}

/// Every request's bytes, built before the run.
struct Requests {
    anonymous: Vec<u8>,
    authenticated: Vec<Vec<u8>>,
    mix: Mix,
}

impl Requests {
    fn build(cfg: &LoadConfig) -> Result<Requests, String> {
        let host = cfg.addr.to_string();
        let get = |cookie: Option<&str>| http::get(&host, &cfg.path, &cfg.user_agent, cookie);
        let authenticated = if cfg.auth_share > 0.0 {
            let name = &cfg.cookie_name;
            let cookie = |v: &String| format!("theme=dark; {name}={v}");
            cfg.cookies.iter().map(|v| get(Some(&cookie(v)))).collect()
        } else {
            Vec::new()
        };
        Ok(Requests {
            anonymous: get(None),
            mix: Mix::new(cfg.auth_share, authenticated.len())?,
            authenticated,
        })
    }

    /// Request `i`'s bytes, and whether it carries a cookie.
    fn get(&self, i: u64) -> (&[u8], bool) {
        match self.mix.cookie(i).and_then(|k| self.authenticated.get(k)) {
            Some(r) => (r, true),
            None => (&self.anonymous, false),
        }
    }
}

async fn connection(shared: Arc<Shared>, mut conn: Option<Conn>) -> Result<Tally, String> {
    let s = &*shared;
    let mut tally = Tally::new()?;
    loop {
        // No await between the permit and the index: the k-th permit takes index k.
        match s.permits.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return Ok(tally),
        }
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= s.schedule.total {
            return Ok(tally);
        }
        let measured = s.schedule.measured(i);
        if Instant::now() >= s.hard_stop {
            tally.unsent += u64::from(measured);
            continue;
        }
        let due = s.t0 + s.schedule.offset(i);
        let (request, authenticated) = s.requests.get(i);
        let sent = Instant::now();
        let outcome = tokio::time::timeout(s.timeout, exchange(&mut conn, s.addr, request))
            .await
            .unwrap_or_else(|_| Err(format!("no complete answer within {:?}", s.timeout)));
        let done = Instant::now();
        tally.record(measured, authenticated, [due, sent, done], outcome);
    }
}

/// One request and its answer; the connection is kept for the next one only
/// after a complete 2xx answer that does not close it.
async fn exchange(conn: &mut Option<Conn>, addr: SocketAddr, request: &[u8]) -> Result<(), String> {
    let mut c = match conn.take() {
        Some(c) => c,
        None => Conn::connect(addr).await?,
    };
    c.send(request).await?;
    let head = c
        .read_head()
        .await?
        .ok_or("connection closed before an answer")?;
    let r = http::parse_response(&head)?;
    c.skip_body(r.content_length).await?;
    if !r.success() {
        return Err(format!("answered {}", r.status));
    }
    if !r.close {
        *conn = Some(c);
    }
    Ok(())
}

/// One connection task's counts (merged at the end).
struct Tally {
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    sent: u64,
    completed: u64,
    errors: u64,
    unsent: u64,
    authenticated: u64,
    warmup_errors: u64,
    last_finish: Option<Instant>,
    first_error: Option<String>,
}

/// Histograms hold 1 µs to 10 minutes at 3 significant digits.
fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|e| format!("histogram: {e:?}"))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        mean: h.mean(),
    }
}

impl Tally {
    fn new() -> Result<Tally, String> {
        Ok(Tally {
            latency: histogram()?,
            lag: histogram()?,
            sent: 0,
            completed: 0,
            errors: 0,
            unsent: 0,
            authenticated: 0,
            warmup_errors: 0,
            last_finish: None,
            first_error: None,
        })
    }

    /// `[due, sent, done]`: when the request was due, sent, and answered.
    fn record(
        &mut self,
        measured: bool,
        authenticated: bool,
        at: [Instant; 3],
        outcome: Result<(), String>,
    ) {
        let [due, sent, done] = at;
        if !measured {
            self.warmup_errors += u64::from(outcome.is_err());
            return;
        }
        self.sent += 1;
        self.authenticated += u64::from(authenticated);
        match outcome {
            Ok(()) => {
                self.completed += 1;
                self.latency
                    .saturating_record(micros(done.saturating_duration_since(due)));
                self.lag
                    .saturating_record(micros(sent.saturating_duration_since(due)));
                self.last_finish = self.last_finish.max(Some(done));
            }
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    eprintln!("headcount-loadgen: a request failed: {e}");
                    self.first_error = Some(e);
                }
            }
        }
    }

    fn merge(&mut self, other: &Tally) -> Result<(), String> {
        self.latency
            .add(&other.latency)
            .map_err(|e| format!("histogram: {e:?}"))?;
        self.lag
            .add(&other.lag)
            .map_err(|e| format!("histogram: {e:?}"))?;
        self.sent += other.sent;
        self.completed += other.completed;
        self.errors += other.errors;
        self.unsent += other.unsent;
        self.authenticated += other.authenticated;
        self.warmup_errors += other.warmup_errors;
        self.last_finish = self.last_finish.max(other.last_finish);
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        Ok(())
    }
}
