//! Requests a test sends through a VM, the upstream's scripted answer, and what came out.

use crate::error::Error;
use crate::headers::HeaderMap;
use crate::vm::Vm;
use crate::Action;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// A downstream request as it reaches Envoy.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub scheme: String,
    /// Regular headers in order (pseudo-headers are built from the fields above).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body chunks as they arrive (each one is a `proxy_on_request_body` call).
    pub body: Vec<Vec<u8>>,
    /// Downstream address, `ip:port` (a bare ip gets port 4567).
    pub source: String,
    /// Add a browser `user-agent` unless the test set one.
    pub default_user_agent: bool,
    pub(crate) id: u64,
}

/// The upstream's answer, scripted by the test.
#[derive(Clone, Debug, Default)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<Vec<u8>>,
    /// How long the upstream takes: the host clock moves forward by this much between the
    /// request reaching the upstream and its response headers coming back.
    pub latency: Duration,
}

impl UpstreamResponse {
    pub fn new(status: u16, headers: &[(&str, &str)], body: impl AsRef<[u8]>) -> Self {
        UpstreamResponse {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body: vec![body.as_ref().to_vec()],
            latency: Duration::ZERO,
        }
    }
}

/// A `proxy_send_local_response` call, as the plugin made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub details: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub grpc_status: i32,
}

/// What the upstream received.
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// How a stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request went upstream and the (possibly modified) answer reached the client.
    Proxied,
    /// The plugin answered with `proxy_send_local_response`.
    Local,
    /// A callback paused and nothing resumed it.
    Stalled(String),
    /// The plugin closed the stream.
    Reset(String),
    /// The plugin paused a request body and the body outgrew Envoy's buffer limit, so
    /// Envoy answered with this status (413) itself; the upstream never saw it.
    TooLarge(u16),
}

/// The result of one request through a VM.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub outcome: Outcome,
    /// What the upstream saw (None when the request never went upstream).
    pub upstream: Option<UpstreamRequest>,
    /// Status the client received (0 when it received nothing).
    pub status: u16,
    /// Headers the client received (with `:status`).
    pub headers: HeaderMap,
    /// Body the client received.
    pub body: Vec<u8>,
    /// The local reply exactly as the plugin sent it, before response callbacks ran on it.
    pub local_reply: Option<LocalReply>,
    /// Every callback and what it returned.
    pub callbacks: Vec<(&'static str, Action)>,
    /// Fuel (≈ wasm instructions) the whole stream cost, allocations included.
    pub fuel: u64,
    pub elapsed: Duration,
    pub context_id: u32,
    /// `proxy_on_done` returned false.
    pub done_deferred: bool,
    /// Further `proxy_send_local_response` calls after the first, which Envoy drops.
    pub ignored_local_replies: u32,
}

impl Exchange {
    pub(crate) fn new(context_id: u32) -> Self {
        Exchange {
            outcome: Outcome::Stalled("not run".into()),
            upstream: None,
            status: 0,
            headers: HeaderMap::new(),
            body: Vec::new(),
            local_reply: None,
            callbacks: Vec::new(),
            fuel: 0,
            elapsed: Duration::ZERO,
            context_id,
            done_deferred: false,
            ignored_local_replies: 0,
        }
    }

    /// The request reached the upstream and the client got its (possibly modified) answer.
    pub fn proxied(&self) -> bool {
        self.outcome == Outcome::Proxied
    }

    /// The plugin answered the request itself.
    pub fn answered_locally(&self) -> bool {
        self.outcome == Outcome::Local
    }

    /// First value of a response header the client received.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name)
    }

    /// Every value of a response header the client received.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers.get_all(name)
    }

    /// First value of a request header as the upstream received it.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.upstream.as_ref().and_then(|u| u.headers.get(name))
    }

    /// The response body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The response body parsed as JSON (`Null` when it isn't JSON; see [`Self::try_json`]).
    pub fn json(&self) -> serde_json::Value {
        self.try_json().unwrap_or(serde_json::Value::Null)
    }

    pub fn try_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Builds a request; finish with [`RequestBuilder::respond`] (the upstream's answer) or
/// [`RequestBuilder::send`].
#[must_use]
pub struct RequestBuilder<'a> {
    vm: &'a Vm,
    req: Request,
    latency: Duration,
}

impl<'a> RequestBuilder<'a> {
    pub(crate) fn new(vm: &'a Vm, method: &str, path: &str) -> Self {
        RequestBuilder {
            vm,
            req: Request {
                method: method.to_owned(),
                path: path.to_owned(),
                authority: "app.example.test".to_owned(),
                scheme: "http".to_owned(),
                headers: Vec::new(),
                body: Vec::new(),
                source: "127.0.0.1:4567".to_owned(),
                default_user_agent: true,
                id: REQUEST_IDS.fetch_add(1, Ordering::Relaxed),
            },
            latency: Duration::ZERO,
        }
    }

    /// Adds a header (repeat for several values); the value may be any bytes.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.req
            .headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Adds `name=value` to the request's `cookie` header.
    pub fn cookie(mut self, name: &str, value: &str) -> Self {
        let pair = format!("{name}={value}");
        match self
            .req
            .headers
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case("cookie"))
        {
            Some((_, v)) => {
                v.extend_from_slice(b"; ");
                v.extend_from_slice(pair.as_bytes());
            }
            None => self.req.headers.push(("cookie".into(), pair.into_bytes())),
        }
        self
    }

    pub fn user_agent(self, ua: &str) -> Self {
        self.header("user-agent", ua)
    }

    /// Sends no `user-agent` at all.
    pub fn no_user_agent(mut self) -> Self {
        self.req.default_user_agent = false;
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    /// A one-chunk body.
    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.req.body = vec![body.as_ref().to_vec()];
        self
    }

    /// A body delivered in several chunks.
    pub fn chunks<I, B>(mut self, chunks: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        self.req.body = chunks.into_iter().map(|c| c.as_ref().to_vec()).collect();
        self
    }

    /// A JSON body with `content-type: application/json`.
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }

    /// A form body with `content-type: application/x-www-form-urlencoded` (values are sent
    /// as given; encode them yourself if needed).
    pub fn form(self, fields: &[(&str, &str)]) -> Self {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }

    /// The client's address (`ip`, or `ip:port`).
    pub fn from_ip(mut self, ip: &str) -> Self {
        self.req.source = ip.to_owned();
        self
    }

    pub fn authority(mut self, host: &str) -> Self {
        self.req.authority = host.to_owned();
        self
    }

    /// The upstream takes this long to answer (the host clock advances by it).
    pub fn upstream_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// The request as built so far.
    pub fn build(self) -> Request {
        self.req
    }

    /// Sends the request; if it goes upstream, the upstream answers `status` with `headers`
    /// and `body`.
    pub fn respond(
        self,
        status: u16,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
    ) -> Result<Exchange, Error> {
        let mut upstream = UpstreamResponse::new(status, headers, body);
        upstream.latency = self.latency;
        self.vm.exchange(self.req, upstream)
    }

    /// Like [`Self::respond`] with raw header values and a chunked body.
    pub fn respond_with(self, upstream: UpstreamResponse) -> Result<Exchange, Error> {
        self.vm.exchange(self.req, upstream)
    }

    /// Sends the request; an upstream would answer `200` with an empty body.
    pub fn send(self) -> Result<Exchange, Error> {
        self.respond(200, &[], "")
    }
}
