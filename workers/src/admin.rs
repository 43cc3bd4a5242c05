//! The plugin's own routes under `route_prefix`, answered here and never proxied:
//! `GET {prefix}/stats` (bearer `admin_token` or a live admin-role session), 404
//! and 405 for the rest, as the Envoy filter's `handle_admin`.

use crate::flush;
use crate::object::now_ms;
use crate::protocol::Hash;
use crate::proxy::{header, json_response};
use crate::setup::{self, Setup};
use headcount_core::gateway::{self, Access, AdminRoute};
use headcount_core::stats;
use std::rc::Rc;
use worker::{console_error, console_warn, Context, Env, Headers, Request, Response, Result};

pub async fn handle(
    route: AdminRoute,
    req: &Request,
    env: &Env,
    ctx: &Context,
    setup: &Rc<Setup>,
    cookie: Option<Hash>,
) -> Result<Response> {
    match route {
        AdminRoute::Stats => {
            let response = stats_route(req, env, setup, cookie).await;
            // Touches that came back unknown are retried on the next flush.
            if let Some(flusher) = flush::kick(env, setup) {
                ctx.wait_until(flusher);
            }
            response
        }
        AdminRoute::Dashboard => {
            let headers = Headers::new();
            headers.set("content-type", "text/html; charset=utf-8")?;
            headers.set("cache-control", "no-store")?;
            Ok(Response::ok(gateway::dashboard_html(&setup.cfg))?.with_headers(headers))
        }
        AdminRoute::MethodNotAllowed => {
            json_response(405, gateway::error_body("method not allowed"))
        }
        // History, events and metrics are not served by the Worker host (yet).
        _ => json_response(404, gateway::error_body("no such headcount route")),
    }
}

async fn stats_route(
    req: &Request,
    env: &Env,
    setup: &Setup,
    cookie: Option<Hash>,
) -> Result<Response> {
    let cfg = &setup.cfg;
    let now = now_ms();
    // What this isolate had done before this request (HEADCOUNT_DEBUG=1).
    let before = setup::counters();
    let authorization = header(req.headers(), "authorization");
    let token = authorization.as_deref().and_then(gateway::bearer);
    let mut access = gateway::authorize(cfg, AdminRoute::Stats, token, None, now);
    let mut flushed = false;
    if access != Access::Allowed {
        if let Some(hash) = cookie {
            // This isolate's own logins first, so a fresh admin session is known.
            if let Err(e) = flush::flush_now(env, setup).await {
                console_warn!("headcount: flush before stats failed: {e}");
            }
            flushed = true;
            let session = match flush::resolve(env, setup, hash, now).await {
                Ok(s) => s,
                Err(e) => {
                    console_error!("headcount: session lookup failed: {e}");
                    return json_response(503, gateway::error_body("stats unavailable"));
                }
            };
            access = gateway::authorize(cfg, AdminRoute::Stats, token, session.as_ref(), now);
        }
    }
    match access {
        Access::Unauthenticated => json_response(
            401,
            gateway::error_body("authentication required: admin session or bearer token"),
        ),
        Access::Forbidden => json_response(403, gateway::error_body("not allowed")),
        Access::Allowed => {
            if !flushed {
                if let Err(e) = flush::flush_now(env, setup).await {
                    console_warn!("headcount: flush before stats failed: {e}");
                }
            }
            match flush::gather(env, setup, now).await {
                Ok((sessions, traffic, stored_sessions, stored_cookies)) => {
                    let body = stats::report(sessions, traffic.figures(now), now, cfg).to_json();
                    let mut resp = json_response(200, body)?;
                    if setup.debug {
                        let debug = format!(
                            "do_requests={}; proxied={}; with_cookie={}; flushes={}; \
                             stored_sessions={stored_sessions}; stored_cookies={stored_cookies}; shards={}",
                            before.do_requests,
                            before.proxied,
                            before.with_cookie,
                            before.flushes,
                            setup.shards
                        );
                        resp.headers_mut().set("x-headcount-debug", &debug)?;
                    }
                    Ok(resp)
                }
                Err(e) => {
                    console_error!("headcount: stats failed: {e}");
                    json_response(503, gateway::error_body("stats unavailable"))
                }
            }
        }
    }
}
