//! Cost per request of the built filter, at 1k, 10k and 100k live sessions.
//!
//! ```sh
//! cargo build --release --target wasm32-wasip1 -p headcount
//! CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 \
//!     cargo bench -p host-tests --bench requests
//! ```
//!
//! (The two variables skip fat LTO and single-unit codegen of wasmtime, which the workspace's
//! release profile would otherwise apply to the bench build and which make it take many
//! minutes; the figures don't depend on them. The run itself takes about a minute.) Set `HEADCOUNT_BENCH_SIZES`
//! (e.g. `1000,10000`) to run fewer sizes. `HEADCOUNT_FUEL_TRACE=1` prints each callback's
//! fuel as it runs (any harness run), to see which hook an operation's cost is in.
//!
//! Two figures per operation: wall time through the harness (wasmtime + host calls + the
//! harness's own bookkeeping, so an upper bound of what Envoy would spend) and fuel, i.e.
//! wasm instructions executed by the filter, which does not depend on the machine.

use host_tests::{Exchange, Host, Vm};
use std::time::{Duration, Instant};

/// What a step of the benchmark fails with: the harness's error, or a stats answer that is not
/// 200. `main` returns it, so a failing run ends with the message instead of a panic.
type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const TOKEN: &str = "bench-admin-token-0123456789";
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) Bench/1.0";

/// The demo roles in turn.
fn role(n: usize) -> &'static str {
    match n % 3 {
        0 => "admin",
        1 => "teacher",
        _ => "student",
    }
}

fn login(vm: &Vm, n: usize) -> Result<Exchange> {
    let body = format!(r#"{{"username":"user{n}","password":"pw"}}"#);
    let reply = format!(
        r#"{{"user":{{"id":{n},"username":"user{n}","role":"{}"}}}}"#,
        role(n)
    );
    let cookie = format!("session=bench-session-{n:08}-0123456789abcdef; Path=/; HttpOnly");
    vm.post("/api/v1/auth/login")
        .header("content-type", "application/json")
        .body(body)
        .user_agent(UA)
        .from_ip("10.1.2.3")
        .respond(200, &[("set-cookie", cookie.as_str())], reply)
        .map_err(|e| format!("login {n}: {e}").into())
}

fn authenticated(vm: &Vm, n: usize) -> Result<Exchange> {
    vm.get("/api/v1/courses?page=2")
        .cookie("session", &format!("bench-session-{n:08}-0123456789abcdef"))
        .user_agent(UA)
        .respond(200, &[("content-type", "application/json")], "[]")
        .map_err(|e| format!("authenticated: {e}").into())
}

fn anonymous(vm: &Vm) -> Result<Exchange> {
    vm.get("/static/app.js")
        .user_agent(UA)
        .respond(200, &[("content-type", "text/javascript")], "x")
        .map_err(|e| format!("anonymous: {e}").into())
}

fn stats(vm: &Vm) -> Result<Exchange> {
    stats_query(vm, "")
}

fn stats_query(vm: &Vm, query: &str) -> Result<Exchange> {
    let ex = vm
        .get(&format!("/__headcount/stats{query}"))
        .bearer(TOKEN)
        .send()
        .map_err(|e| format!("stats: {e}"))?;
    if ex.status != 200 {
        return Err(format!("stats{query}: status {}: {}", ex.status, ex.text()).into());
    }
    Ok(ex)
}

struct Row {
    what: &'static str,
    sessions: usize,
    iterations: usize,
    wall: Duration,
    fuel: u64,
}

fn measure(
    what: &'static str,
    sessions: usize,
    iterations: usize,
    mut f: impl FnMut(usize) -> Result<Exchange>,
) -> Result<Row> {
    let mut fuel = 0;
    let started = Instant::now();
    for i in 0..iterations {
        fuel += f(i)?.fuel;
    }
    Ok(Row {
        what,
        sessions,
        iterations,
        wall: started.elapsed(),
        fuel,
    })
}

/// A small xorshift so the authenticated requests hit sessions all over the table.
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }
}

/// The filter spreads a flush interval's writes over this many ticks.
const TICKS_PER_FLUSH: usize = 4;

/// One flush interval's ticks; the fuel of each.
fn flush_interval(vm: &Vm) -> Result<Vec<u64>> {
    (0..TICKS_PER_FLUSH)
        .map(|_| {
            let before = vm.fuel_consumed();
            vm.tick()?;
            Ok(vm.fuel_consumed() - before)
        })
        .collect()
}

fn run(sessions: usize) -> Result<Vec<Row>> {
    let host = Host::new();
    let config = format!(r#"{{"admin_token":"{TOKEN}"}}"#);
    let vm = host.vm(&config)?;
    // Fill the table like a busy site would: 500 logins a second, the worker ticking every
    // second (flushing that second's activity, sweeping every 5 s), all within the active
    // window.
    let started = Instant::now();
    let mut fill_fuel = 0;
    for n in 0..sessions {
        fill_fuel += login(&vm, n)?.fuel;
        host.advance(Duration::from_millis(2));
        if (n + 1) % 500 == 0 {
            flush_interval(&vm)?;
        }
    }
    flush_interval(&vm)?;
    eprintln!(
        "  {sessions} sessions logged in in {:.1} s ({} fuel per login on average, ticks \
         included: {}); shared data {:.1} MiB in {} keys",
        started.elapsed().as_secs_f64(),
        fill_fuel / sessions as u64,
        vm.fuel_consumed() / sessions as u64,
        host.shared_data_bytes() as f64 / (1 << 20) as f64,
        host.shared_data_len()
    );
    let mut rows = Vec::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    rows.push(measure("anonymous request", sessions, 3000, |_| {
        anonymous(&vm)
    })?);
    rows.push(measure("authenticated request", sessions, 3000, |_| {
        authenticated(&vm, rng.next(sessions))
    })?);
    // What the buffered activity costs when the tick writes it (per request buffered);
    // the requests measured above are flushed first.
    host.advance(Duration::from_millis(1));
    flush_interval(&vm)?;
    let buffered = 1000;
    for _ in 0..buffered {
        authenticated(&vm, rng.next(sessions))?;
    }
    host.advance(Duration::from_millis(1)); // make every touch a real write
    let t = Instant::now();
    let ticks = flush_interval(&vm)?;
    let wall = t.elapsed();
    rows.push(Row {
        what: "flush, per buffered request",
        sessions,
        iterations: buffered,
        wall,
        fuel: ticks.iter().sum(),
    });
    // The flush is spread over the interval's ticks: the largest one is what a worker
    // stalls for.
    rows.push(Row {
        what: "  largest tick of that flush",
        sessions,
        iterations: 1,
        wall: wall / TICKS_PER_FLUSH as u32,
        fuel: ticks.iter().copied().max().unwrap_or(0),
    });
    // The ticks of an interval with nothing buffered (what every worker pays).
    host.advance(Duration::from_millis(1));
    let t = Instant::now();
    let ticks = flush_interval(&vm)?;
    rows.push(Row {
        what: "ticks, nothing buffered",
        sessions,
        iterations: 1,
        wall: t.elapsed(),
        fuel: ticks.iter().sum(),
    });
    rows.push(measure("login", sessions, 300, |i| {
        login(&vm, sessions + i)
    })?);
    let reads = if sessions >= 100_000 { 3 } else { 20 };
    rows.push(measure("stats read", sessions, reads, |_| stats(&vm))?);
    rows.push(measure("stats read, ?limit=0", sessions, reads, |_| {
        stats_query(&vm, "?limit=0")
    })?);
    eprintln!(
        "  linear memory after the stats reads: {:.1} MiB",
        vm.memory_bytes() as f64 / (1 << 20) as f64
    );
    Ok(rows)
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; anything else is ignored.
    let sizes: Vec<usize> = std::env::var("HEADCOUNT_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    eprintln!("module: {}", host_tests::default_module_path().display());
    let mut all = Vec::new();
    for n in sizes {
        eprintln!("{n} live sessions:");
        all.extend(run(n)?);
    }
    println!();
    println!(
        "{:<30} {:>9} {:>7} {:>14} {:>14}",
        "operation", "sessions", "runs", "ns/request", "fuel/request"
    );
    for r in &all {
        let n = r.iterations.max(1) as u128;
        println!(
            "{:<30} {:>9} {:>7} {:>14} {:>14}",
            r.what,
            r.sessions,
            r.iterations,
            r.wall.as_nanos() / n,
            u128::from(r.fuel) / n
        );
    }
    Ok(())
}
