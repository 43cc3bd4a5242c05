//! A wasmtime harness that plays Envoy's side of the Proxy-Wasm ABI (v0.2.1) for the built
//! `headcount.wasm`, so integration tests can drive the real filter binary.
//!
//! ```no_run
//! # fn main() -> Result<(), host_tests::Error> {
//! use host_tests::Host;
//! use std::time::Duration;
//!
//! let host = Host::new(); // shared data, metrics, queues and the clock
//! let vm = host.vm(r#"{"admin_token": "t"}"#)?; // one worker's VM, configured
//! let login = vm
//!     .post("/api/v1/auth/login")
//!     .json(&serde_json::json!({"username": "ada", "password": "pw"}))
//!     .from_ip("10.0.0.1")
//!     .respond(
//!         200,
//!         &[("set-cookie", "session=abc; Path=/; HttpOnly")],
//!         r#"{"user":{"id":1,"username":"ada","role":"admin"}}"#,
//!     )?;
//! assert!(login.proxied());
//! host.advance(Duration::from_secs(10));
//! vm.tick()?; // flushes this worker's coalesced activity
//! let stats = vm.get("/__headcount/stats").bearer("t").send()?;
//! assert_eq!(stats.json()["active_users"], 1);
//! # Ok(()) }
//! ```
//!
//! What the host does, and how it follows Envoy (see `proxy-wasm-cpp-host` and Envoy's
//! `source/extensions/common/wasm/context.cc`):
//!
//! * Lifecycle: `_initialize` (+`main`) or `_start`, `proxy_on_context_create(1, 0)`,
//!   `proxy_on_vm_start`, `proxy_on_configure` (false → [`Error::ConfigureRefused`]); per
//!   stream `proxy_on_context_create(ctx, 1)`, request headers/body, response headers/body,
//!   `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.
//! * Pause on request/response headers is StopAllIterationAndWatermark: the body is not
//!   delivered and, unless the plugin calls `proxy_continue_stream` in that callback, the
//!   stream stalls ([`Outcome::Stalled`]). Pause on a body chunk is StopIterationAndBuffer:
//!   the next call sees the whole buffer so far. Data that would take a paused body past
//!   [`BUFFER_LIMIT`] ends the stream before the plugin sees it: 413
//!   ([`Outcome::TooLarge`]) for a request, a reset for a response.
//! * Request headers are readable and writable only in `proxy_on_request_headers` (and while
//!   it stays paused), response headers only in `proxy_on_response_headers`; everything is
//!   readable in `proxy_on_log`. Elsewhere `proxy_get_header_map_value` answers
//!   `BadArgument` — which the Rust SDK turns into a panic — and the pairs come back empty.
//!   Header-derived properties (`request.path`, ...) follow the same rule.
//! * `proxy_send_local_response` takes effect after the callback returns; the local reply
//!   then runs through the plugin's own `proxy_on_response_headers`/`_body`, as in Envoy.
//! * Shared data has Envoy's CAS rules (cas 0 = unconditional; a missing key is created; a
//!   stale cas on an existing key is `CasMismatch`), and
//!   [`Host::force_cas_mismatches`] simulates other workers winning races.
//! * A trap (a plugin panic) fails the call with [`Error::Trap`] and the VM stays dead.
//! * Imports the harness does not implement answer `Unimplemented` (12).

mod abi;
mod engine;
mod error;
mod headers;
mod host;
mod hostcalls;
mod http;
mod shared;
mod vm;

pub use abi::{buffer, map, status, stream, Action, LogLevel, MetricKind};
pub use engine::default_module_path;
pub use error::{Error, BUILD_COMMAND};
pub use headers::HeaderMap;
pub use host::{Host, START_UNIX_SECONDS};
pub use http::{
    Exchange, LocalReply, Outcome, Request, RequestBuilder, UpstreamRequest, UpstreamResponse,
};
pub use shared::{Metric, SharedDataStats};
pub use vm::{LogEntry, Vm, VmOptions, BUFFER_LIMIT, CALL_FUEL, ROOT_CONTEXT_ID};

/// Serialization helpers, for tests that build raw ABI payloads.
pub mod wire {
    pub use crate::abi::{deserialize_pairs, serialize_pairs};
}

#[cfg(test)]
mod selftest;
