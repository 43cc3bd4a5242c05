//! One request through the Worker, in the order `plugin/filter/src/http.rs` handles
//! an Envoy stream: classify the route, strip client-sent identity headers, hash
//! the session cookie, answer `route_prefix` routes locally, proxy the rest to
//! `ORIGIN`, and turn the origin's answer into a session transition. Every
//! decision is a `headcount-core` function; this file only moves bytes.

use crate::admin;
use crate::bearer;
use crate::flush::{self, with_buffer};
use crate::object::now_ms;
use crate::revoked;
use crate::setup::{self, Setup};
use futures::StreamExt;
use headcount_core::answer::Answer;
use headcount_core::bearer::Bearer;
use headcount_core::gateway::{self, LoginFacts, Route, Transition};
use headcount_core::identity::{self, BodyCopy, CookieChange, Identity, MAX_BODY};
use headcount_core::ledger::{Hash, Op};
use headcount_core::{CookieHash, CookieHasher};
use std::rc::Rc;
use worker::{
    console_debug, console_error, console_warn, js_sys, wasm_bindgen::JsValue, web_sys, Context,
    Env, Fetch, Headers, Request, Response, Result,
};

/// Who a login request says it is and where it comes from, kept until the
/// origin's answer shows whether it succeeded.
pub struct LoginAttempt {
    /// Which of `Config::login_routes` it is.
    route: Route,
    ip: String,
    user_agent: String,
    claimed: Identity,
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

/// Sends one of the core's answers (every one `Cache-Control: no-store`).
pub fn respond(answer: Answer) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", answer.content_type)?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::from_bytes(answer.body)?
        .with_status(answer.status)
        .with_headers(headers))
}

pub async fn handle(mut req: Request, env: Env, ctx: Context) -> Result<Response> {
    let start_ms = now_ms();
    let setup = match Setup::load(&env) {
        Ok(s) => s,
        Err(message) => {
            // Never proxy blindly: every request says what is wrong until it is fixed.
            console_error!("headcount: {message}");
            return respond(Answer::error(500, &message));
        }
    };
    let cfg = &setup.cfg;
    let url = req.url()?;
    let method = req.inner().method();
    let route = gateway::route(cfg, method.as_bytes(), url.path().as_bytes());
    let user_agent = header(req.headers(), "user-agent").unwrap_or_default();
    // Bots and crawlers: proxied, counted as anonymous traffic, never as people
    // (but a revoked cookie is refused whoever carries it).
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
    // A bearer token (`jwt`), never looked at for bots: verified before it names anyone.
    let token = match &cfg.jwt {
        Some(jwt) if !ignored => {
            let value = jwt.header.as_deref().and_then(|h| header(req.headers(), h));
            jwt.token(value.as_deref(), cookie_header.as_deref())
                .map(<[u8]>::to_vec)
        }
        _ => None,
    };
    let wants_login = matches!(route, Route::Login(_)) && !ignored;
    let hasher = if cookie_value.is_some() || wants_login || token.is_some() {
        match setup::hasher(&env, &setup).await {
            Ok(h) => Some(h),
            Err(e) => {
                console_error!("headcount: {e}; request proxied uncounted");
                None
            }
        }
    } else {
        None
    };
    let verdict = match (&cfg.jwt, token.as_deref(), hasher.as_ref()) {
        (Some(jwt), Some(t), Some(h)) => Some(bearer::check(jwt, h, t, start_ms)),
        _ => None,
    };
    // Hash of the request's session cookie; the cookie itself is never kept. A
    // verified token's session key takes its place (JWT before cookie).
    let cookie = match &verdict {
        Some(Bearer::Known(key) | Bearer::Unconfirmed { key, .. }) => Some(Hash(*key)),
        other => {
            if let Some(Bearer::Refused(Some(why))) = other {
                console_debug!("headcount: bearer token refused: {why}");
            }
            cookie_value
                .as_deref()
                .zip(hasher.as_ref())
                .map(|(v, h)| Hash(h.hash(v)))
        }
    };
    if let (true, Some(hash)) = (enforce, cookie) {
        // The isolate's own copy of the revoked values: no Durable Object request
        // here, except once per isolate to load it (see revoked.rs).
        flush::load_revoked(&env, &setup).await;
        if revoked::with(|r| r.is_revoked(&hash, start_ms)) {
            // Refused before the app: neither traffic nor activity.
            return respond(Answer::session_revoked());
        }
    }
    let mut cookie = cookie.filter(|_| !ignored);
    let client_ip = || {
        identity::client_ip(
            cfg,
            cfg.client_ip_header
                .as_deref()
                .and_then(|h| header(req.headers(), h))
                .as_deref(),
            header(req.headers(), "cf-connecting-ip").as_deref(),
        )
    };

    if let Route::Admin(admin_route) = route {
        // Admin routes never start a session; a verified admin token authorizes them.
        let bearer_admin = match verdict {
            Some(Bearer::Unconfirmed { identity: who, .. }) => Some(who),
            _ => None,
        };
        return admin::handle(admin_route, &req, &env, &ctx, &setup, cookie, bearer_admin).await;
    }
    if let (
        Some(Bearer::Unconfirmed {
            key,
            token,
            identity: who,
        }),
        Some(h),
    ) = (verdict, hasher.as_ref())
    {
        let ua = identity::clean_user_agent(&user_agent);
        if !start_bearer(&setup, h, key, token, who, client_ip(), ua, start_ms) {
            cookie = None;
        }
    }

    let mut login = match (&hasher, wants_login) {
        (Some(_), true) => Some(LoginAttempt {
            route,
            ip: client_ip(),
            user_agent: identity::clean_user_agent(&user_agent),
            claimed: Identity::default(),
        }),
        _ => None,
    };
    let origin_req = origin_request(&mut req, &setup, &url, &method, login.as_mut()).await?;
    let fetched = Fetch::Request(origin_req).send().await;
    let response_us = now_ms().saturating_sub(start_ms) * 1000;
    setup::count(|c| {
        c.proxied += 1;
        c.with_cookie += u64::from(cookie.is_some());
    });
    let mut resp = match fetched {
        Ok(r) => r,
        Err(e) => {
            console_error!("headcount: origin unreachable: {e}");
            with_buffer(|b| b.record(cookie, start_ms, None));
            keep_flushing(&ctx, &env, &setup);
            return respond(Answer::error(502, "origin unreachable"));
        }
    };

    let hasher = match hasher {
        Some(h) if cookie.is_some() || login.is_some() || route == Route::Logout => h,
        _ => {
            with_buffer(|b| b.record(cookie, start_ms, Some(response_us)));
            keep_flushing(&ctx, &env, &setup);
            return Ok(resp);
        }
    };
    let now = now_ms();
    let change = resp
        .headers()
        .get_all("set-cookie")
        .unwrap_or_default()
        .iter()
        .rev()
        .find_map(|v| identity::set_cookie(&bytes_of(v), &cfg.session_cookie, now))
        .map(|c| match c {
            CookieChange::Set(v) => CookieChange::Set(hasher.hash(&v).to_vec()),
            CookieChange::Cleared => CookieChange::Cleared,
        });
    let old = cookie.map(|h| h.0.to_vec());
    // A login by an ignored agent, or without a hasher, is just a request.
    let effective = match (route, &login) {
        (Route::Login(_), None) => Route::App,
        _ => route,
    };
    let location = header(resp.headers(), "location");
    let success = gateway::succeeded(cfg, effective, resp.status_code(), location.as_deref());
    match gateway::transition(effective, success, old.as_deref(), change) {
        Transition::Login { cookie: new } => {
            if let (Ok(new), Some(attempt)) = (CookieHash::try_from(new.as_slice()), login.take()) {
                let from_headers =
                    identity::from_response_headers(cfg, |name| header(resp.headers(), name));
                let body = login_body(&mut resp);
                let task = finish_login(
                    env.clone(),
                    setup.clone(),
                    attempt,
                    body,
                    Hash(new),
                    from_headers,
                    cookie,
                    start_ms,
                    response_us,
                );
                ctx.wait_until(task);
                return Ok(resp);
            }
            with_buffer(|b| b.record(cookie, start_ms, Some(response_us)));
        }
        Transition::Logout => with_buffer(|b| {
            b.record(cookie, start_ms, Some(response_us));
            if let Some(old) = cookie {
                // A bearer session ended here: its token starts a new one if used again.
                bearer::forget_session(&old.0);
                if !b.push(Op::Logout { hash: old, at: now }) {
                    flush::log_lost("a logout");
                }
            }
        }),
        Transition::Rotate { to } => with_buffer(|b| {
            b.record(cookie, start_ms, Some(response_us));
            if let (Some(from), Ok(to)) = (cookie, CookieHash::try_from(to.as_slice())) {
                let rotate = Op::Rotate {
                    from,
                    via: Vec::new(),
                    to: Hash(to),
                    at: now,
                };
                if !b.push(rotate) {
                    flush::log_lost("a cookie rotation");
                }
            }
        }),
        Transition::None => with_buffer(|b| b.record(cookie, start_ms, Some(response_us))),
    }
    keep_flushing(&ctx, &env, &setup);
    Ok(resp)
}

/// Makes sure a verified token's session exists (as the filter's `bearer_session`):
/// buffers an `Op::Bearer` (the session's shard starts it unless it is live or
/// revoked) and takes the token as confirmed for `CONFIRM_MS`. The first sighting
/// of a key in this isolate is flushed at once, like a login; a re-check rides
/// the next timer flush. False when it cannot be followed (names nobody, buffer
/// full): the request is anonymous.
#[allow(clippy::too_many_arguments)]
fn start_bearer(
    setup: &Setup,
    hasher: &CookieHasher,
    key: CookieHash,
    token: CookieHash,
    who: Identity,
    ip: String,
    user_agent: String,
    now: u64,
) -> bool {
    let Some(session) = bearer::session(&setup.cfg, hasher, key, who, ip, user_agent, now) else {
        return false;
    };
    let first = flush::known(&Hash(key)).is_none();
    let pushed = with_buffer(|b| {
        let pushed = b.push(Op::Bearer { session });
        b.urgent |= pushed && first;
        pushed
    });
    if !pushed {
        flush::log_lost("a bearer session");
        return false;
    }
    bearer::confirm(&token, now);
    true
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
    url: &worker::Url,
    method: &str,
    login: Option<&mut LoginAttempt>,
) -> Result<Request> {
    let cfg = &setup.cfg;
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
                attempt.claimed = identity::from_request_body(cfg, &content_type, &body);
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

/// Records a login once identity is known (after the response body), like the
/// filter's `finish_login`. Runs after the response went out (`wait_until`).
#[allow(clippy::too_many_arguments)]
async fn finish_login(
    env: Env,
    setup: Rc<Setup>,
    attempt: LoginAttempt,
    body: Option<Response>,
    new: Hash,
    from_headers: Identity,
    old: Option<Hash>,
    start_ms: u64,
    response_us: u64,
) {
    let cfg = &setup.cfg;
    let body = match body {
        Some(r) => read_limited(r).await,
        None => None,
    };
    let from_body = body
        .map(|b| identity::from_response_body(cfg, &b))
        .unwrap_or_default();
    // The sources this login route trusts, in its order of preference.
    let order = match attempt.route {
        Route::Login(i) => cfg.login_routes.get(i).map(|r| r.identity.as_slice()),
        _ => None,
    };
    let who = identity::combine(
        order.unwrap_or_default(),
        from_headers,
        from_body,
        attempt.claimed,
    );

    let now = now_ms();
    let mut random = [0u8; 16];
    let session = match getrandom::getrandom(&mut random) {
        Ok(()) => gateway::new_session(
            cfg,
            who,
            LoginFacts {
                cookie: new.0,
                ip: attempt.ip,
                user_agent: attempt.user_agent,
                now,
                random,
            },
        ),
        Err(e) => {
            console_error!("headcount: no randomness for a session id ({e}); login not recorded");
            None
        }
    };
    with_buffer(|b| match session {
        Some(session) => {
            // A login over an existing session replaces it.
            if let Some(old) = old.filter(|o| *o != new) {
                bearer::forget_session(&old.0);
                if !b.push(Op::Logout { hash: old, at: now }) {
                    flush::log_lost("a logout");
                }
            }
            if b.push(Op::Login { session }) {
                // The login request itself is the new session's first activity.
                b.record(Some(new), start_ms, Some(response_us));
            } else {
                flush::log_lost("a login");
                b.record(old, start_ms, Some(response_us));
            }
        }
        None => {
            console_warn!("headcount: login succeeded but names no user; not counted");
            b.record(old, start_ms, Some(response_us));
        }
    });
    if let Some(task) = flush::kick(&env, &setup) {
        task.await;
    }
}
