//! Request-path parsers on arbitrary header bytes. The input is split on `\n` into
//! fields (HTTP header values never contain one): Cookie, Set-Cookie, the forwarding
//! header, the peer address, method, path, Authorization, User-Agent.
#![no_main]

use headcount_core::{gateway, identity, Config};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn configs() -> &'static [Config; 2] {
    static CONFIGS: OnceLock<[Config; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let forwarded = Config::from_json(
            br#"{"client_ip_header": "x-forwarded-for", "trusted_hops": 2,
                 "route_prefix": "/_hc", "login_method": "PUT", "login_path": "/login"}"#,
        )
        .unwrap_or_default();
        [Config::default(), forwarded]
    })
}

fuzz_target!(|data: &[u8]| {
    let mut f = data.split(|b| *b == b'\n');
    let mut next = || f.next().unwrap_or_default();
    let (cookie, set_cookie, forwarded, peer) = (next(), next(), next(), next());
    let (method, path, authorization, agent) = (next(), next(), next(), next());
    let now_ms = u64::from_le_bytes(
        data.get(..8)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 8]),
    );
    for cfg in configs() {
        let _ = identity::request_cookie(cookie, &cfg.session_cookie);
        let _ = identity::set_cookie(set_cookie, &cfg.session_cookie, now_ms);
        let _ = identity::set_cookie(set_cookie, &cfg.session_cookie, 1_800_000_000_000);
        let ip = identity::client_ip(cfg, Some(forwarded), Some(peer));
        let _ = identity::anonymize_ip(&ip);
        let _ = identity::client_ip(cfg, None, Some(forwarded));
        let _ = gateway::route(cfg, method, path);
        let _ = gateway::query_param(path, "after");
        let _ = identity::is_ignored_agent(cfg, agent);
        let _ = identity::clean_user_agent(agent);
    }
    let _ = gateway::bearer(authorization);
    let _ = gateway::bearer(data);
});
