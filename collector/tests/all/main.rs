//! The collector's tests, against real Redis servers this binary starts and
//! stops itself (Debian's `redis-server`, on loopback ports).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "an integration-test crate: a failed unwrap is a failed test"
)]

mod fleet;
mod ledger;
mod servers;
mod service;
