//! The plugin's own routes under `route_prefix`, answered here and never proxied,
//! as the Envoy filter's `handle_admin` / `admin_data`: the dashboard page, the
//! data routes `/stats`, `/history`, `/events?after=N`, `/metrics` (bearer
//! `admin_token` or a live admin-role session; `/metrics` also `metrics_token`),
//! `POST /sessions/{id}/revoke` (same authorization as `/stats`), and 404/405 for
//! the rest. Every answer carries `Cache-Control: no-store`.

use crate::bearer;
use crate::flush;
use crate::object::now_ms;
use crate::proxy::{header, respond};
use crate::setup::{self, Setup};
use headcount_core::answer::Answer;
use headcount_core::events::Actor;
use headcount_core::gateway::{self, Access, AdminRoute};
use headcount_core::identity::Identity;
use headcount_core::ids::CookieHash;
use headcount_core::session::Session;
use headcount_core::stats;
use std::rc::Rc;
use worker::{console_error, console_log, console_warn, Context, Env, Request, Response, Result};

pub async fn handle(
    route: AdminRoute,
    req: &Request,
    env: &Env,
    ctx: &Context,
    setup: &Rc<Setup>,
    cookie: Option<CookieHash>,
    bearer_admin: Option<Identity>,
) -> Result<Response> {
    if let Some(answer) = Answer::without_data(&setup.cfg, route) {
        return respond(answer);
    }
    let response = data_route(route, req, env, setup, cookie, bearer_admin).await;
    // Touches that came back unknown are retried on the next flush.
    if let Some(flusher) = flush::kick(env, setup) {
        ctx.wait_until(flusher);
    }
    response
}

/// Who may read `route`: the token decides at once; otherwise the request's
/// session cookie (or verified JWT's session key), after this isolate's own
/// logins were written (so a fresh admin session is known); failing that, the
/// user a verified JWT names, as a session that is not stored (`bearer_admin`).
/// Returns whether it flushed, and who the request acts as (`gateway::actor`).
async fn authorize(
    route: AdminRoute,
    req: &Request,
    env: &Env,
    setup: &Setup,
    cookie: Option<CookieHash>,
    bearer_admin: Option<Identity>,
    now: u64,
) -> std::result::Result<(Access, bool, Option<Actor>), String> {
    let cfg = &setup.cfg;
    let authorization = header(req.headers(), "authorization");
    let token = authorization.as_deref().and_then(gateway::bearer);
    let url = req.url().ok();
    let authority = url.as_ref().and_then(|u| {
        let host = u.host_str()?;
        Some(match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        })
    });
    let site = gateway::site(
        header(req.headers(), gateway::MARK_HEADER).is_some(),
        header(req.headers(), "sec-fetch-site").as_deref(),
        header(req.headers(), "origin").as_deref(),
        authority.as_deref().map(str::as_bytes),
    );
    let decide = |session: Option<&Session>| {
        let access = gateway::authorize(cfg, route, token, session, site, now);
        (access, gateway::actor(cfg, token, session, now))
    };
    let (access, by) = decide(None);
    if access == Access::Allowed {
        return Ok((access, false, by));
    }
    let transient = bearer_admin.and_then(|who| bearer::transient(cfg, who, now));
    let Some(hash) = cookie else {
        let (access, by) = decide(transient.as_ref());
        return Ok((access, false, by));
    };
    if let Err(e) = flush::flush_now(env, setup).await {
        console_warn!("headcount: flush before {route:?} failed: {e}");
    }
    let session = flush::resolve(env, setup, hash, now).await?.or(transient);
    let (access, by) = decide(session.as_ref());
    Ok((access, true, by))
}

async fn data_route(
    route: AdminRoute,
    req: &Request,
    env: &Env,
    setup: &Setup,
    cookie: Option<CookieHash>,
    bearer_admin: Option<Identity>,
) -> Result<Response> {
    let now = now_ms();
    // What this isolate had done before this request (HEADCOUNT_DEBUG=1).
    let before = setup::counters();
    let (access, flushed, by) =
        match authorize(route, req, env, setup, cookie, bearer_admin, now).await {
            Ok(a) => a,
            Err(e) => {
                console_error!("headcount: session lookup failed: {e}");
                return respond(Answer::unavailable());
            }
        };
    if let Some(answer) = Answer::denied(access) {
        return respond(answer);
    }
    // This isolate's own activity first, so it shows.
    if !flushed {
        if let Err(e) = flush::flush_now(env, setup).await {
            console_warn!("headcount: flush before {route:?} failed: {e}");
        }
    }
    let cfg = &setup.cfg;
    let url = req.url()?;
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let answer = match route {
        AdminRoute::Stats => match flush::gather(env, setup, now).await {
            Ok(g) => {
                let limit = stats::listed_limit(path.as_bytes());
                let figures = g.traffic.figures(now);
                let report = stats::report_listing(g.sessions, figures, now, cfg, limit);
                let body = report.to_json();
                let mut resp = respond(Answer::json(200, body))?;
                if setup.debug {
                    let debug = format!(
                        "do_requests={}; proxied={}; with_cookie={}; flushes={}; \
                         stored_sessions={}; stored_cookies={}; stored_revoked={}; shards={}",
                        before.do_requests,
                        before.proxied,
                        before.with_cookie,
                        before.flushes,
                        g.stored_sessions,
                        g.stored_cookies,
                        g.stored_revoked,
                        setup.shards
                    );
                    resp.headers_mut().set("x-headcount-debug", &debug)?;
                }
                return Ok(resp);
            }
            Err(e) => Err(e),
        },
        AdminRoute::History => flush::feed(env, setup)
            .await
            .map(|feed| Answer::history(&feed.history, now)),
        AdminRoute::Events => flush::feed(env, setup)
            .await
            .map(|feed| Answer::events(&feed.events, path.as_bytes())),
        AdminRoute::Metrics => {
            let (gathered, feed) =
                futures::join!(flush::gather(env, setup, now), flush::feed(env, setup));
            gathered.and_then(|g| {
                let counts = stats::counts(&g.sessions, now, cfg);
                feed.map(|feed| Answer::metrics(&setup.app, &counts, &feed.events))
            })
        }
        AdminRoute::Revoke(id) => flush::revoke(env, setup, id, by).await.map(|session| {
            if let Some(s) = &session {
                console_log!("headcount: revoked {} ({})", s.username, s.uuid());
            }
            Answer::revoked(session.as_ref())
        }),
        other => Ok(Answer::without_data(cfg, other).unwrap_or_else(Answer::unavailable)),
    };
    respond(answer.unwrap_or_else(|e| {
        console_error!("headcount: {route:?} failed: {e}");
        Answer::unavailable()
    }))
}
