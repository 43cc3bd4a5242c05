//! The generator against the upstream, both on an ephemeral loopback port.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "an integration-test crate: a failed unwrap is a failed test"
)]

use headcount_loadgen::load::{self, LoadConfig};
use headcount_loadgen::upstream;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// Starts the upstream in this process, on its own thread and runtime.
fn start_upstream(delay: Duration) -> SocketAddr {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(upstream::bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || rt.block_on(upstream::serve(listener, delay)));
    addr
}

fn config(addr: SocketAddr) -> LoadConfig {
    LoadConfig {
        addr,
        path: "/api/items".into(),
        rate: 200.0,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        connections: 4,
        cookies: vec!["one".into(), "two".into(), "three".into()],
        auth_share: 0.8,
        cookie_name: "session".into(),
        user_agent: load::USER_AGENT.into(),
        timeout: Duration::from_secs(5),
    }
}

#[test]
fn a_low_rate_load_gets_every_answer() {
    let addr = start_upstream(Duration::from_micros(500));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(load::run(&config(addr))).unwrap();
    assert_eq!(
        (s.sent, s.completed, s.errors, s.unsent),
        (200, 200, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.authenticated, 160);
    // Every answer waited for the upstream's delay, and 200 requests/s is nothing.
    assert!(s.latency_us.p50 >= 500, "{s:?}");
    assert!(s.latency_us.max < 1_000_000, "{s:?}");
    assert!((150.0..=210.0).contains(&s.achieved_rps), "{s:?}");
}

#[test]
fn the_binary_prints_one_loadgen_line() {
    let addr = start_upstream(Duration::ZERO);
    let out = Command::new(env!("CARGO_BIN_EXE_headcount-loadgen"))
        .args([
            "load",
            "--addr",
            &addr.to_string(),
            "--rate",
            "100",
            "--duration",
            "1",
        ])
        .args(["--connections", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<_> = stdout
        .lines()
        .filter(|l| l.starts_with("LOADGEN "))
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&lines[0]["LOADGEN ".len()..]).unwrap();
    assert_eq!(json["sent"], 100);
    assert_eq!(json["completed"], 100);
    assert_eq!(json["errors"], 0);
    assert!(json["latency_us"]["p99"].as_u64().unwrap() > 0);
}

#[test]
fn a_login_through_the_upstream_gets_a_new_session() {
    use std::io::{Read, Write};
    let addr = start_upstream(Duration::ZERO);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let body = r#"{"username":"a","password":"b"}"#;
    let login = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(login.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("set-cookie: session="), "{answer}");
    assert!(answer.contains(r#""role":"student""#), "{answer}");
}
