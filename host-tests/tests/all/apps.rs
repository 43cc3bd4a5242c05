//! Many apps behind one Envoy: filters with the same `.wasm` and `vm_id` share one
//! shared-data space, and each keeps its sessions, events and metrics to itself,
//! namespaced by its app (the config's `app`, else the plugin's `name`).

use crate::common::*;
use host_tests::{Host, Vm, VmOptions};
use serde_json::{json, Value};

const TOKEN_B: &str = "token-of-app-b-0123456789";

/// Two plugins, `headcount-a` and `headcount-b`, in one `vm_id`, two workers each.
fn two_apps(host: &Host) -> (Vec<Vm>, Vec<Vm>) {
    let plugin = |name: &str, cfg: String| {
        host.vm_with(VmOptions {
            plugin_config: cfg.into_bytes(),
            plugin_name: name.into(),
            ..VmOptions::default()
        })
        .unwrap()
    };
    let a = (0..2)
        .map(|_| plugin("headcount-a", config(json!({}))))
        .collect();
    let b_cfg = json!({ "admin_token": TOKEN_B }).to_string();
    let b = (0..2)
        .map(|_| plugin("headcount-b", b_cfg.clone()))
        .collect();
    (a, b)
}

fn stats_with(vm: &Vm, token: &str) -> (u16, Value) {
    let ex = vm.get(STATS).bearer(token).send().unwrap();
    assert!(ex.answered_locally());
    (ex.status, ex.try_json().unwrap_or(Value::Null))
}

#[test]
fn two_apps_in_one_vm_id_count_only_their_own_users() {
    let host = Host::new();
    let (a, b) = two_apps(&host);
    // The same cookie name, the same user names, even the same cookie value.
    login(&a[0], 1, "alice", "student", "same-cookie");
    login(&a[1], 2, "bob", "teacher", "cookie-bob");
    login(&b[0], 1, "alice", "admin", "same-cookie");
    browse(&a[1], "same-cookie");
    browse(&b[1], "same-cookie");
    flush_all(&host);

    let (status, sa) = stats_with(&a[1], TOKEN);
    assert_eq!(status, 200);
    assert_eq!(sa["active_users"], 2, "{sa}");
    assert_eq!(usernames(&sa), ["alice", "bob"]);
    assert_eq!(sa["by_role"]["admin"], 0, "{sa}");
    let (status, sb) = stats_with(&b[1], TOKEN_B);
    assert_eq!(status, 200);
    assert_eq!(sb["active_users"], 1, "{sb}");
    assert_eq!(usernames(&sb), ["alice"]);
    assert_eq!(sb["by_role"]["admin"], 1, "{sb}");

    // One app's token reads nothing of the other's (a wrong token: 403).
    assert_eq!(stats_with(&b[0], TOKEN).0, 403);
    assert_eq!(stats_with(&a[0], TOKEN_B).0, 403);

    // A logout on one app ends only that app's session under the shared cookie value.
    logout(&b[0], "same-cookie");
    flush_all(&host);
    assert_eq!(stats_with(&a[0], TOKEN).1["active_users"], 2);
    assert_eq!(stats_with(&b[0], TOKEN_B).1["active_users"], 0);
}

#[test]
fn each_app_has_its_own_metrics_and_keys() {
    let host = Host::new();
    let (a, b) = two_apps(&host);
    for i in 0..3 {
        login(
            &a[i % 2],
            i as u64,
            &format!("user{i}"),
            "student",
            &format!("c{i}"),
        );
    }
    login(&b[0], 9, "user0", "student", "c0");
    host.advance(std::time::Duration::from_secs(6));
    flush_all(&host);
    let m = |app: &str, name: &str| host.metric(&format!("{name}.app.{app}"));
    assert_eq!(m("headcount-a", "headcount_logins_total"), Some(3));
    assert_eq!(m("headcount-b", "headcount_logins_total"), Some(1));
    assert_eq!(m("headcount-a", "headcount_active_users"), Some(3));
    assert_eq!(m("headcount-b", "headcount_active_users"), Some(1));
    assert_eq!(
        m("headcount-b", "headcount_active_users_by_role.role.student"),
        Some(1)
    );
    // Nothing is written outside an app's namespace but the apps list, by which the
    // main-thread singleton finds them (names only).
    let keys = host.shared_data_keys();
    assert!(
        keys.iter().all(|k| k.starts_with("headcount-a/")
            || k.starts_with("headcount-b/")
            || k == "headcount.v1.apps"),
        "{keys:?}"
    );
}

#[test]
fn the_configured_app_wins_over_the_plugin_name() {
    let host = Host::new();
    let vm = host
        .vm_with(VmOptions {
            plugin_config: config(json!({ "app": "shop" })).into_bytes(),
            plugin_name: "envoy.filters.http.wasm".into(),
            ..VmOptions::default()
        })
        .unwrap();
    login(&vm, 1, "alice", "student", "c1");
    assert_eq!(host.metric("headcount_logins_total.app.shop"), Some(1));
    assert!(host
        .shared_data_keys()
        .iter()
        .all(|k| k.starts_with("shop/") || k == "headcount.v1.apps"));
}

#[test]
fn a_plugin_name_that_cannot_name_an_app_is_refused_naming_the_field() {
    let host = Host::new();
    let refused = host.vm_with(VmOptions {
        plugin_config: config(json!({})).into_bytes(),
        plugin_name: "istio-system/headcount".into(),
        ..VmOptions::default()
    });
    let err = refused.expect_err("the plugin was configured").to_string();
    assert!(err.contains("`app`"), "{err}");
}

#[test]
fn the_session_cap_holds_per_app() {
    // App A logs in past its cap and evicts its own idlest sessions; app B's, in the same
    // shared data, are untouched and B's own cap is still whole.
    let host = Host::new();
    let plugin = |name: &str| {
        host.vm_with(VmOptions {
            plugin_config: config(json!({ "max_sessions": 5 })).into_bytes(),
            plugin_name: name.into(),
            ..VmOptions::default()
        })
        .unwrap()
    };
    let (a, b) = (plugin("a"), plugin("b"));
    for i in 0..5 {
        login(&b, i, &format!("b{i}"), "student", &format!("b-cookie-{i}"));
    }
    for i in 0..12 {
        login(&a, i, &format!("a{i}"), "student", &format!("a-cookie-{i}"));
    }
    flush_all(&host);
    assert_eq!(stats(&a)["active_sessions"], 5);
    assert_eq!(host.metric("headcount_evictions_total.app.a"), Some(7));
    let sb = stats(&b);
    assert_eq!(sb["active_sessions"], 5, "{sb}");
    assert_eq!(usernames(&sb), ["b0", "b1", "b2", "b3", "b4"]);
    assert_eq!(host.metric("headcount_evictions_total.app.b"), Some(0));
}
