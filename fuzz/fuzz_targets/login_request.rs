//! What a client typed into a login (`typed::read`): form, JSON and multipart
//! bodies and the query string, under each normalization. The input is
//! `content-type \n query \n body`. Checks, besides never panicking: a name is
//! never empty or over the length bound, and a named result gives no reason.
#![no_main]

use headcount_core::typed::{self, Typed};
use headcount_core::Config;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn configs() -> &'static [Config; 2] {
    static CONFIGS: OnceLock<[Config; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let other = Config::from_json(
            br#"{"username_form_field": "e", "username_normalization": ["lowercase"]}"#,
        )
        .unwrap_or_default();
        [Config::default(), other]
    })
}

fn check(got: &Typed) {
    if let Some(name) = &got.username {
        assert!(!name.trim().is_empty() && name.len() <= 1024, "{name:?}");
        assert!(got.ambiguity.is_none(), "{got:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let (content_type, query, body) = match (parts.next(), parts.next(), parts.next()) {
        (Some(c), Some(q), Some(b)) => (c, Some(q), b),
        _ => (&b""[..], None, data),
    };
    for cfg in configs() {
        for ct in [
            content_type,
            b"application/json",
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=b",
        ] {
            check(&typed::read(cfg, ct, body, query));
        }
    }
});
