//! The collector's HTTP service: the ledger protocol for fleet nodes at
//! `POST /{app}/shard-{n}/{op}` (`address::collector_path`), each request with
//! `Authorization: Bearer <fleet.token>`, and `GET /healthz`. A handler reads
//! the body, runs one `Ledger` call on the shard as one atomic step (on the
//! blocking pool: store calls are synchronous) and answers JSON. No rule here.
//!
//! | status | when |
//! |---|---|
//! | 200 | the call's JSON answer |
//! | 400 | a body that does not parse, or a batch the ledger refuses |
//! | 401 | no fleet token, or another one |
//! | 404 | no such path or operation |
//! | 503 | the store failed (nothing was written; send it again) |

use crate::on_shard;
use crate::redis_ledger::StepError;
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use headcount_core::events::Actor;
use headcount_core::fleet::Fleet;
use headcount_core::ledger::address;
use headcount_core::ledger::wire::{Batch, Resolve, RevokeQuery, RevokedAdd, StatsQuery};
use headcount_core::ledger::Here;
use headcount_core::{AppName, Config};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

/// What every handler shares: the store, the fleet's configuration.
pub struct Collector {
    pub store: Store,
    pub cfg: Config,
    pub fleet: Fleet,
}

/// The answer of one operation: status and JSON body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    fn json<T: Serialize>(value: &T) -> Answer {
        match serde_json::to_string(value) {
            Ok(body) => Answer { status: 200, body },
            Err(e) => Answer::error(500, &e.to_string()),
        }
    }

    fn error(status: u16, why: &str) -> Answer {
        let body = serde_json::json!({ "error": why }).to_string();
        Answer { status, body }
    }

    fn of<T: Serialize>(r: Result<T, StepError>) -> Answer {
        match r {
            Ok(v) => Answer::json(&v),
            Err(StepError::Refused(why)) => Answer::error(400, &why),
            Err(StepError::Store(e)) => Answer::error(503, &e.0),
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(body).map_err(|e| Answer::error(400, &format!("bad request body: {e}")))
}

/// The answer of `$body` run with `$l` a `Ledger` on shard `$shard` of `$app`.
macro_rules! ledger_answer {
    ($c:expr, $app:expr, $shard:expr, $here:expr, |$l:ident| $body:expr) => {
        Answer::of(on_shard!(&$c.store, $app, $shard, &$c.cfg, $here, |$l| {
            $body
        }))
    };
}

impl Collector {
    /// Routes one operation to its `handle_*` method.
    pub fn handle(&self, app: &AppName, shard: u32, op: &str, body: &[u8]) -> Answer {
        let result = match op {
            "/batch" => self.handle_batch(app, shard, body),
            "/resolve" => self.handle_resolve(app, shard, body),
            "/stats" => self.handle_stats(app, shard, body),
            "/secret" => Ok(self.handle_secret(app)),
            "/revoke" => self.handle_revoke(app, shard, body),
            "/revoked" => self.handle_revoked(app, shard, body),
            "/feed" => Ok(self.handle_feed(app)),
            _ => Err(Answer::error(404, "no such operation")),
        };
        result.unwrap_or_else(|a| a)
    }

    fn here(&self, shard: u32, shards: u32) -> Here {
        Here::new(shard, shards, now_ms())
    }

    fn check_place(shard: u32, body_shard: u32, shards: u32) -> Result<(), Answer> {
        if body_shard != shard || shard >= shards.max(1) {
            return Err(Answer::error(
                400,
                &format!("shard {body_shard} of {shards} asked at shard {shard}"),
            ));
        }
        Ok(())
    }

    fn handle_batch(&self, app: &AppName, shard: u32, body: &[u8]) -> Result<Answer, Answer> {
        let batch: Batch = parse(body)?;
        Self::check_place(shard, batch.shard, batch.shards)?;
        if let Err(e) = self.store.register(app, batch.shards) {
            return Ok(Answer::error(503, &e));
        }
        let here = self.here(shard, batch.shards);
        Ok(ledger_answer!(self, app, shard, here, |l| l
            .batch(batch.clone())
            .map(|out| out.reply)))
    }

    fn handle_resolve(&self, app: &AppName, shard: u32, body: &[u8]) -> Result<Answer, Answer> {
        let q: Resolve = parse(body)?;
        Self::check_place(shard, q.shard, q.shards)?;
        let here = Here::new(shard, q.shards, q.now);
        Ok(ledger_answer!(self, app, shard, here, |l| l.resolve(q.hash, q.id)))
    }

    fn handle_stats(&self, app: &AppName, shard: u32, body: &[u8]) -> Result<Answer, Answer> {
        let q: StatsQuery = parse(body)?;
        let here = Here::new(0, 1, q.now);
        Ok(ledger_answer!(self, app, shard, here, |l| l.stats()))
    }

    /// The cookie hash key every node of the app uses (shard 0 keeps it).
    fn handle_secret(&self, app: &AppName) -> Answer {
        let mut random = [0u8; 32];
        if let Err(e) = getrandom::getrandom(&mut random) {
            return Answer::error(503, &format!("no randomness: {e}"));
        }
        let here = self.here(0, 1);
        ledger_answer!(self, app, 0, here, |l| l.secret(random))
    }

    fn handle_revoke(&self, app: &AppName, shard: u32, body: &[u8]) -> Result<Answer, Answer> {
        let q: RevokeQuery = parse(body)?;
        Self::check_place(shard, q.shard, q.shards)?;
        let here = self.here(shard, q.shards);
        let by: Option<Actor> = q.by.clone();
        Ok(ledger_answer!(self, app, shard, here, |l| l
            .revoke(q.id, by.clone())
            .map(|(reply, _)| reply)))
    }

    fn handle_revoked(&self, app: &AppName, shard: u32, body: &[u8]) -> Result<Answer, Answer> {
        let q: RevokedAdd = parse(body)?;
        Self::check_place(shard, q.shard, q.shards)?;
        let here = self.here(shard, q.shards);
        Ok(ledger_answer!(self, app, shard, here, |l| l.revoked_add(q.clone())))
    }

    fn handle_feed(&self, app: &AppName) -> Answer {
        let here = self.here(0, 1);
        ledger_answer!(self, app, 0, here, |l| l.feed())
    }
}

/// The service's routes.
pub fn router(c: Arc<Collector>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .fallback(any(ledger_call))
        .with_state(c)
}

fn respond(a: Answer) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [("content-type", "application/json")], a.body).into_response()
}

/// `GET /healthz`: 200 when the store answers, else 503 with the reason.
async fn healthz(State(c): State<Arc<Collector>>) -> Response {
    let answer = tokio::task::spawn_blocking(move || match c.store.ping() {
        Ok(()) => Answer {
            status: 200,
            body: r#"{"ok":true}"#.into(),
        },
        Err(e) => Answer::error(503, &e),
    })
    .await
    .unwrap_or_else(|e| Answer::error(500, &e.to_string()));
    respond(answer)
}

/// `POST /{app}/shard-{n}/{op}` with the fleet token.
async fn ledger_call(
    State(c): State<Arc<Collector>>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth = headers.get("authorization").map(|v| v.as_bytes());
    if !c.fleet.admits(auth) {
        return respond(Answer::error(401, "the fleet token is missing or wrong"));
    }
    let Some((app, shard, op)) = address::parse_collector_path(uri.path()) else {
        return respond(Answer::error(404, "no such path"));
    };
    // A config that names its app serves that app alone: a tenant's nodes
    // (and its fleet token) reach no other app's ledger.
    if c.cfg.app.as_ref().is_some_and(|only| *only != app) {
        return respond(Answer::error(404, "this collector serves another app"));
    }
    if method != axum::http::Method::POST {
        return respond(Answer::error(405, "POST only"));
    }
    let op = op.to_string();
    let answer = tokio::task::spawn_blocking(move || c.handle(&app, shard, &op, &body))
        .await
        .unwrap_or_else(|e| Answer::error(500, &e.to_string()));
    respond(answer)
}
