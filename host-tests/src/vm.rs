//! One plugin VM (an Envoy worker's copy of the filter): its wasmtime `Store`, the per-VM host
//! state the hostcalls see, and the Envoy-like driving of the context lifecycle and of HTTP
//! streams.

use crate::abi::{Action, LogLevel};
use crate::engine::Compiled;
use crate::error::Error;
use crate::headers::HeaderMap;
use crate::http::{
    Exchange, LocalReply, Outcome, Request, RequestBuilder, UpstreamRequest, UpstreamResponse,
};
use crate::shared::{lock, Mailbox, Shared};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::{Instance, Memory, Store, TypedFunc, WasmParams, WasmResults};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;

/// Fuel given to every single callback; a plugin that burns through it traps ("all fuel
/// consumed"), which turns an infinite loop into a test failure instead of a hang.
pub const CALL_FUEL: u64 = 50_000_000_000;

/// Context id Envoy-like hosts give the plugin (root) context.
pub const ROOT_CONTEXT_ID: u32 = 1;

/// Envoy's default `per_connection_buffer_limit_bytes` (1 MiB): the most a paused body
/// may buffer.
pub const BUFFER_LIMIT: usize = 1 << 20;

/// One `proxy_log` line (or a line the plugin wrote to stdout/stderr).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub level: LogLevel,
    pub message: String,
    /// The context whose callback logged it.
    pub context_id: u32,
}

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] (ctx {}) {}",
            self.level.name(),
            self.context_id,
            self.message
        )
    }
}

/// How a VM is started. [`crate::Host::vm`] fills in everything but the plugin configuration.
#[derive(Clone, Debug)]
pub struct VmOptions {
    /// `PLUGIN_CONFIGURATION` buffer, read in `proxy_on_configure`.
    pub plugin_config: Vec<u8>,
    /// `VM_CONFIGURATION` buffer, read in `proxy_on_vm_start`.
    pub vm_config: Vec<u8>,
    /// `plugin_vm_id`; also the namespace of shared data and queues.
    pub vm_id: String,
    /// `plugin_root_id`.
    pub root_id: String,
    /// `plugin_name`.
    pub plugin_name: String,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            vm_id: "headcount".into(),
            root_id: "headcount".into(),
            plugin_name: "headcount".into(),
        }
    }
}

/// The HTTP stream a callback is running for, with Envoy's rules for what is reachable when.
pub(crate) struct Stream {
    pub(crate) context_id: u32,
    pub(crate) request_headers: HeaderMap,
    /// Envoy keeps `request_headers_` only during `on_request_headers` (and while that stays
    /// paused); afterwards reads get `BadArgument` until `on_log`.
    pub(crate) request_headers_live: bool,
    pub(crate) request_body: Vec<u8>,
    pub(crate) request_body_live: bool,
    pub(crate) response_headers: HeaderMap,
    pub(crate) response_headers_live: bool,
    pub(crate) response_body: Vec<u8>,
    pub(crate) response_body_live: bool,
    /// `on_log`: every map readable, none writable.
    pub(crate) log_phase: bool,
    pub(crate) source: String,
    pub(crate) source_port: u16,
    pub(crate) request_time_ns: u64,
    pub(crate) connection_id: u64,
    pub(crate) response_code: Option<u16>,
    pub(crate) properties: HashMap<Vec<u8>, Vec<u8>>,
    // Deferred actions requested during the running callback (Envoy runs them after it).
    pub(crate) local_reply: Option<LocalReply>,
    pub(crate) ignored_local_replies: u32,
    pub(crate) continue_request: bool,
    pub(crate) continue_response: bool,
    pub(crate) reset: Option<&'static str>,
}

/// Per-VM host state, reachable from every hostcall.
pub struct VmState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) shared: Arc<Shared>,
    pub(crate) vm_index: u32,
    pub(crate) vm_id: String,
    pub(crate) root_id: String,
    pub(crate) plugin_name: String,
    pub(crate) current_context: u32,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) plugin_config: Vec<u8>,
    pub(crate) in_configure: bool,
    pub(crate) logs: Vec<LogEntry>,
    pub(crate) echo_logs: bool,
    pub(crate) tick_period_ms: u32,
    pub(crate) metric_names: HashMap<u32, String>,
    pub(crate) metric_next: [u32; 3],
    pub(crate) stream: Option<Stream>,
    pub(crate) memory: Option<Memory>,
    pub(crate) alloc: Option<TypedFunc<i32, i32>>,
    pub(crate) root_properties: HashMap<Vec<u8>, Vec<u8>>,
}

impl VmState {
    fn new(shared: Arc<Shared>, vm_index: u32, opts: &VmOptions) -> Self {
        let mut wasi = WasiCtxBuilder::new();
        wasi.wall_clock(shared.clock.clone())
            .monotonic_clock(shared.clock.clone());
        VmState {
            wasi: wasi.build_p1(),
            shared,
            vm_index,
            vm_id: opts.vm_id.clone(),
            root_id: opts.root_id.clone(),
            plugin_name: opts.plugin_name.clone(),
            current_context: 0,
            vm_config: opts.vm_config.clone(),
            plugin_config: opts.plugin_config.clone(),
            in_configure: false,
            logs: Vec::new(),
            echo_logs: std::env::var_os("HEADCOUNT_HOST_LOG").is_some(),
            tick_period_ms: 0,
            metric_names: HashMap::new(),
            metric_next: [0, 1, 2],
            stream: None,
            memory: None,
            alloc: None,
            root_properties: HashMap::new(),
        }
    }

    /// A throwaway state used only to ask the linker which imports it can satisfy.
    pub(crate) fn probe() -> Self {
        Self::new(Arc::new(Shared::new(0)), u32::MAX, &VmOptions::default())
    }

    pub(crate) fn log(&mut self, level: LogLevel, message: String) {
        if self.echo_logs {
            eprintln!("[vm {}] [{}] {}", self.vm_index, level.name(), message);
        }
        self.logs.push(LogEntry {
            level,
            message,
            context_id: self.current_context,
        });
    }

    /// A note from the harness itself, kept in the VM log at debug level.
    pub(crate) fn note(&mut self, message: String) {
        self.log(LogLevel::Debug, message);
    }

    pub(crate) fn stream_mut(&mut self) -> Option<&mut Stream> {
        self.stream.as_mut()
    }
}

struct Callbacks {
    on_context_create: Option<TypedFunc<(i32, i32), ()>>,
    on_vm_start: Option<TypedFunc<(i32, i32), i32>>,
    on_configure: Option<TypedFunc<(i32, i32), i32>>,
    on_tick: Option<TypedFunc<i32, ()>>,
    on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    on_request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_delete: Option<TypedFunc<i32, ()>>,
}

fn typed<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<VmState>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, Error> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(&*store)
            .map(Some)
            .map_err(|e| Error::Instantiate(format!("export {name} has an unexpected type: {e}"))),
    }
}

pub(crate) struct VmInner {
    store: Store<VmState>,
    cb: Callbacks,
    next_context: u32,
    failed: Option<String>,
    fuel_total: u64,
    /// `HEADCOUNT_FUEL_TRACE` set: print each callback's fuel to stderr (profiling).
    fuel_trace: bool,
    mailbox: Mailbox,
}

/// A started plugin VM. Cheap to clone (all clones drive the same VM); `Send + Sync`, so a test
/// can drive several VMs from several threads like Envoy's workers.
#[derive(Clone)]
pub struct Vm {
    inner: Arc<Mutex<VmInner>>,
    index: u32,
    stubbed: Arc<Vec<String>>,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm").field("index", &self.index).finish()
    }
}

/// Envoy's reading of a stream callback's result after deferred actions ran.
enum Step {
    Go,
    Paused,
    Local,
    Reset(&'static str),
    /// A paused body outgrew [`BUFFER_LIMIT`]; Envoy answers this status itself.
    TooLarge(u16),
}

impl VmInner {
    fn state(&mut self) -> &mut VmState {
        self.store.data_mut()
    }

    fn stream(&mut self) -> Result<&mut Stream, Error> {
        self.store
            .data_mut()
            .stream
            .as_mut()
            .ok_or_else(|| Error::VmFailed("harness: stream state vanished".into()))
    }

    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        callback: &'static str,
        func: TypedFunc<P, R>,
        params: P,
        context: u32,
    ) -> Result<R, Error> {
        if let Some(m) = &self.failed {
            return Err(Error::VmFailed(m.clone()));
        }
        self.state().current_context = context;
        // Fuel is always enabled on the engine, so these cannot fail.
        self.store.set_fuel(CALL_FUEL).ok();
        let result = func.call(&mut self.store, params);
        let left = self.store.get_fuel().unwrap_or(0);
        self.fuel_total += CALL_FUEL.saturating_sub(left);
        if self.fuel_trace {
            eprintln!("fuel {callback} {}", CALL_FUEL.saturating_sub(left));
        }
        self.state().current_context = 0;
        result.map_err(|e| {
            let message = format!("{e:?}");
            self.failed = Some(format!("{callback} trapped: {message}"));
            Error::Trap {
                callback,
                message,
                logs: self.store.data().logs.clone(),
            }
        })
    }

    fn step(&mut self, action: Action, request_side: bool) -> Result<Step, Error> {
        let s = self.stream()?;
        if let Some(why) = s.reset {
            return Ok(Step::Reset(why));
        }
        if s.local_reply.is_some() {
            return Ok(Step::Local);
        }
        let resumed = if request_side {
            std::mem::take(&mut s.continue_request)
        } else {
            std::mem::take(&mut s.continue_response)
        };
        if action.is_continue() || resumed {
            Ok(Step::Go)
        } else {
            Ok(Step::Paused)
        }
    }

    fn deliver_mail(&mut self) -> Result<usize, Error> {
        let mut delivered = 0;
        loop {
            let next = lock(&self.mailbox).pop_front();
            let Some((context, token)) = next else {
                return Ok(delivered);
            };
            if let Some(f) = self.cb.on_queue_ready.clone() {
                self.call(
                    "proxy_on_queue_ready",
                    f,
                    (context as i32, token as i32),
                    context,
                )?;
                delivered += 1;
            }
        }
    }

    fn tick(&mut self) -> Result<bool, Error> {
        if self.store.data().tick_period_ms == 0 {
            return Ok(false);
        }
        let Some(f) = self.cb.on_tick.clone() else {
            return Ok(false);
        };
        self.call("proxy_on_tick", f, ROOT_CONTEXT_ID as i32, ROOT_CONTEXT_ID)?;
        Ok(true)
    }

    fn request_headers_for(req: &Request) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.add(":authority", &req.authority);
        h.add(":path", &req.path);
        h.add(":method", &req.method);
        h.add(":scheme", &req.scheme);
        let has = |name: &str| {
            req.headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(name))
        };
        for (k, v) in &req.headers {
            h.add(k, v);
        }
        if req.default_user_agent && !has("user-agent") {
            h.add(
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
            );
        }
        let body_len: usize = req.body.iter().map(Vec::len).sum();
        if body_len > 0 && !has("content-length") && !has("transfer-encoding") {
            h.add("content-length", body_len.to_string());
        }
        if !has("x-forwarded-proto") {
            h.add("x-forwarded-proto", &req.scheme);
        }
        if !has("x-request-id") {
            h.add(
                "x-request-id",
                format!("00000000-0000-4000-8000-{:012x}", req.id),
            );
        }
        h
    }

    /// Feeds body chunks through `on_{request,response}_body` with Envoy's buffering: while the
    /// plugin answers Pause (StopIterationAndBuffer) the chunks accumulate and each call sees
    /// the whole buffer. Returns the bytes passed on, and how the stream ended up.
    fn run_body(
        &mut self,
        ctx: u32,
        request_side: bool,
        chunks: &[Vec<u8>],
        trace: &mut Vec<(&'static str, Action)>,
    ) -> Result<(Vec<u8>, Step), Error> {
        let (name, func) = if request_side {
            ("proxy_on_request_body", self.cb.on_request_body.clone())
        } else {
            ("proxy_on_response_body", self.cb.on_response_body.clone())
        };
        let mut passed = Vec::new();
        let mut buffered: Vec<u8> = Vec::new();
        let mut paused = false;
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.iter().enumerate() {
            let eos = i == last;
            buffered.extend_from_slice(chunk);
            // Envoy adds new data to a paused body's buffer before it calls the plugin
            // again, and over the limit it answers itself: 413 for a request; for a
            // response whose headers already went out, a reset.
            if paused && buffered.len() > BUFFER_LIMIT {
                return Ok((
                    passed,
                    if request_side {
                        Step::TooLarge(413)
                    } else {
                        Step::Reset("the paused response body outgrew Envoy's buffer limit")
                    },
                ));
            }
            let Some(func) = func.clone() else {
                passed.append(&mut buffered);
                continue;
            };
            {
                let s = self.stream()?;
                if request_side {
                    s.request_body = std::mem::take(&mut buffered);
                    s.request_body_live = true;
                } else {
                    s.response_body = std::mem::take(&mut buffered);
                    s.response_body_live = true;
                }
            }
            let size = {
                let s = self.stream()?;
                if request_side {
                    s.request_body.len()
                } else {
                    s.response_body.len()
                }
            };
            let raw = self.call(name, func, (ctx as i32, size as i32, eos as i32), ctx)?;
            let action = Action::from_raw(raw);
            trace.push((name, action));
            {
                let s = self.stream()?;
                buffered = if request_side {
                    std::mem::take(&mut s.request_body)
                } else {
                    std::mem::take(&mut s.response_body)
                };
            }
            match self.step(action, request_side)? {
                Step::Go => {
                    passed.append(&mut buffered);
                    let s = self.stream()?;
                    if request_side {
                        s.request_body_live = false;
                    } else {
                        s.response_body_live = false;
                    }
                }
                Step::Paused => {
                    // Keep buffering; at end of stream nothing will come to resume it.
                    paused = true;
                    let s = self.stream()?;
                    if request_side {
                        s.request_body = buffered.clone();
                    } else {
                        s.response_body = buffered.clone();
                    }
                    if eos {
                        return Ok((passed, Step::Paused));
                    }
                }
                other => return Ok((passed, other)),
            }
        }
        Ok((passed, Step::Go))
    }

    /// Runs the response half (upstream answer or local reply) through the response callbacks.
    /// Returns what the client receives, or how the stream ended.
    fn run_response(
        &mut self,
        ctx: u32,
        status: u16,
        mut headers: HeaderMap,
        chunks: &[Vec<u8>],
        trace: &mut Vec<(&'static str, Action)>,
        local: bool,
    ) -> Result<(Step, HeaderMap, Vec<u8>), Error> {
        let body_len: usize = chunks.iter().map(Vec::len).sum();
        if !headers.contains(":status") {
            let mut with_status = HeaderMap::new();
            with_status.add(":status", status.to_string());
            for (k, v) in headers.iter() {
                with_status.add(k, v);
            }
            headers = with_status;
        }
        if body_len > 0 && !headers.contains("content-length") {
            headers.add("content-length", body_len.to_string());
        }
        {
            let s = self.stream()?;
            s.response_code = Some(status);
            s.response_headers = headers;
            s.response_headers_live = true;
        }
        let eos = body_len == 0;
        if let Some(f) = self.cb.on_response_headers.clone() {
            let n = self.stream()?.response_headers.len();
            let raw = self.call(
                "proxy_on_response_headers",
                f,
                (ctx as i32, n as i32, eos as i32),
                ctx,
            )?;
            let action = Action::from_raw(raw);
            trace.push(("proxy_on_response_headers", action));
            if local {
                // A second local reply while a local reply is being encoded is dropped.
                let s = self.stream()?;
                if s.local_reply.take().is_some() {
                    s.ignored_local_replies += 1;
                }
            }
            match self.step(action, false)? {
                Step::Go => {}
                Step::Paused => {
                    return Ok((Step::Paused, HeaderMap::new(), Vec::new()));
                }
                other => return Ok((other, HeaderMap::new(), Vec::new())),
            }
        }
        let client_headers = {
            let s = self.stream()?;
            s.response_headers_live = false;
            s.response_headers.clone()
        };
        let non_empty: Vec<Vec<u8>> = chunks.iter().filter(|c| !c.is_empty()).cloned().collect();
        let (body, mut step) = self.run_body(ctx, false, &non_empty, trace)?;
        if local {
            let s = self.stream()?;
            if s.local_reply.take().is_some() {
                // Envoy drops a second local reply; the first one goes on.
                s.ignored_local_replies += 1;
                if let Step::Local = step {
                    step = Step::Go;
                }
            }
        }
        Ok((step, client_headers, body))
    }

    fn exchange(&mut self, req: Request, upstream: UpstreamResponse) -> Result<Exchange, Error> {
        if let Some(m) = &self.failed {
            return Err(Error::VmFailed(m.clone()));
        }
        let started = Instant::now();
        let fuel_before = self.fuel_total;
        let ctx = self.next_context;
        self.next_context += 1;
        let shared = self.store.data().shared.clone();
        let connection_id = shared
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (source, source_port) = split_addr(&req.source);
        let headers = Self::request_headers_for(&req);
        self.state().stream = Some(Stream {
            context_id: ctx,
            request_headers: headers,
            request_headers_live: false,
            request_body: Vec::new(),
            request_body_live: false,
            response_headers: HeaderMap::new(),
            response_headers_live: false,
            response_body: Vec::new(),
            response_body_live: false,
            log_phase: false,
            source,
            source_port,
            request_time_ns: shared.clock.nanos(),
            connection_id,
            response_code: None,
            properties: HashMap::new(),
            local_reply: None,
            ignored_local_replies: 0,
            continue_request: false,
            continue_response: false,
            reset: None,
        });
        let mut trace = Vec::new();
        let result = self.drive(ctx, &req, &upstream, &mut trace);
        let result = match result {
            Ok(mut ex) => {
                self.finish_stream(ctx, &mut trace, &mut ex)?;
                ex.callbacks = trace;
                ex.fuel = self.fuel_total - fuel_before;
                ex.elapsed = started.elapsed();
                Ok(ex)
            }
            Err(e) => Err(e),
        };
        self.state().stream = None;
        result
    }

    fn drive(
        &mut self,
        ctx: u32,
        req: &Request,
        upstream: &UpstreamResponse,
        trace: &mut Vec<(&'static str, Action)>,
    ) -> Result<Exchange, Error> {
        let mut ex = Exchange::new(ctx);
        if let Some(f) = self.cb.on_context_create.clone() {
            self.call(
                "proxy_on_context_create",
                f,
                (ctx as i32, ROOT_CONTEXT_ID as i32),
                ctx,
            )?;
        }
        let chunks: Vec<Vec<u8>> = req.body.iter().filter(|c| !c.is_empty()).cloned().collect();
        let eos = chunks.is_empty();

        // Request headers.
        let mut step = Step::Go;
        if let Some(f) = self.cb.on_request_headers.clone() {
            let n = {
                let s = self.stream()?;
                s.request_headers_live = true;
                s.request_headers.len()
            };
            let raw = self.call(
                "proxy_on_request_headers",
                f,
                (ctx as i32, n as i32, eos as i32),
                ctx,
            )?;
            let action = Action::from_raw(raw);
            trace.push(("proxy_on_request_headers", action));
            step = self.step(action, true)?;
            if let Step::Go = step {
                self.stream()?.request_headers_live = false;
            }
        }
        let upstream_headers = self.stream()?.request_headers.clone();

        // Request body.
        let mut upstream_body = Vec::new();
        if let Step::Go = step {
            let (passed, s) = self.run_body(ctx, true, &chunks, trace)?;
            upstream_body = passed;
            step = s;
        }

        match step {
            Step::Go => {
                ex.upstream = Some(UpstreamRequest {
                    headers: upstream_headers,
                    body: upstream_body,
                });
                if !upstream.latency.is_zero() {
                    let shared = self.store.data().shared.clone();
                    shared.clock.0.fetch_add(
                        upstream.latency.as_nanos() as u64,
                        std::sync::atomic::Ordering::SeqCst,
                    );
                }
                let mut headers = HeaderMap::new();
                for (k, v) in &upstream.headers {
                    headers.add(k, v);
                }
                let (step, h, body) =
                    self.run_response(ctx, upstream.status, headers, &upstream.body, trace, false)?;
                match step {
                    Step::Go => {
                        ex.outcome = Outcome::Proxied;
                        ex.status = status_of(&h, upstream.status);
                        ex.headers = h;
                        ex.body = body;
                    }
                    Step::Local => {
                        // A local reply from the response path replaces the upstream answer.
                        let reply = self.stream()?.local_reply.take();
                        if let Some(reply) = reply {
                            ex.outcome = Outcome::Local;
                            ex.status = reply.status;
                            ex.headers = local_headers(&reply);
                            ex.body = reply.body.clone();
                            self.stream()?.response_code = Some(reply.status);
                            ex.local_reply = Some(reply);
                        }
                    }
                    Step::Paused => {
                        ex.outcome =
                            Outcome::Stalled("the response was paused and never resumed".into())
                    }
                    Step::Reset(why) => ex.outcome = Outcome::Reset(why.into()),
                    Step::TooLarge(status) => too_large(&mut ex, status),
                }
            }
            Step::Local => {
                let reply = self.stream()?.local_reply.take();
                if let Some(reply) = reply {
                    let headers = local_headers(&reply);
                    let chunks = vec![reply.body.clone()];
                    ex.local_reply = Some(reply.clone());
                    let (step, h, body) =
                        self.run_response(ctx, reply.status, headers, &chunks, trace, true)?;
                    match step {
                        Step::Go => {
                            ex.outcome = Outcome::Local;
                            ex.status = status_of(&h, reply.status);
                            ex.headers = h;
                            ex.body = body;
                        }
                        Step::Paused => {
                            ex.outcome = Outcome::Stalled(
                                "the plugin's own local reply was paused in a response callback"
                                    .into(),
                            )
                        }
                        Step::Reset(why) => ex.outcome = Outcome::Reset(why.into()),
                        Step::Local => ex.outcome = Outcome::Local,
                        Step::TooLarge(status) => too_large(&mut ex, status),
                    }
                }
            }
            Step::Paused => {
                ex.outcome = Outcome::Stalled(
                    "the request was paused (headers: StopAllIterationAndWatermark, or body at \
                     end of stream) and never resumed; Envoy would hold it until a timeout"
                        .into(),
                )
            }
            Step::Reset(why) => ex.outcome = Outcome::Reset(why.into()),
            Step::TooLarge(status) => too_large(&mut ex, status),
        }
        Ok(ex)
    }

    fn finish_stream(
        &mut self,
        ctx: u32,
        trace: &mut Vec<(&'static str, Action)>,
        ex: &mut Exchange,
    ) -> Result<(), Error> {
        {
            let s = self.stream()?;
            s.request_headers_live = false;
            s.request_body_live = false;
            s.response_headers_live = false;
            s.response_body_live = false;
            s.log_phase = true;
            ex.ignored_local_replies = s.ignored_local_replies;
        }
        if let Some(f) = self.cb.on_log.clone() {
            self.call("proxy_on_log", f, ctx as i32, ctx)?;
            trace.push(("proxy_on_log", Action::Continue));
        }
        self.stream()?.log_phase = false;
        if let Some(f) = self.cb.on_done.clone() {
            let done = self.call("proxy_on_done", f, ctx as i32, ctx)?;
            ex.done_deferred = done == 0;
            trace.push(("proxy_on_done", Action::Continue));
        }
        if let Some(f) = self.cb.on_delete.clone() {
            self.call("proxy_on_delete", f, ctx as i32, ctx)?;
            trace.push(("proxy_on_delete", Action::Continue));
        }
        Ok(())
    }
}

/// Envoy's own answer when a paused body outgrew [`BUFFER_LIMIT`] (its response
/// callbacks are not played).
fn too_large(ex: &mut Exchange, status: u16) {
    ex.outcome = Outcome::TooLarge(status);
    ex.status = status;
    ex.body = b"Payload Too Large".to_vec();
}

fn status_of(headers: &HeaderMap, fallback: u16) -> u16 {
    headers
        .get(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(fallback)
}

/// The headers Envoy puts on a local reply: `:status`, the plugin's headers, then
/// `content-length` and (for a non-empty body without one) `content-type: text/plain`.
fn local_headers(reply: &LocalReply) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.add(":status", reply.status.to_string());
    for (k, v) in reply.headers.iter() {
        h.add(k, v);
    }
    if !reply.body.is_empty() {
        h.replace("content-length", reply.body.len().to_string());
        if !h.contains("content-type") {
            h.add("content-type", "text/plain");
        }
    }
    h
}

fn split_addr(addr: &str) -> (String, u16) {
    if let Some((host, port)) = addr.rsplit_once(':') {
        if let Ok(port) = port.parse::<u16>() {
            if !host.contains(':') || host.starts_with('[') {
                return (addr.to_owned(), port);
            }
        }
    }
    // A bare address: give it a client port like a real connection has.
    let host = if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    };
    (format!("{host}:4567"), 4567)
}

impl Vm {
    pub(crate) fn start(
        shared: Arc<Shared>,
        compiled: &Compiled,
        opts: &VmOptions,
    ) -> Result<Vm, Error> {
        let engine = crate::engine::shared_engine()?;
        let index = shared
            .next_vm
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst) as u32;
        let mailbox: Mailbox = Arc::new(Mutex::new(VecDeque::new()));
        lock(&shared.mailboxes).insert(index, mailbox.clone());
        let mut store = Store::new(engine, VmState::new(shared.clone(), index, opts));
        store.set_fuel(CALL_FUEL).ok();
        let instance = compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| Error::Instantiate(format!("{e:?}")))?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = match typed::<i32, i32>(&instance, &mut store, "proxy_on_memory_allocate")? {
            Some(f) => Some(f),
            None => typed::<i32, i32>(&instance, &mut store, "malloc")?,
        };
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;
        let cb = Callbacks {
            on_context_create: typed(&instance, &mut store, "proxy_on_context_create")?,
            on_vm_start: typed(&instance, &mut store, "proxy_on_vm_start")?,
            on_configure: typed(&instance, &mut store, "proxy_on_configure")?,
            on_tick: typed(&instance, &mut store, "proxy_on_tick")?,
            on_queue_ready: typed(&instance, &mut store, "proxy_on_queue_ready")?,
            on_request_headers: typed(&instance, &mut store, "proxy_on_request_headers")?,
            on_request_body: typed(&instance, &mut store, "proxy_on_request_body")?,
            on_response_headers: typed(&instance, &mut store, "proxy_on_response_headers")?,
            on_response_body: typed(&instance, &mut store, "proxy_on_response_body")?,
            on_log: typed(&instance, &mut store, "proxy_on_log")?,
            on_done: typed(&instance, &mut store, "proxy_on_done")?,
            on_delete: typed(&instance, &mut store, "proxy_on_delete")?,
        };
        let initialize = typed::<(), ()>(&instance, &mut store, "_initialize")?;
        let main = typed::<(i32, i32), i32>(&instance, &mut store, "main")?;
        let start = typed::<(), ()>(&instance, &mut store, "_start")?;
        let mut inner = VmInner {
            store,
            cb,
            next_context: ROOT_CONTEXT_ID + 1,
            failed: None,
            fuel_total: 0,
            fuel_trace: std::env::var_os("HEADCOUNT_FUEL_TRACE").is_some(),
            mailbox,
        };

        // Integration: `_initialize` (then `main` if exported), else `_start`.
        if let Some(f) = initialize {
            inner.call("_initialize", f, (), 0)?;
            if let Some(m) = main {
                inner.call("main", m, (0, 0), 0)?;
            }
        } else if let Some(f) = start {
            inner.call("_start", f, (), 0)?;
        }
        let root = ROOT_CONTEXT_ID;
        if let Some(f) = inner.cb.on_context_create.clone() {
            inner.call("proxy_on_context_create", f, (root as i32, 0), root)?;
        }
        if let Some(f) = inner.cb.on_vm_start.clone() {
            let n = opts.vm_config.len() as i32;
            if inner.call("proxy_on_vm_start", f, (root as i32, n), root)? == 0 {
                return Err(Error::VmStartRefused {
                    logs: inner.store.data().logs.clone(),
                });
            }
        }
        if let Some(f) = inner.cb.on_configure.clone() {
            let n = opts.plugin_config.len() as i32;
            inner.state().in_configure = true;
            let ok = inner.call("proxy_on_configure", f, (root as i32, n), root);
            inner.state().in_configure = false;
            if ok? == 0 {
                return Err(Error::ConfigureRefused {
                    logs: inner.store.data().logs.clone(),
                });
            }
        }
        inner.deliver_mail()?;
        Ok(Vm {
            inner: Arc::new(Mutex::new(inner)),
            index,
            stubbed: Arc::new(compiled.stubbed.clone()),
        })
    }

    pub(crate) fn weak(&self) -> std::sync::Weak<Mutex<VmInner>> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn tick_inner(inner: &Mutex<VmInner>) -> Result<bool, Error> {
        let mut inner = lock(inner);
        let ticked = inner.tick()?;
        inner.deliver_mail()?;
        Ok(ticked)
    }

    pub(crate) fn deliver_inner(inner: &Mutex<VmInner>) -> Result<usize, Error> {
        lock(inner).deliver_mail()
    }

    /// Starts building a request to send through this VM.
    pub fn request(&self, method: &str, path: &str) -> RequestBuilder<'_> {
        RequestBuilder::new(self, method, path)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> RequestBuilder<'_> {
        self.request("GET", path)
    }

    /// `POST path`.
    pub fn post(&self, path: &str) -> RequestBuilder<'_> {
        self.request("POST", path)
    }

    /// Runs one full HTTP stream: context create, request headers/body, the upstream answer
    /// (unless the plugin answered locally), response headers/body, log, done, delete.
    pub fn exchange(&self, req: Request, upstream: UpstreamResponse) -> Result<Exchange, Error> {
        let mut inner = lock(&self.inner);
        let ex = inner.exchange(req, upstream);
        let mail = inner.deliver_mail();
        let ex = ex?;
        mail?;
        Ok(ex)
    }

    /// Fires `proxy_on_tick` once (as Envoy's timer would), if the plugin set a tick period.
    /// Returns whether a tick was delivered.
    pub fn tick(&self) -> Result<bool, Error> {
        Self::tick_inner(&self.inner)
    }

    /// Delivers pending `proxy_on_queue_ready` notifications; returns how many.
    pub fn deliver_queue_ready(&self) -> Result<usize, Error> {
        Self::deliver_inner(&self.inner)
    }

    /// The tick period the plugin asked for.
    pub fn tick_period(&self) -> Option<Duration> {
        let ms = lock(&self.inner).store.data().tick_period_ms;
        (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
    }

    /// Everything the plugin logged (and wrote to stdout/stderr) so far.
    pub fn logs(&self) -> Vec<LogEntry> {
        lock(&self.inner).store.data().logs.clone()
    }

    /// The log as text, one line per entry.
    pub fn logs_text(&self) -> String {
        self.logs()
            .iter()
            .map(|e| format!("{e}\n"))
            .collect::<String>()
    }

    /// Drains the log.
    pub fn take_logs(&self) -> Vec<LogEntry> {
        std::mem::take(&mut lock(&self.inner).store.data_mut().logs)
    }

    /// Whether some entry at `level` or above contains `needle`.
    pub fn logged(&self, level: LogLevel, needle: &str) -> bool {
        self.logs()
            .iter()
            .any(|e| e.level >= level && e.message.contains(needle))
    }

    /// Size of the plugin's linear memory in bytes.
    pub fn memory_bytes(&self) -> usize {
        let inner = lock(&self.inner);
        inner
            .store
            .data()
            .memory
            .map(|m| m.data_size(&inner.store))
            .unwrap_or(0)
    }

    /// Fuel (≈ wasm instructions) consumed by this VM so far.
    pub fn fuel_consumed(&self) -> u64 {
        lock(&self.inner).fuel_total
    }

    /// Whether a callback trapped (the VM is then unusable).
    pub fn failure(&self) -> Option<String> {
        lock(&self.inner).failed.clone()
    }

    /// Position of this VM among the host's VMs (0 for the first).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Imports of the module that the harness answers with `Unimplemented`.
    pub fn stubbed_imports(&self) -> &[String] {
        &self.stubbed
    }
}
