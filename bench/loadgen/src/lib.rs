//! The Envoy benchmark's open-loop load generator (`bench/run.py --only openloop`).
//!
//! - [`load`]: requests at a constant rate, whatever the server does; each
//!   latency is taken from the request's *scheduled* time, so a server that
//!   stalls is charged for every request that should have left meanwhile
//!   (coordinated omission corrected, as wrk2 does).
//! - [`upstream`]: a keep-alive HTTP/1.1 server answering every request after a
//!   set delay: the application behind Envoy, "answering in about 1 ms".
//!
//! Both speak HTTP/1.1 by hand ([`http`]) over tokio's `TcpStream`, only to
//! loopback addresses. Their waits ([`pacer`], [`timer`]) are precise to tens
//! of microseconds, where tokio's own timer rounds up to the millisecond.
#![forbid(unsafe_code)]

pub mod args;
pub mod http;
pub mod load;
pub mod pacer;
pub mod schedule;
pub mod timer;
pub mod upstream;

use std::net::SocketAddr;

/// Only loopback addresses are ever connected to or listened on.
pub fn loopback(addr: SocketAddr) -> Result<SocketAddr, String> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!(
            "{addr} is not a loopback address: the benchmark stays on this machine"
        ))
    }
}
