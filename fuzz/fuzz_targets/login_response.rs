//! Login bodies: identity from the response JSON (JSON pointers), combined with
//! what the request body typed (the `login_request` target fuzzes that reader).
//! The input is `content-type \n body`.
#![no_main]

use headcount_core::{identity, typed, Config};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn configs() -> &'static [Config; 2] {
    static CONFIGS: OnceLock<[Config; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let pointers = Config::from_json(
            br#"{"user_id_pointer": "/data/0/id", "username_pointer": "/a~1b/~0c",
                 "role_pointer": "", "username_form_field": "email"}"#,
        )
        .unwrap_or_default();
        [Config::default(), pointers]
    })
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == b'\n');
    let (content_type, body) = match (parts.next(), parts.next()) {
        (Some(content_type), Some(body)) => (content_type, body),
        _ => (&b""[..], data),
    };
    for cfg in configs() {
        let response = identity::from_response_body(cfg, body);
        let _ = response.clone().resolve(cfg);
        for ct in [
            content_type,
            b"application/json",
            b"application/x-www-form-urlencoded; charset=utf-8",
        ] {
            let typed = typed::read(cfg, ct, body, None);
            let request = identity::Identity {
                username: typed.username,
                ..identity::Identity::default()
            };
            let _ = response.clone().or(request).resolve(cfg);
        }
    }
});
