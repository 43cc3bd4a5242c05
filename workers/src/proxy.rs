//! One request through the Worker, in the order `plugin/filter/src/http.rs` handles
//! an Envoy stream: read the route and credentials, identify the session, refuse
//! a revoked one, answer `route_prefix` routes locally, proxy the rest to
//! `ORIGIN`, and turn the origin's answer into a session change. Every decision
//! is a `headcount-core` function (`gateway`, `identity`, `flow`); this file only
//! moves bytes.

use crate::admin;
use crate::bearer;
use crate::flush::{self, with_buffer};
use crate::object::now_ms;
use crate::revoked;
use crate::setup::{self, Setup};
use futures::StreamExt;
use headcount_core::answer::Answer;
use headcount_core::bearer::Bearer;
use headcount_core::events::Kind;
use headcount_core::flow::{self, Accepted, Carried, Change, LoginAttempt, Upstream};
use headcount_core::gateway::{self, Route};
use headcount_core::identity::{self, BodyCopy, Identity, MAX_BODY};
use headcount_core::ids::CookieHash;
use headcount_core::ledger::buffer::Buffer;
use headcount_core::ledger::Op;
use headcount_core::typed::{self, Typed};
use headcount_core::whoami::lookups::Candidate;
use headcount_core::whoami::Credential;
use headcount_core::{Config, CookieHasher};
use std::rc::Rc;
use worker::{
    console_debug, console_error, console_warn, js_sys, wasm_bindgen::JsValue, web_sys, Context,
    Env, Fetch, Headers, Request, Response, Result,
};

/// What one request carries, read from its headers before any store is asked.
struct Incoming {
    start_ms: u64,
    url: worker::Url,
    method: String,
    route: Route,
    user_agent: Vec<u8>,
    /// Bots and crawlers: proxied, counted as anonymous traffic, never as people
    /// (but a revoked cookie is refused whoever carries it).
    ignored: bool,
    cookie_value: Option<Vec<u8>>,
    /// A bearer token (`jwt`), never looked at for bots.
    token: Option<Vec<u8>>,
    /// An opaque token (`Authorization: <token_scheme> ...`), not for bots.
    opaque: Option<Vec<u8>>,
}

/// Whose request it is: the session key (a verified token's, else the cookie's
/// hash; the cookie itself is never kept) and what the token said.
struct Identified {
    hasher: Option<Rc<CookieHasher>>,
    verdict: Option<Bearer>,
    key: Option<CookieHash>,
    /// The hash of the session cookie sent, token or not.
    cookie: Option<CookieHash>,
}

/// An accepted login waiting for its response body.
struct AcceptedLogin {
    attempt: LoginAttempt,
    /// The cookie the login set or kept (`None`: only a token may key it).
    cookie: Option<CookieHash>,
    /// The response body carries an opaque token that keys the session.
    token: bool,
    /// The session cookie as the app set or kept it (for whoami).
    credential: Option<Credential>,
    from_headers: Identity,
    /// Its body keys or may name it (`flow::login_reads_body`): recorded once
    /// read, after the response; else before the response goes out.
    reads_body: bool,
    body: Option<Response>,
}

/// A proxied request, for the traffic figures and the buffer.
struct Done {
    key: Option<CookieHash>,
    /// The hash of the session cookie the request sent (not a bot's).
    cookie: Option<CookieHash>,
    start_ms: u64,
    response_us: Option<u64>,
}

/// Header values reach Rust as JavaScript strings of bytes (one char per byte,
/// as `fetch` reads them); the core parses bytes, as in Envoy.
pub fn bytes_of(value: &str) -> Vec<u8> {
    value
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

pub fn header(headers: &Headers, name: &str) -> Option<Vec<u8>> {
    headers.get(name).ok().flatten().map(|v| bytes_of(&v))
}

/// Sends one of the core's answers with its headers (`Answer::headers`).
pub fn respond(answer: Answer) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", answer.content_type)?;
    for (name, value) in answer.headers() {
        headers.set(name, &value)?;
    }
    Ok(Response::from_bytes(answer.body)?
        .with_status(answer.status)
        .with_headers(headers))
}

/// One request: read it, identify it, refuse a revoked session, answer the
/// plugin's routes, follow a token's session, proxy, then settle the answer.
pub async fn handle(mut req: Request, env: Env, ctx: Context) -> Result<Response> {
    let setup = match Setup::load(&env) {
        Ok(s) => s,
        Err(message) => {
            // Never proxy blindly: every request says what is wrong until it is fixed.
            console_error!("headcount: {message}");
            return respond(Answer::error(500, &message));
        }
    };
    let incoming = read_request(&req, &setup)?;
    let who = identify(&env, &setup, &incoming).await;
    if is_revoked(&env, &setup, &incoming, who.key).await {
        // Refused before the app: neither traffic nor activity.
        return respond(Answer::session_revoked());
    }
    let mut key = who.key.filter(|_| !incoming.ignored);
    if let Route::Admin(route) = incoming.route {
        // Admin routes never start a session; a verified admin token authorizes them.
        let bearer_admin = match who.verdict {
            Some(Bearer::Unconfirmed { identity, .. }) => Some(identity),
            _ => None,
        };
        return admin::handle(route, &req, &env, &ctx, &setup, key, bearer_admin).await;
    }
    if !follow_bearer(&setup, &req, &incoming, &who) {
        key = None;
    }
    keep_candidate(&setup, &req, &incoming, &who, key);
    let wants_login = matches!(incoming.route, Route::Login(_)) && !incoming.ignored;
    let mut login =
        (wants_login && who.hasher.is_some()).then(|| begin_login(&setup.cfg, &req, &incoming));
    let origin_req = origin_request(&mut req, &setup, &incoming, login.as_mut()).await?;
    let fetched = Fetch::Request(origin_req).send().await;
    let mut done = Done {
        key,
        cookie: who.cookie.filter(|_| !incoming.ignored),
        start_ms: incoming.start_ms,
        response_us: None,
    };
    setup::count(|c| {
        c.proxied += 1;
        c.with_cookie += u64::from(key.is_some());
    });
    let mut resp = match fetched {
        Ok(r) => r,
        Err(e) => {
            console_error!("headcount: origin unreachable: {e}");
            with_buffer(|b| b.record(key, done.start_ms, None));
            keep_flushing(&ctx, &env, &setup);
            return respond(Answer::error(502, "origin unreachable"));
        }
    };
    done.response_us = Some(now_ms().saturating_sub(done.start_ms) * 1000);
    match who.hasher {
        Some(h) if key.is_some() || login.is_some() || incoming.route == Route::Logout => {
            let sent = incoming.cookie_value.as_deref();
            let accepted = settle(&setup, &mut resp, incoming.route, login, &h, &done, sent);
            if let Some(login) = accepted {
                if login.reads_body {
                    ctx.wait_until(finish_login(env.clone(), setup.clone(), login, done));
                } else {
                    let asked = login_at_headers(&env, &setup, login, done).await;
                    ctx.wait_until(name_by_whoami(env.clone(), setup.clone(), asked));
                }
                return Ok(resp);
            }
        }
        _ => with_buffer(|b| b.record(key, done.start_ms, done.response_us)),
    }
    keep_flushing(&ctx, &env, &setup);
    Ok(resp)
}

/// Route, user agent and credentials, from the headers alone.
fn read_request(req: &Request, setup: &Setup) -> Result<Incoming> {
    let cfg = &setup.cfg;
    let start_ms = now_ms();
    let url = req.url()?;
    let method = req.inner().method();
    let route = gateway::route(cfg, method.as_bytes(), url.path().as_bytes());
    let user_agent = header(req.headers(), "user-agent").unwrap_or_default();
    let ignored = identity::is_ignored_agent(cfg, &user_agent);
    let enforce = cfg.enforce_revocation && !matches!(route, Route::Admin(_));
    let cookie_header = if ignored && !enforce {
        None
    } else {
        header(req.headers(), "cookie")
    };
    let cookie_value = cookie_header
        .as_deref()
        .and_then(|c| identity::request_cookie(c, &cfg.session_cookie).map(<[u8]>::to_vec));
    let token = match &cfg.jwt {
        Some(jwt) if !ignored => {
            let value = jwt.header.as_deref().and_then(|h| header(req.headers(), h));
            jwt.token(value.as_deref(), cookie_header.as_deref())
                .map(<[u8]>::to_vec)
        }
        _ => None,
    };
    let authorization = header(req.headers(), "authorization");
    let opaque = flow::opaque_token(cfg, authorization.as_deref())
        .filter(|_| !ignored)
        .map(<[u8]>::to_vec);
    Ok(Incoming {
        opaque,
        start_ms,
        url,
        method,
        route,
        user_agent,
        ignored,
        cookie_value,
        token,
    })
}

/// The session key: a token verified (or recalled) first, else the cookie's hash.
async fn identify(env: &Env, setup: &Setup, incoming: &Incoming) -> Identified {
    let cfg = &setup.cfg;
    let wants_login = matches!(incoming.route, Route::Login(_)) && !incoming.ignored;
    let needed = incoming.cookie_value.is_some()
        || wants_login
        || incoming.token.is_some()
        || incoming.opaque.is_some();
    let hasher = match needed {
        true => setup::hasher(env, setup)
            .await
            .map_err(|e| console_error!("headcount: {e}; request proxied uncounted"))
            .ok(),
        false => None,
    };
    let verdict = match (&cfg.jwt, incoming.token.as_deref(), hasher.as_ref()) {
        (Some(jwt), Some(t), Some(h)) => Some(bearer::check(jwt, h, t, incoming.start_ms)),
        _ => None,
    };
    if let Some(why) = flow::refusal(verdict.as_ref()) {
        console_debug!("headcount: bearer token refused: {why}");
    }
    let cookie = incoming
        .cookie_value
        .as_deref()
        .zip(hasher.as_ref())
        .map(|(v, h)| h.hash(v));
    let opaque = incoming
        .opaque
        .as_deref()
        .zip(hasher.as_ref())
        .map(|(v, h)| h.hash(v));
    let key = flow::request_key(verdict.as_ref(), opaque, cookie);
    Identified {
        hasher,
        verdict,
        key,
        cookie,
    }
}

/// With `enforce_revocation`: whether the key is a revoked session's, from the
/// isolate's own copy of the list (loaded once per isolate; see revoked.rs).
async fn is_revoked(
    env: &Env,
    setup: &Setup,
    incoming: &Incoming,
    key: Option<CookieHash>,
) -> bool {
    let enforce = setup.cfg.enforce_revocation && !matches!(incoming.route, Route::Admin(_));
    let Some(key) = key.filter(|_| enforce) else {
        return false;
    };
    flush::load_revoked(env, setup).await;
    revoked::with(|r| r.is_revoked(&key, incoming.start_ms))
}

/// The client's address: the trusted forwarding header, or Cloudflare's.
fn client_ip(cfg: &Config, req: &Request) -> String {
    let forwarded = cfg
        .client_ip_header
        .as_deref()
        .and_then(|h| header(req.headers(), h));
    let peer = header(req.headers(), "cf-connecting-ip");
    identity::client_ip(cfg, forwarded.as_deref(), peer.as_deref())
}

fn begin_login(cfg: &Config, req: &Request, incoming: &Incoming) -> LoginAttempt {
    LoginAttempt {
        route: incoming.route,
        ip: client_ip(cfg, req),
        user_agent: identity::clean_user_agent(&incoming.user_agent),
        typed: Typed::default(),
    }
}

/// Makes sure a verified token's session exists (as the filter's `bearer_session`):
/// buffers an `Op::Bearer` (the session's shard starts it unless it is live or
/// revoked) and takes the token as confirmed for `CONFIRM_MS`. The first sighting
/// of a key in this isolate is flushed at once, like a login; a re-check rides
/// the next timer flush. False when it cannot be followed (names nobody, buffer
/// full): the request is anonymous. True when there is nothing to start.
fn follow_bearer(setup: &Setup, req: &Request, incoming: &Incoming, who: &Identified) -> bool {
    let (
        Some(Bearer::Unconfirmed {
            key,
            token,
            identity,
        }),
        Some(hasher),
    ) = (&who.verdict, who.hasher.as_deref())
    else {
        return true;
    };
    let cfg = &setup.cfg;
    let ip = client_ip(cfg, req);
    let ua = identity::clean_user_agent(&incoming.user_agent);
    let now = incoming.start_ms;
    let Some(session) = bearer::session(cfg, hasher, *key, identity.clone(), ip, ua, now) else {
        return false;
    };
    let first = flush::known(key).is_none();
    let pushed = with_buffer(|b| {
        let pushed = b.push(Op::Bearer {
            session,
            requests: 0,
        });
        b.urgent |= pushed && first;
        pushed
    });
    if !pushed {
        flush::log_lost("a bearer session");
        return false;
    }
    bearer::confirm(token, now);
    true
}

/// `whoami.begin_unknown`: keeps an app request's cookie or opaque token (the
/// one its key is, not a JWT's) until a flush shows whether its session is known.
fn keep_candidate(
    setup: &Setup,
    req: &Request,
    incoming: &Incoming,
    who: &Identified,
    key: Option<CookieHash>,
) {
    let cfg = &setup.cfg;
    let begin = cfg.whoami.as_ref().is_some_and(|w| w.begin_unknown);
    let jwt = matches!(
        who.verdict,
        Some(Bearer::Known(_) | Bearer::Unconfirmed { .. })
    );
    let Some(key) = key.filter(|_| begin && !jwt) else {
        return;
    };
    if incoming.route != Route::App || incoming.ignored {
        return;
    }
    let credential = match (&incoming.opaque, &incoming.cookie_value) {
        (Some(t), _) => Credential::token(&cfg.token_scheme, t),
        (None, Some(c)) if who.cookie == Some(key) => Credential::cookie(&cfg.session_cookie, c),
        _ => return,
    };
    crate::whoami::keep(key, incoming.start_ms, || {
        Some(Candidate {
            credential,
            ip: client_ip(cfg, req),
            user_agent: identity::clean_user_agent(&incoming.user_agent),
            authority: Vec::new(),
        })
    });
}

/// Turns the origin's answer into the session's change (the core's
/// `flow::response_change`) and buffers it with the request's activity. An
/// accepted login is returned, to be finished once its body is read.
fn settle(
    setup: &Setup,
    resp: &mut Response,
    route: Route,
    login: Option<LoginAttempt>,
    hasher: &CookieHasher,
    done: &Done,
    sent_cookie: Option<&[u8]>,
) -> Option<AcceptedLogin> {
    let cfg = &setup.cfg;
    let now = now_ms();
    // A login by an ignored agent, or without a hasher, is just a request.
    let route = match (route, &login) {
        (Route::Login(_), None) => Route::App,
        _ => route,
    };
    let set_cookies: Vec<Vec<u8>> = resp
        .headers()
        .get_all("set-cookie")
        .unwrap_or_default()
        .iter()
        .map(|v| bytes_of(v))
        .collect();
    let location = header(resp.headers(), "location");
    let upstream = Upstream {
        status: resp.status_code(),
        location: location.as_deref(),
        set_cookies: set_cookies.iter().map(Vec::as_slice),
    };
    let carried = Carried {
        key: done.key,
        cookie: done.cookie,
    };
    let change = flow::response_change(cfg, route, upstream, carried, now, |v| hasher.hash(v));
    let record = |b: &mut Buffer| b.record(done.key, done.start_ms, done.response_us);
    match change {
        Change::Login(_) | Change::TokenLogin(_) => {
            let (cookie, token) = match change {
                Change::Login(c) => (Some(c), false),
                Change::TokenLogin(c) => (c, true),
                _ => (None, false),
            };
            if let Some(attempt) = login {
                let name = &cfg.session_cookie;
                let value = set_cookies
                    .iter()
                    .rev()
                    .find_map(|v| match identity::set_cookie(v, name, now) {
                        Some(identity::CookieChange::Set(v)) => Some(v),
                        _ => None,
                    })
                    .or_else(|| sent_cookie.map(<[u8]>::to_vec));
                let content_type = header(resp.headers(), "content-type");
                let reads_body = flow::login_reads_body(cfg, route, token, content_type.as_deref());
                return Some(AcceptedLogin {
                    attempt,
                    cookie,
                    token,
                    credential: value.map(|v| Credential::cookie(name, &v)),
                    from_headers: identity::from_response_headers(cfg, |name| {
                        header(resp.headers(), name)
                    }),
                    reads_body,
                    body: if reads_body { login_body(resp) } else { None },
                });
            }
            with_buffer(record);
        }
        Change::Logout => with_buffer(|b| {
            record(b);
            if let Some(old) = done.key {
                push_logout(b, old, now);
            }
        }),
        Change::Rotate(to) => with_buffer(|b| {
            record(b);
            if let Some(from) = done.key {
                let rotate = Op::Rotate {
                    from,
                    via: Vec::new(),
                    to,
                    at: now,
                };
                if !b.push(rotate) {
                    flush::log_lost("a cookie rotation");
                }
            }
        }),
        Change::None => with_buffer(record),
    }
    None
}

fn keep_flushing(ctx: &Context, env: &Env, setup: &Rc<Setup>) {
    if let Some(flusher) = flush::kick(env, setup) {
        ctx.wait_until(flusher);
    }
}

/// The request to the origin: same method, path, query, headers (less `Host` and
/// the identity headers the config trusts from the origin) and body; redirects are
/// passed back to the client, not followed. A login's body (up to `MAX_BODY`, with
/// a declared length) is read for the username the client typed, then sent on.
async fn origin_request(
    req: &mut Request,
    setup: &Setup,
    incoming: &Incoming,
    login: Option<&mut LoginAttempt>,
) -> Result<Request> {
    let cfg = &setup.cfg;
    let (url, method) = (&incoming.url, incoming.method.as_str());
    let mut target = setup.origin.clone();
    target.set_path(url.path());
    target.set_query(url.query());
    let headers = Headers::new();
    for (name, value) in req.headers().entries() {
        let lower = name.to_ascii_lowercase();
        if lower == "host" || cfg.trusted_identity_headers().any(|h| h == lower) {
            continue;
        }
        headers.append(&name, &value)?;
    }
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    init.set_headers(&JsValue::from(headers.0.clone()));
    init.set_redirect(web_sys::RequestRedirect::Manual);
    if !matches!(method, "GET" | "HEAD") {
        let declared = header(req.headers(), "content-length")
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        match login {
            Some(attempt) if declared.is_some_and(|n| n <= MAX_BODY) => {
                let content_type = header(req.headers(), "content-type").unwrap_or_default();
                let body = req.bytes().await?;
                let query = incoming.url.query().map(str::as_bytes);
                attempt.typed = typed::read(cfg, &content_type, &body, query);
                init.set_body(&js_sys::Uint8Array::from(body.as_slice()).into());
            }
            _ => {
                if let Some(stream) = req.inner().body() {
                    init.set_body(&stream.into());
                }
            }
        }
    }
    let raw = web_sys::Request::new_with_str_and_init(target.as_str(), &init)?;
    Ok(Request::from(raw))
}

/// A copy of an accepted login's response body to read identity from, unless it
/// declares more than `MAX_BODY` (the client's copy streams on untouched).
fn login_body(resp: &mut Response) -> Option<Response> {
    let declared = header(resp.headers(), "content-length")
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return None;
    }
    resp.cloned().ok()
}

/// Reads at most `MAX_BODY` bytes through `BodyCopy`, as the filter does; a longer body
/// names nobody.
async fn read_limited(mut resp: Response) -> Option<Vec<u8>> {
    let mut stream = resp.stream().ok()?;
    let mut copy = BodyCopy::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.ok()?;
        copy.push(chunk.len(), || Some(chunk));
        if copy.is_lost() {
            return None;
        }
    }
    copy.finish()
}

/// Records a login whose response body keys or may name it, once the body is
/// read, like the filter's `finish_login`. Runs after the response went out
/// (`wait_until`).
async fn finish_login(env: Env, setup: Rc<Setup>, mut login: AcceptedLogin, done: Done) {
    let body = match login.body.take() {
        Some(r) => read_limited(r).await,
        None => None,
    };
    let recorded = record_login(&env, &setup, login, body, done).await;
    if let Some(task) = flush::kick(&env, &setup) {
        task.await;
    }
    name_by_whoami(env, setup, recorded).await;
}

/// Records a login that its response's headers say all about
/// (`flow::login_reads_body`), before the client has them: written through
/// to the ledger, so the client's next request, to any isolate, finds it.
/// Returns what is left to do after the response (asking whoami).
async fn login_at_headers(
    env: &Env,
    setup: &Rc<Setup>,
    login: AcceptedLogin,
    done: Done,
) -> Option<Asked> {
    let recorded = record_login(env, setup, login, None, done).await;
    if let Err(e) = flush::flush_now(env, setup).await {
        console_warn!("headcount: login not written before its answer ({e}); the timer writes it");
        if let Some(task) = flush::kick(env, setup) {
            task.await;
        }
    }
    recorded
}

/// A recorded login whose session the app is to be asked about (`whoami`).
struct Asked {
    id: headcount_core::ids::SessionId,
    key: CookieHash,
    fallback: Identity,
    credential: Option<Credential>,
}

/// Puts an accepted login into the buffer (with the logout of the session it
/// replaces); `body` is its response body, if read.
async fn record_login(
    env: &Env,
    setup: &Rc<Setup>,
    login: AcceptedLogin,
    body: Option<Vec<u8>>,
    done: Done,
) -> Option<Asked> {
    let cfg = &setup.cfg;
    let now = now_ms();
    let mut credential = login.credential;
    let token = login
        .token
        .then(|| flow::token_in(cfg, login.attempt.route, body.as_deref()))
        .flatten();
    // The hasher is needed (and fetched) only for a token login.
    let hasher = match &token {
        Some(_) => setup::hasher(env, setup).await.ok(),
        None => None,
    };
    let key = match (&token, hasher) {
        (Some(t), Some(h)) => {
            credential = Some(Credential::token(&cfg.token_scheme, t));
            Some(h.hash(t))
        }
        _ => login.cookie,
    };
    let Some(new) = key else {
        console_warn!("headcount: token login without a token in its answer; not counted");
        with_buffer(|b| b.record(done.key, done.start_ms, done.response_us));
        return None;
    };
    let mut random = [0u8; 16];
    let accepted = match getrandom::getrandom(&mut random) {
        Ok(()) => {
            let who = login.from_headers;
            let body = body.as_deref();
            Some(login.attempt.finish(cfg, new, who, body, now, random))
        }
        Err(e) => {
            console_error!("headcount: no randomness for a session id ({e}); login not recorded");
            None
        }
    };
    let old = done.key;
    let mut ask = None;
    with_buffer(|b| match accepted {
        Some(Accepted {
            session,
            unnamed,
            whoami,
        }) => {
            ask = whoami.map(|fallback| (session.id, fallback));
            // A login over an existing session replaces it. One the app kept
            // the cookie of through the login is replaced by the ledger's
            // `index` (a logout here would leave a tombstone for the value).
            if let Some(old) = old.filter(|o| *o != new) {
                push_logout(b, old, now);
            }
            let unnamed = unnamed.map(|why| {
                console_warn!("headcount: {}", flow::unnamed_line(why, &session));
                Op::event(Kind::Unnamed(why), &session, now)
            });
            if b.push(Op::Login { session }) {
                // The login request itself is the new session's first activity.
                b.record(Some(new), done.start_ms, done.response_us);
                if unnamed.is_some_and(|event| !b.push(event)) {
                    flush::log_lost("an unnamed-login event");
                }
            } else {
                flush::log_lost("a login");
                b.record(old, done.start_ms, done.response_us);
            }
        }
        None => b.record(old, done.start_ms, done.response_us),
    });
    ask.map(|(id, fallback)| Asked {
        id,
        key: new,
        fallback,
        credential,
    })
}

/// Asks the app who a recorded login's session is, and names it.
async fn name_by_whoami(env: Env, setup: Rc<Setup>, asked: Option<Asked>) {
    let Some(Asked {
        id,
        key,
        fallback,
        credential,
    }) = asked
    else {
        return;
    };
    let answer = match &credential {
        Some(c) => crate::whoami::ask(&setup, c, now_ms()).await,
        None => crate::whoami::Answer::default(),
    };
    let hasher = setup::hasher(&env, &setup).await.ok();
    with_buffer(|b| settle_whoami(b, &setup, (id, key), answer, fallback, hasher));
    if let Some(task) = flush::kick(&env, &setup) {
        task.await;
    }
}

/// Names the session asked about (`flow::settle`): an `Op::Identify`, or an
/// unnamed-login event; follows a cookie the answer rotated.
fn settle_whoami(
    b: &mut Buffer,
    setup: &Setup,
    (id, hash): (headcount_core::ids::SessionId, CookieHash),
    answer: crate::whoami::Answer,
    fallback: Identity,
    hasher: Option<Rc<CookieHasher>>,
) {
    let now = now_ms();
    if let (Some(value), Some(h)) = (answer.rotated, hasher) {
        let to = h.hash(&value);
        let rotate = Op::Rotate {
            from: hash,
            via: Vec::new(),
            to,
            at: now,
        };
        if to != hash && !b.push(rotate) {
            flush::log_lost("whoami's cookie rotation");
        }
    }
    let who = flow::settle(&setup.cfg, answer.who, fallback);
    if who.is_none() {
        console_warn!(
            "headcount: login names nobody (whoami and the other sources); followed unnamed"
        );
    }
    let op = Op::settled_login(id, who, &setup.cfg.default_role, now);
    if !b.push(op) {
        flush::log_lost("whoami's answer");
    }
}

/// A session ended here: its token (if a bearer session) starts a new one if used again.
fn push_logout(b: &mut Buffer, key: CookieHash, now: u64) {
    bearer::forget_session(&key);
    if !b.push(Op::Logout { hash: key, at: now }) {
        flush::log_lost("a logout");
    }
}
