//! The harness checked against a tiny hand-written plugin (WAT), independent of the filter.

use crate::{Error, Host, LogLevel, Outcome};
use std::time::Duration;

/// A minimal Proxy-Wasm plugin exercising headers, shared data with CAS, the clock, local
/// replies, body buffering, metrics, ticks, queues, properties and an unknown import.
const PLUGIN: &str = r#"
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $rep_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $rm_hdr (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_sd (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_sd (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick_period (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $def_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc_metric (param i32 i64) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $reg_q (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $res_q (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enq (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $deq (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_some_future_call" (func $future (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (global $metric (mut i32) (i32.const -1))
  (global $queue (mut i32) (i32.const 0))
  (data (i32.const 1024) "x-key")
  (data (i32.const 1040) "x-replaced")
  (data (i32.const 1056) "yes")
  (data (i32.const 1064) "x-added")
  (data (i32.const 1072) "x-remove-me")
  (data (i32.const 1088) ":path")
  (data (i32.const 1096) "/local")
  (data (i32.const 1104) "denied")
  (data (i32.const 1120) "\01\00\00\00\07\00\00\00\01\00\00\00x-local\001\00")
  (data (i32.const 1152) "time")
  (data (i32.const 1160) "ticks")
  (data (i32.const 1168) "q")
  (data (i32.const 1176) "x-enqueue")
  (data (i32.const 1192) "body ")
  (data (i32.const 1200) "last_body")
  (data (i32.const 1216) "x-seen")
  (data (i32.const 1224) "set ")
  (data (i32.const 1232) "get ")
  (data (i32.const 1240) "configured ")
  (data (i32.const 1256) "headers ")
  (data (i32.const 1272) "source\00address")
  (data (i32.const 1296) "headcount")
  (data (i32.const 1312) "stdout line\n")
  (data (i32.const 1328) "future ")
  (data (i32.const 1336) "x-pause")
  (data (i32.const 1344) "x-cas-status")
  (data (i32.const 1360) "/trap")
  (data (i32.const 1368) "late ")

  (func $eq (param $a i32) (param $al i32) (param $b i32) (param $bl i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $al) (local.get $bl)) (then (return (i32.const 0))))
    (block $out
      (loop $l
        (br_if $out (i32.ge_u (local.get $i) (local.get $al)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                    (i32.load8_u (i32.add (local.get $b) (local.get $i))))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
    (i32.const 1))

  ;; logs prefix followed by the decimal value of n
  (func $log_num (param $lvl i32) (param $pre i32) (param $plen i32) (param $n i32)
    (local $i i32) (local $len i32)
    (memory.copy (i32.const 3000) (local.get $pre) (local.get $plen))
    (local.set $i (i32.const 3400))
    (loop $d
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (local.get $i) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $d (local.get $n)))
    (local.set $len (i32.sub (i32.const 3400) (local.get $i)))
    (memory.copy (i32.add (i32.const 3000) (local.get $plen)) (local.get $i) (local.get $len))
    (drop (call $log (local.get $lvl) (i32.const 3000) (i32.add (local.get $plen) (local.get $len)))))

  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $n)) (i32.const 7))
                               (i32.const -8)))
    (block $ok
      (loop $grow
        (br_if $ok (i32.le_u (global.get $heap) (i32.shl (memory.size) (i32.const 16))))
        (drop (memory.grow (i32.const 1)))
        (br $grow)))
    (local.get $p))

  (func (export "_initialize"))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))

  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32)
    (drop (call $def_metric (i32.const 0) (i32.const 1160) (i32.const 5) (i32.const 2072)))
    (global.set $metric (i32.load (i32.const 2072)))
    (drop (call $reg_q (i32.const 1168) (i32.const 1) (i32.const 2072)))
    (global.set $queue (i32.load (i32.const 2072)))
    (i32.store (i32.const 2200) (i32.const 1312))
    (i32.store (i32.const 2204) (i32.const 12))
    (drop (call $fd_write (i32.const 1) (i32.const 2200) (i32.const 1) (i32.const 2208)))
    (i32.const 1))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (call $log_num (i32.const 2) (i32.const 1240) (i32.const 11) (local.get $size))
    (if (local.get $size)
      (then
        (drop (call $get_buf (i32.const 7) (i32.const 0) (local.get $size) (i32.const 2048) (i32.const 2052)))
        (if (i32.eq (i32.load8_u (i32.load (i32.const 2048))) (i32.const 120))
          (then (return (i32.const 0))))))
    (drop (call $tick_period (i32.const 1000)))
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $kp i32) (local $kl i32) (local $st i32)
    (call $log_num (i32.const 1) (i32.const 1256) (i32.const 8) (local.get $n))
    ;; x-key: read it, then compare-and-swap its value in shared data
    (if (i32.eqz (call $get_hdr (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 2048) (i32.const 2052)))
      (then
        (local.set $kp (i32.load (i32.const 2048)))
        (local.set $kl (i32.load (i32.const 2052)))
        (i32.store (i32.const 2056) (i32.const 0))
        (local.set $st (call $get_sd (local.get $kp) (local.get $kl) (i32.const 2060) (i32.const 2064) (i32.const 2056)))
        (call $log_num (i32.const 2) (i32.const 1232) (i32.const 4) (local.get $st))
        (local.set $st (call $set_sd (local.get $kp) (local.get $kl) (local.get $kp) (local.get $kl) (i32.load (i32.const 2056))))
        (call $log_num (i32.const 2) (i32.const 1224) (i32.const 4) (local.get $st))
        (i32.store8 (i32.const 2080) (i32.add (i32.const 48) (local.get $st)))
        (drop (call $add_hdr (i32.const 0) (i32.const 1344) (i32.const 12) (i32.const 2080) (i32.const 1)))))
    (drop (call $rep_hdr (i32.const 0) (i32.const 1040) (i32.const 10) (i32.const 1056) (i32.const 3)))
    (drop (call $add_hdr (i32.const 0) (i32.const 1064) (i32.const 7) (i32.const 1056) (i32.const 3)))
    (drop (call $rm_hdr (i32.const 0) (i32.const 1072) (i32.const 11)))
    ;; the host clock, into shared data
    (drop (call $now (i32.const 2096)))
    (drop (call $set_sd (i32.const 1152) (i32.const 4) (i32.const 2096) (i32.const 8) (i32.const 0)))
    ;; source.address, logged as is
    (if (i32.eqz (call $get_prop (i32.const 1272) (i32.const 14) (i32.const 2048) (i32.const 2052)))
      (then (drop (call $log (i32.const 2) (i32.load (i32.const 2048)) (i32.load (i32.const 2052))))))
    ;; x-enqueue: push its value on queue "q" of vm "headcount"
    (if (i32.eqz (call $get_hdr (i32.const 0) (i32.const 1176) (i32.const 9) (i32.const 2048) (i32.const 2052)))
      (then
        (drop (call $res_q (i32.const 1296) (i32.const 9) (i32.const 1168) (i32.const 1) (i32.const 2072)))
        (drop (call $enq (i32.load (i32.const 2072)) (i32.load (i32.const 2048)) (i32.load (i32.const 2052))))))
    (call $log_num (i32.const 2) (i32.const 1328) (i32.const 7) (call $future (i32.const 0)))
    (if (i32.eqz (call $get_hdr (i32.const 0) (i32.const 1088) (i32.const 5) (i32.const 2048) (i32.const 2052)))
      (then
        (if (call $eq (i32.load (i32.const 2048)) (i32.load (i32.const 2052)) (i32.const 1096) (i32.const 6))
          (then
            (drop (call $local (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 1104) (i32.const 6)
                               (i32.const 1120) (i32.const 22) (i32.const -1)))
            (return (i32.const 1))))
        (if (call $eq (i32.load (i32.const 2048)) (i32.load (i32.const 2052)) (i32.const 1360) (i32.const 5))
          (then unreachable))))
    (if (i32.eqz (call $get_hdr (i32.const 0) (i32.const 1336) (i32.const 7) (i32.const 2048) (i32.const 2052)))
      (then (return (i32.const 1))))
    (i32.const 0))

  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $log_num (i32.const 2) (i32.const 1192) (i32.const 5) (local.get $size))
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    (if (i32.eqz (call $get_buf (i32.const 0) (i32.const 0) (local.get $size) (i32.const 2048) (i32.const 2052)))
      (then (drop (call $set_sd (i32.const 1200) (i32.const 9) (i32.load (i32.const 2048)) (i32.load (i32.const 2052)) (i32.const 0)))))
    ;; request headers are gone by now: Envoy answers BadArgument (2)
    (call $log_num (i32.const 2) (i32.const 1368) (i32.const 5)
      (call $get_hdr (i32.const 0) (i32.const 1088) (i32.const 5) (i32.const 2048) (i32.const 2052)))
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (drop (call $add_hdr (i32.const 2) (i32.const 1216) (i32.const 6) (i32.const 1056) (i32.const 3)))
    (i32.const 0))

  (func (export "proxy_on_tick") (param $root i32)
    (drop (call $inc_metric (global.get $metric) (i64.const 1))))

  (func (export "proxy_on_queue_ready") (param $root i32) (param $q i32)
    (if (i32.eqz (call $deq (local.get $q) (i32.const 2048) (i32.const 2052)))
      (then (drop (call $log (i32.const 2) (i32.load (i32.const 2048)) (i32.load (i32.const 2052)))))))

  (func (export "proxy_on_log") (param $ctx i32)
    (if (i32.eqz (call $get_hdr (i32.const 0) (i32.const 1088) (i32.const 5) (i32.const 2048) (i32.const 2052)))
      (then (drop (call $log (i32.const 1) (i32.load (i32.const 2048)) (i32.load (i32.const 2052)))))))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32))
)
"#;

fn host() -> Host {
    Host::with_module_bytes(PLUGIN).expect("the self-test plugin compiles")
}

#[test]
fn lifecycle_config_and_stdout() {
    let host = host();
    let vm = host.vm(r#"{"a":1}"#).unwrap();
    assert!(
        vm.logged(LogLevel::Info, "configured 7"),
        "{}",
        vm.logs_text()
    );
    assert!(
        vm.logged(LogLevel::Info, "stdout line"),
        "{}",
        vm.logs_text()
    );
    assert_eq!(vm.tick_period(), Some(Duration::from_secs(1)));
    assert_eq!(vm.stubbed_imports(), ["env.proxy_some_future_call"]);

    let refused = host.vm("x-refuse-me").unwrap_err();
    assert!(
        matches!(refused, Error::ConfigureRefused { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("configured 11"), "{refused}");
}

#[test]
fn headers_are_edited_and_seen_upstream_and_downstream() {
    let host = host();
    let vm = host.vm("{}").unwrap();
    let ex = vm
        .get("/things?x=1")
        .header("x-replaced", "no")
        .header("x-remove-me", "1")
        .from_ip("10.0.0.1")
        .respond(200, &[("content-type", "text/plain")], "hi")
        .unwrap();
    assert!(ex.proxied());
    assert_eq!(ex.upstream_header("x-replaced").unwrap(), "yes");
    assert_eq!(ex.upstream_header("x-added").unwrap(), "yes");
    assert!(ex.upstream_header("x-remove-me").is_none());
    assert_eq!(ex.upstream_header(":path").unwrap(), "/things?x=1");
    assert_eq!(ex.status, 200);
    assert_eq!(ex.header("x-seen").unwrap(), "yes");
    assert_eq!(ex.text(), "hi");
    assert!(
        vm.logged(LogLevel::Info, "10.0.0.1:4567"),
        "{}",
        vm.logs_text()
    );
    assert!(vm.logged(LogLevel::Info, "future 12"), "{}", vm.logs_text());
    // on_log can read the request headers again.
    assert!(
        vm.logged(LogLevel::Debug, "/things?x=1"),
        "{}",
        vm.logs_text()
    );
}

#[test]
fn shared_data_cas_and_forced_mismatches() {
    let host = host();
    let vm = host.vm("{}").unwrap();

    // Missing key: get answers NotFound (1); a set with cas 0 creates it.
    let ex = vm.get("/").header("x-key", "k1").send().unwrap();
    assert_eq!(ex.upstream_header("x-cas-status").unwrap(), "0");
    assert!(vm.logged(LogLevel::Info, "get 1"), "{}", vm.logs_text());
    let (value, cas) = host.shared_data("k1").unwrap();
    assert_eq!(value, b"k1");

    // Existing key: get then set with the cas it returned succeeds.
    vm.take_logs();
    let ex = vm.get("/").header("x-key", "k1").send().unwrap();
    assert_eq!(ex.upstream_header("x-cas-status").unwrap(), "0");
    assert!(vm.logged(LogLevel::Info, "get 0"));
    assert!(host.shared_data("k1").unwrap().1 > cas);

    // Another worker wins the race: CasMismatch (8).
    host.force_cas_mismatches("k", 1);
    let ex = vm.get("/").header("x-key", "k1").send().unwrap();
    assert_eq!(ex.upstream_header("x-cas-status").unwrap(), "8");
    assert_eq!(host.pending_forced_mismatches(), 0);
    let stats = host.shared_data_stats();
    assert_eq!(stats.cas_mismatches, 1);
    assert_eq!(stats.forced_mismatches, 1);

    // Two VMs share one store.
    let other = host.vm("{}").unwrap();
    let ex = other.get("/").header("x-key", "k1").send().unwrap();
    assert_eq!(ex.upstream_header("x-cas-status").unwrap(), "0");
    assert!(other.logged(LogLevel::Info, "get 0"));
    assert_eq!(host.shared_data_keys(), ["k1", "time"]);
    assert_eq!(host.shared_data_bytes(), 2 + 2 + 4 + 8);
}

#[test]
fn the_clock_is_the_hosts() {
    let host = host();
    let vm = host.vm("{}").unwrap();
    host.advance(Duration::from_millis(1500));
    vm.get("/").send().unwrap();
    let (t, _) = host.shared_data("time").unwrap();
    let t = u64::from_le_bytes(t.try_into().unwrap());
    assert_eq!(t, crate::START_UNIX_SECONDS * 1_000_000_000 + 1_500_000_000);
    assert_eq!(t, host.now_nanos());
}

#[test]
fn local_replies_go_through_the_response_callbacks() {
    let host = host();
    let vm = host.vm("{}").unwrap();
    let ex = vm.get("/local").send().unwrap();
    assert!(ex.answered_locally());
    assert!(ex.upstream.is_none());
    assert_eq!(ex.status, 403);
    assert_eq!(ex.text(), "denied");
    assert_eq!(ex.header("x-local").unwrap(), "1");
    assert_eq!(ex.header("content-type").unwrap(), "text/plain");
    assert_eq!(ex.header("x-seen").unwrap(), "yes", "{:?}", ex.headers);
    let names: Vec<_> = ex.callbacks.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "proxy_on_request_headers",
            "proxy_on_response_headers",
            "proxy_on_log",
            "proxy_on_done",
            "proxy_on_delete"
        ]
    );
}

#[test]
fn paused_bodies_are_buffered_and_redelivered() {
    let host = host();
    let vm = host.vm("{}").unwrap();
    let ex = vm
        .post("/upload")
        .chunks(["ab", "cd", "ef"])
        .send()
        .unwrap();
    assert!(ex.proxied());
    assert_eq!(ex.upstream.as_ref().unwrap().body, b"abcdef");
    assert_eq!(host.shared_data("last_body").unwrap().0, b"abcdef");
    let logs = vm.logs_text();
    let sizes: Vec<_> = logs.lines().filter(|l| l.contains("body ")).collect();
    assert_eq!(sizes.len(), 3, "{logs}");
    assert!(
        sizes[0].ends_with("body 2")
            && sizes[1].ends_with("body 4")
            && sizes[2].ends_with("body 6")
    );
    // Request headers are gone once on_request_headers returned Continue.
    assert!(vm.logged(LogLevel::Info, "late 2"), "{logs}");
}

#[test]
fn a_paused_body_over_the_buffer_limit_gets_envoys_413() {
    let host = host();
    let vm = host.vm("{}").unwrap();
    // The module pauses every chunk until the last; the second chunk overflows.
    let big = vec![b'x'; crate::BUFFER_LIMIT];
    let ex = vm
        .post("/upload")
        .chunks([&b"ab"[..], &big, b"cd"])
        .send()
        .unwrap();
    assert_eq!(ex.outcome, Outcome::TooLarge(413));
    assert_eq!(ex.status, 413);
    assert!(ex.upstream.is_none());
    let logs = vm.logs_text();
    let sizes: Vec<_> = logs.lines().filter(|l| l.contains("body ")).collect();
    assert_eq!(
        sizes.len(),
        1,
        "the plugin never saw the overflowing chunk: {logs}"
    );
    // Exactly at the limit still fits.
    let fits = vec![b'x'; crate::BUFFER_LIMIT - 4];
    let ex = vm
        .post("/upload")
        .chunks([&b"ab"[..], &fits, b"cd"])
        .send()
        .unwrap();
    assert!(ex.proxied(), "{:?}", ex.outcome);
}

#[test]
fn paused_headers_stall_the_stream() {
    let host = host();
    let vm = host.vm("{}").unwrap();
    let ex = vm.get("/").header("x-pause", "1").send().unwrap();
    assert!(
        matches!(ex.outcome, Outcome::Stalled(_)),
        "{:?}",
        ex.outcome
    );
    assert!(ex.upstream.is_none());
    assert_eq!(ex.status, 0);
}

#[test]
fn ticks_and_metrics_are_shared_across_vms() {
    let host = host();
    let a = host.vm("{}").unwrap();
    let b = host.vm("{}").unwrap();
    assert!(a.tick().unwrap());
    assert_eq!(host.metric("ticks"), Some(1));
    assert_eq!(host.tick_all().unwrap(), 2);
    assert_eq!(host.advance_and_tick(Duration::from_secs(1)).unwrap(), 2);
    assert_eq!(host.metric("ticks"), Some(5));
    drop(b);
    assert_eq!(host.tick_all().unwrap(), 1);
}

#[test]
fn queues_deliver_to_the_registering_vm() {
    let host = host();
    let a = host.vm("{}").unwrap();
    let b = host.vm("{}").unwrap(); // registers last: it gets the notifications
    a.get("/")
        .header("x-enqueue", "hello from a")
        .send()
        .unwrap();
    assert_eq!(host.queue_len("q"), 1);
    assert!(!b.logged(LogLevel::Info, "hello from a"));
    assert_eq!(host.pump().unwrap(), 1);
    assert!(
        b.logged(LogLevel::Info, "hello from a"),
        "{}",
        b.logs_text()
    );
    assert_eq!(host.queue_len("q"), 0);
}

#[test]
fn a_trap_fails_the_call_and_kills_the_vm() {
    let host = host();
    let vm = host.vm("{}").unwrap();
    let err = vm.get("/trap").send().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Trap {
                callback: "proxy_on_request_headers",
                ..
            }
        ),
        "{err}"
    );
    assert!(vm.failure().is_some());
    assert!(matches!(
        vm.get("/").send().unwrap_err(),
        Error::VmFailed(_)
    ));
}

#[test]
fn corrupt_modules_fail_to_load() {
    let err = Host::with_module_bytes(b"\0asm\x01\0\0\0garbage")
        .err()
        .unwrap();
    assert!(matches!(err, Error::Module(_)), "{err}");
}

#[test]
fn vms_can_run_on_several_threads() {
    let host = host();
    let vms: Vec<_> = (0..3).map(|_| host.vm("{}").unwrap()).collect();
    std::thread::scope(|s| {
        for vm in &vms {
            s.spawn(move || {
                for _ in 0..20 {
                    vm.get("/").header("x-key", "counter").send().unwrap();
                }
            });
        }
    });
    let stats = host.shared_data_stats();
    assert_eq!(stats.sets + stats.cas_mismatches, 60 + 60, "{stats:?}");
}
