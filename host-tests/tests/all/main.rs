//! Integration tests: the built headcount.wasm driven through the harness host.
//!
//! Build the filter first: `cargo build --release --target wasm32-wasip1 -p headcount`
//! (or point HEADCOUNT_WASM at a .wasm). A missing or corrupt module fails every test.
// This whole crate is test code, which the lint policy exempts (clippy.toml), but clippy's
// exemption only reaches `#[test]` functions and `#[cfg(test)]` items, not the shared helpers
// (`common.rs`) and builders the tests call.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "an integration-test crate: a failed unwrap is a failed test"
)]

mod apps;
mod bad_input;
mod cap;
mod common;
mod concurrency;
mod expiry;
mod filter;
mod jwt;
mod layout;
mod login;
mod logout;
mod memory;
mod rotation;
mod singleton;
mod stats;
mod traffic;
