//! A workload to profile the filter's own Wasm functions with `perf` (not a test):
//! N sessions log in, then one operation repeats: `WHAT=` a stats read (`?limit=0`
//! or any query), `anon` / `auth` an anonymous / authenticated request, `flush` 1000
//! requests and a tick. `UA=` sets the authenticated requests' user agent (the
//! ignore-list scan costs per byte of it).
//!
//! ```sh
//! CARGO_TARGET_DIR=target/prof CARGO_PROFILE_RELEASE_STRIP=false \
//!     cargo build --release --target wasm32-wasip1 -p headcount
//! cargo build --release -p host-tests --features profile --example profile
//! HEADCOUNT_WASM=$PWD/target/prof/wasm32-wasip1/release/headcount.wasm ITERS=400 \
//!     perf record -D 1500 -F 2000 target/release/examples/profile
//! perf report --no-children
//! ```
use host_tests::Host;
use std::time::Duration;
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) Bench/1.0";
/// The demo roles in turn.
fn role(i: usize) -> &'static str {
    match i % 3 {
        0 => "admin",
        1 => "teacher",
        _ => "student",
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let what = std::env::var("WHAT").unwrap_or_default();
    let iters: usize = std::env::var("ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let host = Host::new();
    let vm = host.vm(r#"{"admin_token":"bench-admin-token-0123456789"}"#)?;
    for i in 0..n {
        let cookie = format!("session=bench-session-{i:08}-0123456789abcdef; Path=/; HttpOnly");
        vm.post("/api/v1/auth/login")
            .header("content-type", "application/json")
            .body(format!(r#"{{"username":"user{i}","password":"pw"}}"#))
            .user_agent(UA)
            .respond(
                200,
                &[("set-cookie", cookie.as_str())],
                format!(
                    r#"{{"user":{{"id":{i},"username":"user{i}","role":"{}"}}}}"#,
                    role(i)
                ),
            )?;
        host.advance(Duration::from_millis(2));
        if (i + 1) % 500 == 0 {
            vm.tick()?;
        }
    }
    vm.tick()?;
    eprintln!("filled");
    let t = std::time::Instant::now();
    let mut fuel = 0;
    for k in 0..iters {
        match what.as_str() {
            "flush" => {
                for j in 0..1000 {
                    let i = (k * 1000 + j * 7) % n;
                    vm.get("/api/v1/courses")
                        .cookie("session", &format!("bench-session-{i:08}-0123456789abcdef"))
                        .user_agent(UA)
                        .respond(200, &[], "[]")?;
                }
                let before = vm.fuel_consumed();
                host.advance(Duration::from_millis(1000));
                vm.tick()?;
                fuel += vm.fuel_consumed() - before;
            }
            "anon" => {
                let ex = vm
                    .get("/api/v1/courses")
                    .user_agent(UA)
                    .respond(200, &[], "[]")?;
                fuel += ex.fuel;
            }
            "auth" => {
                let i = (k * 7) % n;
                let ex = vm
                    .get("/api/v1/courses")
                    .cookie("session", &format!("bench-session-{i:08}-0123456789abcdef"))
                    .user_agent(&std::env::var("UA").unwrap_or(UA.into()))
                    .respond(200, &[], "[]")?;
                fuel += ex.fuel;
            }
            q => {
                let ex = vm
                    .get(&format!("/__headcount/stats{q}"))
                    .bearer("bench-admin-token-0123456789")
                    .send()?;
                if ex.status != 200 {
                    return Err(format!("stats{q}: status {}: {}", ex.status, ex.text()).into());
                }
                fuel += ex.fuel;
            }
        }
    }
    eprintln!(
        "{what}: {:.3} ms/iter, fuel {}",
        t.elapsed().as_secs_f64() * 1000.0 / iters as f64,
        fuel / iters as u64
    );
    Ok(())
}
