//! One HTTP stream. Reads what it needs from headers and (only for logins) bodies,
//! and turns the upstream's answer into a session transition.

use crate::activity::Requester;
use crate::admin::{self, AdminRequest};
use crate::fleet_admin::{Gather, Step};
use crate::host;
use crate::vm::Vm;
use headcount_core::answer::Answer;
use headcount_core::bearer::{self, Bearer, Start};
use headcount_core::events::Kind;
use headcount_core::fleet::login_body_waits;
use headcount_core::flow::{self, Accepted, Carried, Change, LoginAttempt, Upstream};
use headcount_core::gateway::{self, AdminRoute, Route};
use headcount_core::identity::{self, BodyCopy, CookieChange, Identity};
use headcount_core::ids::TokenKey;
use headcount_core::ledger::wire::Op;
use headcount_core::typed::{self, Typed};
use headcount_core::whoami::lookups::Candidate;
use headcount_core::whoami::Credential;
use headcount_core::{CookieHash, Session};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::cell::Cell;
use std::rc::Rc;

pub struct Stream {
    vm: Rc<Vm>,
    route: Route,
    start_us: u64,
    response_us: Option<u64>,
    /// The request's session key: a verified token's, else the hash of its
    /// session cookie (the cookie itself is never kept).
    cookie: Option<CookieHash>,
    /// The hash of the session cookie the request sent, token or not: a login
    /// that keeps its session starts under it.
    sent_cookie: Option<CookieHash>,
    /// Bots and crawlers: proxied, counted as anonymous traffic, never as people.
    ignored: bool,
    /// Login only: who the client said they are, and where from.
    login: Option<PendingLogin>,
    /// This request ended its session (logout).
    ended: bool,
    /// Admin routes only: who a verified JWT names, for authorization when the
    /// token's session is not in the table (admin routes never start one).
    bearer_admin: Option<Identity>,
    /// `cookie` is a verified bearer token's session key.
    bearer: bool,
    /// Fleet mode: this request was counted already (before its logout or
    /// rotation was queued, so it counts for the session it had).
    recorded: bool,
    /// Fleet mode: this request is counted by its session op (`Op::Bearer`).
    counted: Cell<bool>,
    /// Fleet mode, a data route: the collectors' answers it waits for.
    gather: Option<Box<Gather>>,
    /// This stream's context id (fleet mode resumes it from the root context).
    context: u32,
    /// Fleet mode: a session op was queued; the response waits until it lands.
    hold: Cell<bool>,
    /// Fleet mode: an accepted login's response body waits, chunk by chunk,
    /// until the login is recorded and its op has landed
    /// (`fleet::login_body_waits`).
    held_login: bool,
}

/// An accepted login, before its response body: the cookie it set or kept, and
/// whether its body carries an opaque token that keys the session instead.
struct Accept {
    cookie: Option<CookieHash>,
    token: bool,
    from_headers: Identity,
}

/// A login on its way: the attempt (the core's), and the bodies as they pass.
struct PendingLogin {
    attempt: LoginAttempt,
    content_type: Vec<u8>,
    /// The request's query string: a typed field there too is ambiguous.
    query: Option<Vec<u8>>,
    /// The request body as it passes, for the username the client typed.
    request_body: BodyCopy,
    /// Set once the upstream accepted the login: the new cookie and header identity,
    /// waiting for the response body.
    accepted: Option<Accept>,
    /// With `whoami`: the session cookie as the app set or kept it, and the
    /// request's `:authority`, for the call.
    whoami: Option<(Option<Credential>, Vec<u8>)>,
    /// The accepted login's response body as it passes.
    response_body: BodyCopy,
}

impl Stream {
    pub fn new(vm: Rc<Vm>, context: u32) -> Self {
        Stream {
            vm,
            route: Route::App,
            start_us: 0,
            response_us: None,
            cookie: None,
            sent_cookie: None,
            ignored: false,
            login: None,
            ended: false,
            bearer_admin: None,
            bearer: false,
            recorded: false,
            counted: Cell::new(false),
            gather: None,
            context,
            hold: Cell::new(false),
            held_login: false,
        }
    }

    /// The client's address: the configured forwarding header (trusted hops only)
    /// or the peer.
    fn client_ip(&self, headers: &host::RequestHeaders) -> String {
        let cfg = &self.vm.cfg;
        let forwarded = cfg.client_ip_header.as_deref().and_then(|h| headers.get(h));
        let peer = host::property(&["source", "address"]);
        identity::client_ip(cfg, forwarded, peer.as_deref())
    }

    /// Makes sure a verified token's session is in the table, starting it (a
    /// "login") on the token's first request. False when it cannot be followed:
    /// the session was revoked, or the table is unavailable.
    fn bearer_session(
        &self,
        key: CookieHash,
        token: TokenKey,
        who: Identity,
        headers: &host::RequestHeaders,
        now: u64,
    ) -> bool {
        if let Some(f) = &self.vm.fleet {
            // The ledger starts the token's session unless it is live or revoked.
            let cfg = &self.vm.cfg;
            let ip = self.client_ip(headers);
            let ua = identity::clean_user_agent(headers.user_agent().unwrap_or_default());
            let hasher = &self.vm.hasher;
            let Some(session) = bearer::start_session(cfg, hasher, key, who, ip, ua, now) else {
                return false;
            };
            // Its request counts with it (a touch might land after a cap evicted it).
            if !f.push(Op::Bearer {
                session,
                requests: 1,
            }) {
                return false;
            }
            self.counted.set(true);
            self.vm.tokens.borrow_mut().confirm(&token, now);
            return true;
        }
        let (table, cfg) = (self.vm.table(), &self.vm.cfg);
        let existing = match table.resolve(&key, now) {
            Ok(s) => s,
            Err(e) => {
                host::warn(&format!("bearer session not followed: {e}"));
                return false;
            }
        };
        // Only a session that is not live needs the revoked list read.
        let live = existing.as_ref().is_some_and(|s| !s.is_expired(now, cfg));
        let revoked = !live && table.is_revoked(&key, now).unwrap_or(true);
        match bearer::start(existing.as_ref(), revoked, now, cfg) {
            Start::Live => {}
            Start::Revoked => return false,
            start => {
                if let (Start::Restart, Some(old)) = (start, existing) {
                    self.end_expired(&old, now);
                }
                let ip = self.client_ip(headers);
                let ua = identity::clean_user_agent(headers.user_agent().unwrap_or_default());
                let hasher = &self.vm.hasher;
                let Some(session) = bearer::start_session(cfg, hasher, key, who, ip, ua, now)
                else {
                    return false;
                };
                if !self.record_login(session, now) {
                    return false;
                }
            }
        }
        self.vm.tokens.borrow_mut().confirm(&token, now);
        true
    }

    /// Ends a session that is over but not yet swept (a token's, about to start
    /// again): as the sweep would, an expiry.
    fn end_expired(&self, old: &Session, now: u64) {
        match self.vm.table().remove_by_id(&old.id, &self.vm.cfg) {
            Ok(Some(s)) => {
                self.vm.forget(&s, &s.cookie);
                host::add_counter(self.vm.metrics.expiries, 1);
                self.vm.events(Kind::Expiry, std::slice::from_ref(&s), now);
            }
            Ok(None) => {}
            Err(e) => host::warn(&format!("expired bearer session not ended: {e}")),
        }
    }

    /// Stores a new session and reports it (metrics, event, log line). In fleet
    /// mode the login is queued for the collectors, which keep the event.
    fn record_login(&self, session: Session, now: u64) -> bool {
        if let Some(f) = &self.vm.fleet {
            let line = format!(
                "login {} as {} ({})",
                session.name(),
                session.role,
                session.uuid()
            );
            if !f.push(Op::Login { session }) {
                return false;
            }
            self.hold.set(true);
            host::add_counter(self.vm.metrics.logins, 1);
            host::info(&line);
            return true;
        }
        match self.vm.table().insert(session.clone(), &self.vm.cfg) {
            Ok(evicted) => {
                if !evicted.is_empty() {
                    // Requests this VM buffered for them were authenticated when made.
                    for s in &evicted {
                        self.vm.forget(s, &s.cookie);
                    }
                    host::add_counter(self.vm.metrics.evictions, evicted.len() as u64);
                    self.vm.events(Kind::Eviction, &evicted, now);
                }
                host::add_counter(self.vm.metrics.logins, 1);
                self.vm
                    .events(Kind::Login, std::slice::from_ref(&session), now);
                host::info(&format!(
                    "login {} as {} ({})",
                    session.name(),
                    session.role,
                    session.uuid()
                ));
                true
            }
            Err(e) => {
                host::error(&format!("login not recorded: {e}"));
                false
            }
        }
    }

    /// Fleet mode: counts this request for the session it had, then queues the
    /// logout or rotation its answer means.
    fn apply_fleet(&mut self, f: &crate::fleet::Fleet, change: Change, now: u64) {
        let Some(old) = self.cookie else { return };
        let op = match change {
            Change::Logout => Op::Logout { hash: old, at: now },
            Change::Rotate(to) => Op::Rotate {
                from: old,
                via: Vec::new(),
                to,
                at: now,
            },
            _ => return,
        };
        f.record(Some(old), self.start_us / 1000, self.response_us);
        self.recorded = true;
        match op {
            Op::Logout { .. } => {
                self.ended = true;
                host::add_counter(self.vm.metrics.logouts, 1);
            }
            Op::Rotate { to, .. } => self.cookie = Some(to),
            _ => {}
        }
        if f.push(op) {
            self.hold.set(true);
        }
    }

    /// The end of a response phase: `Pause` if this stream queued a session
    /// op in fleet mode and holds the response until it lands (the root
    /// context resumes it, `fleet::Fleet::release`), else `Continue`.
    fn go_on(&self) -> Action {
        let held = self.hold.replace(false)
            && self
                .vm
                .fleet
                .as_ref()
                .is_some_and(|f| f.hold(self.context, host::now_ms()));
        if held {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// Applies what the upstream's answer means for the session.
    fn apply(&mut self, change: Change, now: u64) {
        let vm = self.vm.clone();
        if let Some(f) = &vm.fleet {
            self.apply_fleet(f, change, now);
            return;
        }
        let table = self.vm.table();
        match change {
            Change::Login(_) | Change::TokenLogin(_) | Change::None => {}
            Change::Logout => {
                let Some(old) = self.cookie else { return };
                match table.end(&old, now, &self.vm.cfg) {
                    Ok(Some(s)) => {
                        self.vm.forget(&s, &old);
                        self.vm.tokens.borrow_mut().forget_session(&s.cookie);
                        self.ended = true;
                        host::add_counter(self.vm.metrics.logouts, 1);
                        self.vm.events(Kind::Logout, std::slice::from_ref(&s), now);
                        host::info(&format!("logout {} ({})", s.name(), s.uuid()));
                    }
                    Ok(None) => {}
                    Err(e) => host::warn(&format!("logout not recorded: {e}")),
                }
            }
            Change::Rotate(to) => {
                let Some(old) = self.cookie else { return };
                match table.rotate(&old, &to, now, &self.vm.cfg) {
                    Ok(Some(_)) => {
                        // This request's activity, and any still buffered, belong to the new value.
                        self.vm.rekey(&old, &to);
                        self.cookie = Some(to);
                    }
                    Ok(None) => {}
                    Err(e) => host::warn(&format!("cookie rotation not followed: {e}")),
                }
            }
        }
    }

    /// Records a login once identity is known (after the response body, if needed).
    fn finish_login(&mut self, body: Option<&[u8]>, now: u64) {
        let Some(PendingLogin {
            attempt,
            accepted: Some(accept),
            whoami: mut call,
            ..
        }) = self.login.take()
        else {
            return;
        };
        let Some(cookie) = self.login_key(&accept, &attempt, body, &mut call) else {
            host::warn("token login without a token in its answer; not counted");
            return;
        };
        let Some(random) = host::random16() else {
            host::error("no randomness for a session id; login not recorded");
            return;
        };
        let cfg = &self.vm.cfg;
        let accepted = attempt.finish(cfg, cookie, accept.from_headers, body, now, random);
        // A login over an existing session replaces it, also when the app kept
        // the session's cookie through the login (in fleet mode the ledger's
        // login does that: a logout of the kept value would outlive it).
        match (&self.vm.fleet, self.cookie) {
            (None, Some(_)) => self.apply(Change::Logout, now),
            (Some(f), Some(old)) if old != cookie => {
                host::add_counter(self.vm.metrics.logouts, 1);
                f.push(Op::Logout { hash: old, at: now });
            }
            _ => {}
        }
        if self.record_login(accepted.session.clone(), now) {
            // The login request itself is the new session's first activity.
            self.cookie = Some(cookie);
            self.ended = false;
            self.after_login(accepted, cookie, call, now);
        }
    }

    /// The key of an accepted login's session: the opaque token its body
    /// carries (a token route; whoami is then asked with the token), else the
    /// cookie it set or kept.
    fn login_key(
        &self,
        accept: &Accept,
        attempt: &LoginAttempt,
        body: Option<&[u8]>,
        call: &mut Option<(Option<Credential>, Vec<u8>)>,
    ) -> Option<CookieHash> {
        let cfg = &self.vm.cfg;
        let token = accept
            .token
            .then(|| flow::token_in(cfg, attempt.route, body))
            .flatten();
        match token {
            Some(t) => {
                if let Some((credential, _)) = call.as_mut() {
                    *credential = Some(Credential::token(&cfg.token_scheme, &t));
                }
                Some(self.vm.hasher.hash(&t))
            }
            None => accept.cookie,
        }
    }

    /// A recorded login: queues its whoami lookup (the root context sends it),
    /// and reports a login that names nobody or whose typed name was ambiguous.
    fn after_login(
        &self,
        accepted: Accepted,
        hash: CookieHash,
        call: Option<(Option<Credential>, Vec<u8>)>,
        now: u64,
    ) {
        let Accepted {
            session,
            unnamed,
            whoami,
        } = accepted;
        if let Some(fallback) = whoami {
            let (credential, authority) = call.unwrap_or_default();
            let lookup = crate::whoami::Lookup {
                kind: crate::whoami::Asking::Login {
                    id: session.id,
                    fallback,
                },
                hash,
                credential,
                authority,
                touch: None,
            };
            if let Err(lookup) = self.vm.whoami.borrow_mut().queue(lookup) {
                host::warn("whoami queue full; the login's other sources name it");
                crate::whoami::settle_unasked(&self.vm, lookup, now);
            }
        }
        if let Some(why) = unnamed {
            host::warn(&flow::unnamed_line(why, &session));
            host::add_counter(self.vm.metrics.unnamed, 1);
            match &self.vm.fleet {
                Some(f) => {
                    f.push(Op::event(Kind::Unnamed(why), &session, now));
                }
                None => self
                    .vm
                    .events(Kind::Unnamed(why), std::slice::from_ref(&session), now),
            }
        }
    }
}

/// The request hook's steps are `#[inline(always)]`: as calls of their own they
/// cost an anonymous request about 190 more Wasm instructions (3,910 -> 4,097 in
/// `HEADCOUNT_FUEL_TRACE=1 cargo test -p host-tests --test all traffic::`).
impl Stream {
    /// The request's session key (a verified token's before the cookie's hash,
    /// `flow::request_key`) and the token's verdict; marks ignored agents. Only
    /// a request that could name someone has its agent checked.
    #[inline(always)]
    fn identify(
        &mut self,
        headers: &host::RequestHeaders,
        now: u64,
    ) -> (Option<CookieHash>, Option<Bearer>) {
        let cfg = &self.vm.cfg;
        // The first cookie header is read alone; all of them (HTTP/2 may send one
        // per cookie) only when it lacks the session cookie or a JWT may be in one.
        let mut cookie_header = headers.cookie();
        let name = &cfg.session_cookie;
        let mut session_value = cookie_header
            .as_deref()
            .and_then(|c| identity::request_cookie(c, name));
        let jwt_cookie = cfg.jwt.as_ref().is_some_and(|j| j.cookie.is_some());
        if cookie_header.is_some() && (jwt_cookie || session_value.is_none()) {
            cookie_header = headers.all_cookies();
            session_value = cookie_header
                .as_deref()
                .and_then(|c| identity::request_cookie(c, name));
        }
        let jwt_header = cfg
            .jwt
            .as_ref()
            .and_then(|jwt| jwt.header.as_deref())
            .and_then(|h| headers.get(h));
        // The Authorization header is looked up only when some route hands out tokens.
        let authorization = cfg
            .opaque_tokens()
            .then(|| headers.get("authorization"))
            .flatten();
        let could_identify = cookie_header.is_some()
            || jwt_header.is_some()
            || authorization.is_some()
            || matches!(self.route, Route::Login(_));
        // Read only for a request that could name someone.
        let user_agent = || headers.user_agent().unwrap_or_default();
        self.ignored = could_identify
            && self
                .vm
                .agents
                .matches(&cfg.ignore_user_agents, user_agent());
        let vm = &self.vm;
        // Cookie values and tokens are keyed through the same per-VM cache.
        let hash = |v: &[u8]| vm.cookie_cache.borrow_mut().hash(&vm.hasher, v);
        let cookie = session_value.map(hash);
        let opaque_raw = flow::opaque_token(cfg, authorization);
        let opaque = opaque_raw.map(hash);
        let bearer = match &cfg.jwt {
            Some(jwt) if !self.ignored => {
                jwt.token(jwt_header, cookie_header.as_deref()).map(|t| {
                    // The cache holds HMACs of any value: for a token, its key.
                    let key = TokenKey(hash(t).0);
                    vm.tokens
                        .borrow_mut()
                        .check_hashed(jwt, &vm.hasher, t, key, now)
                })
            }
            _ => None,
        };
        if let Some(why) = flow::refusal(bearer.as_ref()) {
            host::debug(&format!("bearer token refused: {why}"));
        }
        self.sent_cookie = cookie.filter(|_| !self.ignored);
        let key = flow::request_key(bearer.as_ref(), opaque, cookie);
        let begin = cfg.whoami.as_ref().is_some_and(|w| w.begin_unknown);
        if begin && self.route == Route::App && !self.ignored {
            // The credential the key is (not a JWT's), kept for a lookup.
            let credential = match (opaque.zip(opaque_raw), cookie) {
                (Some((h, t)), _) => Some((h, Credential::token(&cfg.token_scheme, t))),
                (None, Some(h)) => {
                    session_value.map(|v| (h, Credential::cookie(&cfg.session_cookie, v)))
                }
                (None, None) => None,
            };
            if let Some((h, credential)) = credential.filter(|(h, _)| Some(*h) == key) {
                self.vm.keep_candidate(h, now, || {
                    Some(Candidate {
                        credential,
                        ip: self.client_ip(headers),
                        user_agent: identity::clean_user_agent(user_agent()),
                        authority: headers.get(":authority").unwrap_or_default().to_vec(),
                    })
                });
            }
        }
        (key, bearer)
    }

    /// With `enforce_revocation`: answers 401 for a revoked session's key before
    /// the app (neither traffic nor activity). Whether it did.
    #[inline(always)]
    fn refuse_revoked(&mut self, key: Option<CookieHash>, now: u64) -> bool {
        let applies = self.vm.cfg.enforce_revocation && !matches!(self.route, Route::Admin(_));
        let revoked = |h: &CookieHash| match &self.vm.fleet {
            Some(f) => f.is_revoked(h, now),
            None => self.vm.table().is_revoked(h, now).unwrap_or(false),
        };
        if !(applies && key.is_some_and(|h| revoked(&h))) {
            return false;
        }
        self.route = Route::Admin(AdminRoute::NotFound);
        let answer = Answer::session_revoked();
        host::respond(&answer);
        true
    }

    /// A verified token: on an admin route it only authorizes; elsewhere its
    /// session is started if need be (`bearer_session`), or the request is
    /// anonymous when it cannot be followed.
    #[inline(always)]
    fn follow_bearer(&mut self, bearer: Option<Bearer>, headers: &host::RequestHeaders, now: u64) {
        let verified = matches!(bearer, Some(Bearer::Known(_) | Bearer::Unconfirmed { .. }));
        if let Some(Bearer::Unconfirmed {
            key,
            token,
            identity: who,
        }) = bearer
        {
            if matches!(self.route, Route::Admin(_)) {
                self.bearer_admin = Some(who);
            } else if !self.bearer_session(key, token, who, headers, now) {
                self.cookie = None;
            }
        }
        self.bearer = verified && self.cookie.is_some();
    }

    /// A login request: who the client is and where from, until the answer comes.
    fn begin_login(&mut self, headers: &host::RequestHeaders, path: &[u8]) {
        let user_agent = headers.user_agent().unwrap_or_default();
        self.login = Some(PendingLogin {
            attempt: LoginAttempt {
                route: self.route,
                ip: self.client_ip(headers),
                user_agent: identity::clean_user_agent(user_agent),
                typed: Typed::default(),
            },
            content_type: headers.get("content-type").unwrap_or_default().to_vec(),
            query: path
                .iter()
                .position(|b| *b == b'?')
                .and_then(|i| path.get(i + 1..))
                .map(<[u8]>::to_vec),
            request_body: BodyCopy::default(),
            accepted: None,
            whoami: self.vm.cfg.whoami.as_ref().map(|_| {
                // The cookie the request carried (a login that keeps it); a
                // value the answer sets replaces it.
                let name = &self.vm.cfg.session_cookie;
                let sent = headers
                    .cookie()
                    .and_then(|c| identity::request_cookie(&c, name).map(<[u8]>::to_vec))
                    .map(|v| Credential::cookie(name, &v));
                let authority = headers.get(":authority").unwrap_or_default().to_vec();
                (sent, authority)
            }),
            response_body: BodyCopy::default(),
        });
    }
}

impl Context for Stream {
    /// Runs when a collector answers one of this stream's calls (fleet mode's
    /// data routes): answers the request once every call has.
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let vm = self.vm.clone();
        let (Some(g), Some(fleet)) = (self.gather.take(), vm.fleet.as_ref()) else {
            return;
        };
        match g.answered(fleet, &vm.cfg, token_id, body_size, host::now_ms()) {
            Step::Wait(g) => self.gather = Some(g),
            Step::Answer(answer) => host::respond(&answer),
        }
    }
}

impl HttpContext for Stream {
    /// Runs when the request headers arrive. Strips client-sent identity headers,
    /// identifies the request (token or cookie), refuses a revoked session, and
    /// answers `route_prefix` routes locally (returns `Pause` then); everything
    /// else continues to the upstream untouched.
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.start_us = host::now_us();
        let now = self.start_us / 1000;
        // Headers are read as needed: an anonymous app request reads `:path` and
        // finds no `cookie`, and nothing else.
        let headers = host::RequestHeaders::new();
        for name in self.vm.cfg.trusted_identity_headers() {
            host::remove_header(MapType::HttpRequestHeaders, name);
        }
        let path = headers.path().unwrap_or_default();
        let method = || headers.method().unwrap_or_default();
        self.route = gateway::route_lazy(&self.vm.cfg, method, path);
        let (key, bearer) = self.identify(&headers, now);
        if self.refuse_revoked(key, now) {
            return Action::Pause;
        }
        // Bots are proxied but never followed, even with a session cookie.
        self.cookie = key.filter(|_| !self.ignored);
        self.follow_bearer(bearer, &headers, now);
        match self.route {
            Route::Admin(route) => {
                let site = gateway::site(
                    headers.get(gateway::MARK_HEADER).is_some(),
                    headers.get("sec-fetch-site"),
                    headers.get("origin"),
                    headers.get(":authority"),
                );
                let request = AdminRequest {
                    route,
                    path,
                    site,
                    authorization: headers.get("authorization"),
                    cookie: self.cookie,
                    bearer_admin: self.bearer_admin.take(),
                    now,
                };
                match admin::decide(&self.vm, request) {
                    Step::Answer(answer) => host::respond(&answer),
                    Step::Wait(g) => self.gather = Some(g),
                }
                Action::Pause
            }
            Route::Login(_) if !self.ignored => {
                self.begin_login(&headers, path);
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    /// Runs per request body chunk. Only a login's body is read: copied as it
    /// passes (at most `MAX_BODY`), for the username the client typed. Always
    /// `Continue`: holding a body back would let Envoy answer 413 for a large one.
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(attempt) = self.login.as_mut() else {
            return Action::Continue;
        };
        attempt.request_body.push(body_size, || {
            host::body(BufferType::HttpRequestBody, body_size)
        });
        if end_of_stream {
            if let Some(body) = std::mem::take(&mut attempt.request_body).finish() {
                let (ct, query) = (&attempt.content_type, attempt.query.as_deref());
                attempt.attempt.typed = typed::read(&self.vm.cfg, ct, &body, query);
            }
        }
        Action::Continue
    }

    /// Runs when the upstream's response headers arrive. Detects login success,
    /// logout, cookie rotation and clearing from the status and `Set-Cookie`.
    /// An accepted login is recorded here unless its body keys or may name it
    /// (`flow::login_reads_body`); then at the end of its body. In fleet mode
    /// the response waits (`Pause`) until its session op has landed: here, or
    /// as a body that waits whole (`on_http_response_body`).
    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let now_us = host::now_us();
        self.response_us = Some(now_us.saturating_sub(self.start_us));
        let now = now_us / 1000;
        let relevant = self.cookie.is_some() || self.login.is_some() || self.route == Route::Logout;
        if !relevant || self.ignored {
            return Action::Continue;
        }
        // On an app route only a Set-Cookie can change the session; most responses
        // have none, and asking for one is cheaper than copying the whole map.
        if self.route == Route::App && !host::has_header(MapType::HttpResponseHeaders, "set-cookie")
        {
            return Action::Continue;
        }
        let cfg = &self.vm.cfg;
        let headers = host::Headers::read(MapType::HttpResponseHeaders);
        let status = headers
            .get(":status")
            .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
            .unwrap_or(0);
        let location = match self.route {
            Route::Login(_) => headers.get("location"),
            _ => None,
        };
        let upstream = Upstream {
            status,
            location,
            set_cookies: headers.all("set-cookie"),
        };
        // Through the cache: the client's next requests send this value.
        let vm = &self.vm;
        let hash = |v: &[u8]| vm.cookie_cache.borrow_mut().hash(&vm.hasher, v);
        let carried = Carried {
            key: self.cookie,
            cookie: self.sent_cookie,
        };
        match flow::response_change(cfg, self.route, upstream, carried, now, hash) {
            change @ (Change::Login(_) | Change::TokenLogin(_)) => {
                let (cookie, token) = match change {
                    Change::Login(c) => (Some(c), false),
                    Change::TokenLogin(c) => (c, true),
                    _ => (None, false),
                };
                let from_headers = identity::from_response_headers(cfg, |name| {
                    headers.get(name).map(<[u8]>::to_vec)
                });
                let content_type = headers.get("content-type");
                let reads_body = flow::login_reads_body(cfg, self.route, token, content_type);
                let set = headers
                    .all("set-cookie")
                    .rev()
                    .find_map(|v| identity::set_cookie(v, &cfg.session_cookie, now));
                if let Some(login) = self.login.as_mut() {
                    login.accepted = Some(Accept {
                        cookie,
                        token,
                        from_headers,
                    });
                    if let Some((credential, _)) = login.whoami.as_mut() {
                        if let Some(CookieChange::Set(value)) = set {
                            *credential = Some(Credential::cookie(&cfg.session_cookie, &value));
                        }
                    }
                }
                if end_of_stream || !reads_body {
                    // Recorded now, before the client has the headers (in
                    // fleet mode they wait until the login has landed).
                    self.finish_login(None, now);
                } else {
                    // Read-your-writes: the body, where the login is recorded,
                    // waits whole until the login has landed.
                    self.held_login = self.vm.fleet.as_ref().is_some_and(|f| f.can_hold());
                }
            }
            Change::None => self.login = None,
            other => {
                self.login = None;
                self.apply(other, now);
            }
        }
        self.go_on()
    }

    /// Runs per response body chunk. Only an accepted login's body is read: copied
    /// as it passes (at most `MAX_BODY`) for identity in its JSON; the login is
    /// recorded before the last chunk goes on to the client. In fleet mode the
    /// body waits whole (`Pause`, kept by Envoy) until the login has landed
    /// (`fleet::login_body_waits`): a client holding the whole body is done,
    /// whatever the stream's end does.
    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let held = self.held_login;
        let Some(attempt) = self.login.as_mut().filter(|a| a.accepted.is_some()) else {
            return Action::Continue;
        };
        if login_body_waits(held, body_size, end_of_stream) {
            // Kept by Envoy: the next call sees it again with what follows,
            // and the whole of it is copied once, at the end.
            return Action::Pause;
        }
        attempt.response_body.push(body_size, || {
            host::body(BufferType::HttpResponseBody, body_size)
        });
        if end_of_stream || attempt.response_body.is_lost() {
            let body = std::mem::take(&mut attempt.response_body).finish();
            self.finish_login(body.as_deref(), host::now_ms());
        }
        self.go_on()
    }

    /// Runs once the stream is done (also after resets). Counts the request in the
    /// traffic figures and buffers the session's activity for the next flush.
    fn on_log(&mut self) {
        if let Some(attempt) = self.login.as_ref() {
            if attempt.accepted.is_some() {
                self.finish_login(None, host::now_ms());
            }
        }
        if matches!(self.route, Route::Admin(_)) {
            return;
        }
        if let Some(f) = &self.vm.fleet {
            // The ledger tells a live session's requests from anonymous ones.
            let start_ms = self.start_us / 1000;
            if self.counted.get() {
                f.record_counted(start_ms, self.response_us);
            } else if !self.recorded {
                f.record(self.cookie, start_ms, self.response_us);
            }
            return;
        }
        let who = match (self.ended, self.cookie) {
            (true, _) => Requester::EndedSession,
            (false, Some(h)) if self.bearer => Requester::Bearer(h),
            (false, Some(h)) => Requester::Cookie(h),
            (false, None) => Requester::Anonymous,
        };
        self.vm.record(who, self.start_us / 1000, self.response_us);
    }
}
