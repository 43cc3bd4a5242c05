//! What the ledger costs in Redis: commands, round trips and bytes per touch
//! (the op an authenticated request becomes), Redis memory per live session, and
//! the time to gather the stats of every shard. Prints figures; not a test.
//!
//! ```sh
//! cargo run --release -p headcount-collector --example redis_figures -- 100000
//! ```
//!
//! Starts its own `redis-server` (no persistence) on a free loopback port and
//! drives the collector's `RedisLedger` in process (no HTTP), as one node would:
//! logins in batches, then rounds of touches, one batch per shard per round.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a measuring tool: a failure ends the run"
)]

use headcount_collector::redis_ledger::{RedisLedger, StepError, Target};
use headcount_core::ids::{CookieHash, SessionId};
use headcount_core::ledger::route::{Gathered, Known, Pending};
use headcount_core::ledger::wire::{Batch, Op};
use headcount_core::ledger::{Here, Ledger};
use headcount_core::session::Session;
use headcount_core::{AppName, Config};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SHARDS: u32 = 16;
/// Touches per batch round (a node's flush), spread over the shards.
const TOUCHES_PER_ROUND: usize = 1600;

fn info(con: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let text: String = redis::cmd("INFO").arg(section).query(con).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Total commands Redis processed (from `INFO stats`).
fn commands(con: &mut redis::Connection) -> u64 {
    info(con, "stats", "total_commands_processed")
}

fn net_bytes(con: &mut redis::Connection) -> u64 {
    info(con, "stats", "total_net_input_bytes") + info(con, "stats", "total_net_output_bytes")
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn id16(tag: u8, n: u64) -> [u8; 16] {
    let mut b = [tag; 16];
    b[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    b
}

/// Session `n`'s cookie hash: unrelated to its id, so its shard is another one
/// (15 times in 16), as with real random ids and keyed hashes.
fn cookie(n: u64) -> CookieHash {
    CookieHash(id16(2, n ^ 0x5555_5555))
}

fn session(n: u64, at: u64) -> Session {
    Session {
        id: SessionId(id16(1, n)),
        user_id: format!("{}", 100_000 + n),
        username: format!("user{n:06}"),
        role: ["admin", "teacher", "student"][(n % 3) as usize].into(),
        ip: "203.0.113.77".into(),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0".into(),
        login_ms: at,
        last_ms: at,
        cookie: cookie(n),
        aliases: Vec::new(),
    }
}

struct Run {
    ledger: RedisLedger,
    app: AppName,
    cfg: Config,
    known: Known,
    trips: u64,
    steps: u64,
    retries: u64,
}

impl Run {
    /// Sends `ops` round by round until no follow-ups are left.
    fn send(&mut self, ops: Vec<Op>, now: u64) {
        let mut pending = Pending::default();
        ops.into_iter()
            .for_each(|op| pending.push(self.known.address(op), SHARDS));
        while !pending.is_empty() {
            let batches: Vec<Batch> = pending.batches(SHARDS, now, None, |_| None);
            for b in batches {
                let here = Here::new(b.shard, SHARDS, now);
                let cfg = &self.cfg;
                let done = self
                    .ledger
                    .step(&self.app, b.shard, |s| {
                        Ok::<_, StepError>(Ledger::new(s, cfg, here).batch(b.clone())?.reply)
                    })
                    .unwrap();
                self.trips += done.trips;
                self.steps += 1;
                self.retries += u64::from(done.attempts - 1);
                pending.absorb(done.value, &mut self.known, SHARDS);
            }
        }
    }

    fn gather(&self, now: u64) -> Gathered {
        let mut g = Gathered::default();
        for shard in 0..SHARDS {
            let cfg = &self.cfg;
            let reply = self
                .ledger
                .step(&self.app, shard, |s| {
                    Ok::<_, StepError>(Ledger::new(s, cfg, Here::new(0, 1, now)).stats()?)
                })
                .unwrap()
                .value;
            g.add(reply, now);
        }
        g
    }
}

fn main() {
    let sessions: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("headcount-redis-figures-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (Debian's package) must be installed");
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut con = loop {
        if let Ok(c) = client.get_connection() {
            break c;
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let version = {
        let text: String = redis::cmd("INFO").arg("server").query(&mut con).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    let mut run = Run {
        ledger: RedisLedger::new(Target::parse(&url).unwrap()),
        app: AppName::parse("app", "bench").unwrap(),
        cfg: Config::from_json(br#"{"active_window_seconds": 300, "idle_timeout_seconds": 86400}"#)
            .unwrap(),
        known: Known::default(),
        trips: 0,
        steps: 0,
        retries: 0,
    };
    let t0 = 1_800_000_000_000u64;
    println!("Redis {version} on 127.0.0.1:{port}, {SHARDS} shards, {sessions} sessions");

    // Logins, in rounds of 1000 (a node sends a login at once; here many nodes' worth).
    let mem0 = info(&mut con, "memory", "used_memory");
    let (c0, b0, tr0, cpu0) = (
        commands(&mut con),
        net_bytes(&mut con),
        run.trips,
        cpu_seconds(),
    );
    let start = Instant::now();
    let mut n = 0;
    while n < sessions {
        let ops: Vec<Op> = (n..(n + 1000).min(sessions))
            .map(|i| Op::Login {
                session: session(i, t0 + i),
            })
            .collect();
        n += ops.len() as u64;
        run.send(ops, t0 + n);
    }
    let login_time = start.elapsed();
    let mem1 = info(&mut con, "memory", "used_memory");
    let (c1, b1, tr1, cpu1) = (
        commands(&mut con),
        net_bytes(&mut con),
        run.trips,
        cpu_seconds(),
    );
    println!(
        "logins: {:.1} Redis commands, {:.1} round trips, {:.0} bytes on the wire and {:.0} bytes of Redis memory per session; {:.0} logins/s, {:.2} ms collector CPU per login",
        (c1 - c0) as f64 / sessions as f64,
        (tr1 - tr0) as f64 / sessions as f64,
        (b1 - b0) as f64 / sessions as f64,
        (mem1.saturating_sub(mem0)) as f64 / sessions as f64,
        sessions as f64 / login_time.as_secs_f64(),
        (cpu1 - cpu0) * 1000.0 / sessions as f64,
    );

    // Touches: rounds of TOUCHES_PER_ROUND distinct cookies (each op stands for the
    // requests one cookie made in one flush interval).
    let touches = sessions.min(50_000) as usize;
    let (c0, b0, tr0, cpu0, s0) = (
        commands(&mut con),
        net_bytes(&mut con),
        run.trips,
        cpu_seconds(),
        run.steps,
    );
    let start = Instant::now();
    let mut done = 0;
    while done < touches {
        let now = t0 + 10_000_000 + done as u64;
        let ops: Vec<Op> = (done..(done + TOUCHES_PER_ROUND).min(touches))
            .map(|i| Op::Touch {
                hash: cookie(i as u64),
                last_ms: now,
                requests: 1,
                retry: false,
            })
            .collect();
        done += ops.len();
        run.send(ops, now);
    }
    let touch_time = start.elapsed();
    let (c1, b1, tr1, cpu1, s1) = (
        commands(&mut con),
        net_bytes(&mut con),
        run.trips,
        cpu_seconds(),
        run.steps,
    );
    let per = |x: u64| x as f64 / touches as f64;
    println!(
        "touches ({TOUCHES_PER_ROUND} per round, {:.0} per batch): {:.2} Redis commands, {:.2} round trips, {:.0} bytes on the wire per touch; {:.0} touches/s; collector CPU {:.3} s per 1,000 touches",
        touches as f64 / (s1 - s0) as f64,
        per(c1 - c0),
        per(tr1 - tr0),
        per(b1 - b0),
        touches as f64 / touch_time.as_secs_f64(),
        (cpu1 - cpu0) * 1000.0 / touches as f64,
    );

    // The stats of every shard, as a node's stats route gathers them, just after
    // the touches (the touched sessions are active, the others not).
    let now = t0 + 10_000_000 + touches as u64 + 1000;
    let mut times = Vec::new();
    let mut listed = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let g = run.gather(now);
        times.push(start.elapsed());
        listed = g.sessions.len();
    }
    times.sort();
    println!(
        "stats of all {SHARDS} shards ({listed} sessions listed): median {:.0} ms, max {:.0} ms",
        times[2].as_secs_f64() * 1000.0,
        times[4].as_secs_f64() * 1000.0
    );
    println!("lost races retried: {}", run.retries);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
