//! `Config::from_json` on arbitrary bytes: a config is refused with a field name, never a panic.
#![no_main]

use headcount_core::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Config::from_json(data) {
        Ok(cfg) => {
            let _ = cfg.trusted_identity_headers().count();
            let _ = cfg.is_admin_role("admin");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
