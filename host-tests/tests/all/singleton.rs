//! The main-thread singleton (`envoy.bootstrap.wasm`, root id `headcount_singleton`, the
//! filter's vm_id): while it beats, workers hand their activity over and it writes it, sweeps,
//! counts and keeps the dashboard's snapshot; when it stops, workers do it all again.

use crate::common::*;
use host_tests::{Host, Vm, VmOptions};
use serde_json::{json, Value};
use std::time::Duration;

const ROOT_ID: &str = "headcount_singleton";

fn singleton(host: &Host, config: &str) -> Result<Vm, host_tests::Error> {
    host.vm_with(VmOptions {
        plugin_config: config.as_bytes().to_vec(),
        root_id: ROOT_ID.into(),
        plugin_name: "headcount_singleton".into(),
        ..VmOptions::default()
    })
}

/// A host with two worker VMs of one app and the singleton, which has beaten once.
fn fleet_of_workers(extra: Value) -> (Host, Vm, Vm, Vm) {
    let host = Host::new();
    let a = host.vm(&config(extra.clone())).unwrap();
    let b = host.vm(&config(extra)).unwrap();
    let s = singleton(&host, "{}").unwrap();
    assert!(s.tick().unwrap(), "the singleton asks for ticks");
    (host, a, b, s)
}

/// Advances the clock by `d`, the singleton beating every 250 ms on the way.
fn advance(host: &Host, s: &Vm, d: Duration) {
    let mut left = d;
    while !left.is_zero() {
        let step = left.min(Duration::from_millis(250));
        host.advance(step);
        s.tick().unwrap();
        left -= step;
    }
}

/// A beat written as the singleton would, without the rest of its tick.
fn beat(host: &Host) {
    let now_ms = host.now_nanos() / 1_000_000;
    host.set_shared_data("headcount.v1.singleton.beat", &now_ms.to_le_bytes());
}

fn stats_at(vm: &Vm, path: &str) -> Value {
    let ex = vm.get(path).bearer(TOKEN).send().unwrap();
    assert_eq!(ex.status, 200, "{}", ex.text());
    ex.try_json().unwrap()
}

#[test]
fn workers_hand_activity_to_the_singleton_which_writes_it() {
    let (host, a, b, s) = fleet_of_workers(json!({}));
    login(&a, 1, "ada", "admin", "c1");
    advance(&host, &s, Duration::from_secs(30));
    browse(&a, "c1");
    browse(&a, "c1");
    anonymous(&b);
    // A worker's flush interval hands over; nothing is written until the singleton runs.
    flush(&a);
    flush(&b);
    assert_eq!(
        host.queue_len("headcount.v1.singleton"),
        2,
        "{}",
        a.logs_text()
    );
    let before = host.shared_data(&key("headcount.v1.traffic"));
    assert!(before.is_none(), "workers wrote traffic themselves");
    assert_eq!(s.deliver_queue_ready().unwrap(), 2);
    assert_eq!(host.queue_len("headcount.v1.singleton"), 0);

    // Read where nothing is buffered: what the singleton wrote.
    let st = stats(&b);
    assert_eq!(
        only_session(&st)["last_activity"],
        "2026-11-28T10:00:30.000Z",
        "{st:#}"
    );
    assert_eq!(st["traffic"]["authenticated_requests_today"], 3, "{st:#}");
    assert_eq!(st["traffic"]["anonymous_requests_today"], 1, "{st:#}");
}

#[test]
fn the_singleton_sweeps_and_sets_gauges_and_workers_do_not() {
    let (host, a, _b, s) = fleet_of_workers(json!({
        "idle_timeout_seconds": 600,
        "sweep_interval_seconds": 1,
    }));
    login(&a, 1, "ada", "admin", "c1");
    login(&a, 2, "bob", "student", "c2");
    host.advance(Duration::from_secs(2));
    s.tick().unwrap();
    assert_eq!(host.metric(&stat("headcount_active_users")), Some(2));
    host.advance(Duration::from_secs(601));
    beat(&host); // the workers now only hand over
    flush(&a);
    assert_eq!(
        host.metric(&stat("headcount_expiries_total")),
        Some(0),
        "a worker swept although the singleton beats"
    );
    host.advance(Duration::from_secs(1));
    s.tick().unwrap();
    assert_eq!(host.metric(&stat("headcount_expiries_total")), Some(2));
    assert_eq!(host.metric(&stat("headcount_active_users")), Some(0));
    assert!(s.logged(
        host_tests::LogLevel::Info,
        "singleton: following app `headcount`"
    ));
}

#[test]
fn without_a_beat_workers_do_the_work_themselves() {
    let (host, a, _b, s) = fleet_of_workers(json!({
        "idle_timeout_seconds": 600,
        "sweep_interval_seconds": 1,
    }));
    login(&a, 1, "ada", "admin", "c1");
    // The singleton stops beating (stuck, or gone): after ALIVE_MS the workers take over.
    host.advance(Duration::from_millis(2_001));
    browse(&a, "c1");
    flush(&a);
    assert_eq!(
        host.queue_len("headcount.v1.singleton"),
        0,
        "handed to a silent singleton"
    );
    assert!(host.shared_data(&key("headcount.v1.traffic")).is_some());
    host.advance(Duration::from_secs(601));
    flush(&a);
    assert_eq!(host.metric(&stat("headcount_expiries_total")), Some(1));
    drop(s);
}

#[test]
fn the_dashboard_reads_a_snapshot_others_an_exact_report() {
    let (host, a, b, s) = fleet_of_workers(json!({}));
    login(&a, 1, "ada", "admin", "c1");
    let snap = "/__headcount/stats?snapshot=1";
    // No snapshot yet: exact, and the singleton is told that one is wanted.
    assert_eq!(stats_at(&b, snap)["active_users"], 1);
    host.advance(Duration::from_millis(250));
    s.tick().unwrap();
    login(&a, 2, "bob", "student", "c2");
    let old = stats_at(&b, snap);
    assert_eq!(old["active_users"], 1, "not the snapshot: {old:#}");
    assert_eq!(old["generated_at"], "2026-11-28T10:00:00.250Z");
    assert_eq!(stats(&b)["active_users"], 2, "a plain /stats is exact");
    assert_eq!(stats_at(&b, &format!("{snap}&limit=1"))["active_users"], 2);
    // Renewed once a second while read.
    host.advance(Duration::from_millis(500));
    s.tick().unwrap();
    assert_eq!(stats_at(&b, snap)["active_users"], 1);
    host.advance(Duration::from_millis(500));
    s.tick().unwrap();
    assert_eq!(stats_at(&b, snap)["active_users"], 2);
    // Once the singleton is silent, its last snapshot ages out and the answer is exact again.
    login(&a, 3, "cy", "student", "c3");
    host.advance(Duration::from_millis(2_001));
    assert_eq!(stats_at(&b, snap)["active_users"], 3);
}

#[test]
fn an_unread_snapshot_is_not_made() {
    let (host, a, _b, s) = fleet_of_workers(json!({}));
    login(&a, 1, "ada", "admin", "c1");
    for _ in 0..8 {
        host.advance(Duration::from_millis(250));
        s.tick().unwrap();
    }
    assert!(host
        .shared_data(&key("headcount.v1.stats.snapshot"))
        .is_none());
}

#[test]
fn the_singleton_refuses_a_configuration_naming_what_it_got() {
    let host = Host::new();
    let err = match singleton(&host, r#"{"admin_token": "x"}"#) {
        Ok(vm) => panic!("configured: {}", vm.logs_text()),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("takes no configuration"), "{err}");
    assert!(singleton(&host, "").is_ok());
}
