//! The plugin's own routes under `route_prefix`, answered here and never proxied,
//! as the Envoy filter's `handle_admin` / `admin_data`: the dashboard page, the
//! data routes `/stats`, `/history`, `/events?after=N`, `/metrics` (bearer
//! `admin_token` or a live admin-role session; `/metrics` also `metrics_token`),
//! `POST /sessions/{id}/revoke` (same authorization as `/stats`), and 404/405 for
//! the rest. Every answer carries `Cache-Control: no-store`.

use crate::bearer;
use crate::flush;
use crate::object::now_ms;
use crate::proxy::{header, json_response};
use crate::setup::{self, Setup};
use headcount_core::events;
use headcount_core::gateway::{self, Access, AdminRoute};
use headcount_core::identity::Identity;
use headcount_core::ledger::Hash;
use headcount_core::{prometheus, stats};
use std::rc::Rc;
use worker::{
    console_error, console_log, console_warn, Context, Env, Headers, Request, Response, Result,
};

pub async fn handle(
    route: AdminRoute,
    req: &Request,
    env: &Env,
    ctx: &Context,
    setup: &Rc<Setup>,
    cookie: Option<Hash>,
    bearer_admin: Option<Identity>,
) -> Result<Response> {
    match route {
        AdminRoute::Dashboard => {
            let headers = Headers::new();
            headers.set("content-type", "text/html; charset=utf-8")?;
            headers.set("cache-control", "no-store")?;
            Ok(Response::ok(gateway::dashboard_html(&setup.cfg))?.with_headers(headers))
        }
        AdminRoute::MethodNotAllowed => {
            json_response(405, gateway::error_body("method not allowed"))
        }
        AdminRoute::NotFound => json_response(404, gateway::error_body("no such headcount route")),
        data => {
            let response = data_route(data, req, env, setup, cookie, bearer_admin).await;
            // Touches that came back unknown are retried on the next flush.
            if let Some(flusher) = flush::kick(env, setup) {
                ctx.wait_until(flusher);
            }
            response
        }
    }
}

/// Who may read `route`: the token decides at once; otherwise the request's
/// session cookie (or verified JWT's session key), after this isolate's own
/// logins were written (so a fresh admin session is known); failing that, the
/// user a verified JWT names, as a session that is not stored (`bearer_admin`).
/// Returns whether it flushed.
async fn authorize(
    route: AdminRoute,
    req: &Request,
    env: &Env,
    setup: &Setup,
    cookie: Option<Hash>,
    bearer_admin: Option<Identity>,
    now: u64,
) -> std::result::Result<(Access, bool), String> {
    let cfg = &setup.cfg;
    let authorization = header(req.headers(), "authorization");
    let token = authorization.as_deref().and_then(gateway::bearer);
    let access = gateway::authorize(cfg, route, token, None, now);
    if access == Access::Allowed {
        return Ok((access, false));
    }
    let transient = bearer_admin.and_then(|who| bearer::transient(cfg, who, now));
    let Some(hash) = cookie else {
        return Ok((
            gateway::authorize(cfg, route, token, transient.as_ref(), now),
            false,
        ));
    };
    if let Err(e) = flush::flush_now(env, setup).await {
        console_warn!("headcount: flush before {route:?} failed: {e}");
    }
    let session = flush::resolve(env, setup, hash, now).await?.or(transient);
    Ok((
        gateway::authorize(cfg, route, token, session.as_ref(), now),
        true,
    ))
}

async fn data_route(
    route: AdminRoute,
    req: &Request,
    env: &Env,
    setup: &Setup,
    cookie: Option<Hash>,
    bearer_admin: Option<Identity>,
) -> Result<Response> {
    let now = now_ms();
    // What this isolate had done before this request (HEADCOUNT_DEBUG=1).
    let before = setup::counters();
    let (access, flushed) = match authorize(route, req, env, setup, cookie, bearer_admin, now).await
    {
        Ok(a) => a,
        Err(e) => {
            console_error!("headcount: session lookup failed: {e}");
            return unavailable(route);
        }
    };
    match access {
        Access::Unauthenticated => {
            return json_response(
                401,
                gateway::error_body("authentication required: admin session or bearer token"),
            )
        }
        Access::Forbidden => return json_response(403, gateway::error_body("not allowed")),
        Access::Allowed => {}
    }
    // This isolate's own activity first, so it shows.
    if !flushed {
        if let Err(e) = flush::flush_now(env, setup).await {
            console_warn!("headcount: flush before {route:?} failed: {e}");
        }
    }
    let cfg = &setup.cfg;
    let answer = match route {
        AdminRoute::Stats => match flush::gather(env, setup, now).await {
            Ok(g) => {
                let body = stats::report(g.sessions, g.traffic.figures(now), now, cfg).to_json();
                let mut resp = json_response(200, body)?;
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
                Ok(resp)
            }
            Err(e) => Err(e),
        },
        AdminRoute::History => match flush::feed(env).await {
            Ok(feed) => json_response(200, to_json(&feed.history.view(now))).map(Ok)?,
            Err(e) => Err(e),
        },
        AdminRoute::Events => match flush::feed(env).await {
            Ok(feed) => {
                let url = req.url()?;
                let path = match url.query() {
                    Some(q) => format!("{}?{q}", url.path()),
                    None => url.path().to_string(),
                };
                let view = feed.events.view(events::after_param(path.as_bytes()));
                json_response(200, to_json(&view)).map(Ok)?
            }
            Err(e) => Err(e),
        },
        AdminRoute::Metrics => {
            let (gathered, feed) = futures::join!(flush::gather(env, setup, now), flush::feed(env));
            match (gathered, feed) {
                (Ok(g), Ok(feed)) => {
                    let counts = stats::counts(&g.sessions, now, cfg);
                    let text = prometheus::render(&counts, &feed.events);
                    let headers = Headers::new();
                    headers.set("content-type", prometheus::CONTENT_TYPE)?;
                    headers.set("cache-control", "no-store")?;
                    Ok(Response::ok(text)?.with_headers(headers))
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        AdminRoute::Revoke(id) => match flush::revoke(env, setup, Hash(id)).await {
            Ok(Some(session)) => {
                console_log!(
                    "headcount: revoked {} ({})",
                    session.username,
                    session.uuid()
                );
                json_response(
                    200,
                    to_json(&serde_json::json!({"revoked": true, "session_id": session.uuid()})),
                )
                .map(Ok)?
            }
            Ok(None) => json_response(404, gateway::error_body("no such live session")).map(Ok)?,
            Err(e) => Err(e),
        },
        _ => json_response(404, gateway::error_body("no such headcount route")).map(Ok)?,
    };
    match answer {
        Ok(resp) => Ok(resp),
        Err(e) => {
            console_error!("headcount: {route:?} failed: {e}");
            unavailable(route)
        }
    }
}

fn unavailable(route: AdminRoute) -> Result<Response> {
    let message = if route == AdminRoute::Stats {
        "stats unavailable"
    } else {
        "headcount data unavailable"
    };
    json_response(503, gateway::error_body(message))
}

fn to_json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}
