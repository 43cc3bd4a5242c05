//! Talking to the session shards: Durable Object `<app>/shard-<i>` of the
//! `HEADCOUNT` namespace (`address::shard_name`), asked at `/<app>/<op>`. Every
//! Durable Object request of the Worker goes through `call`, which counts it.

use crate::setup::{self, BINDING};
use headcount_core::ledger::address;
use headcount_core::AppName;
use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::{Env, Headers, Method, Request, RequestInit};

/// POSTs `body` as JSON to operation `op` on shard `shard` of `app` and decodes
/// the JSON answer.
pub async fn call<B: Serialize, T: DeserializeOwned>(
    env: &Env,
    app: &AppName,
    shard: u32,
    op: &str,
    body: &B,
) -> Result<T, String> {
    setup::count(|c| c.do_requests += 1);
    let name = address::shard_name(app, shard);
    let path = address::request_path(app, op);
    let stub = env
        .durable_object(BINDING)
        .and_then(|ns| ns.get_by_name(&name))
        .map_err(|e| format!("no Durable Object binding `{BINDING}`: {e}"))?;
    let json = serde_json::to_string(body).map_err(|e| e.to_string())?;
    let headers = Headers::new();
    headers
        .set("content-type", "application/json")
        .map_err(|e| e.to_string())?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(json.into()));
    // The host part is ignored by a Durable Object; the path names the operation.
    let req = Request::new_with_init(&format!("https://headcount{path}"), &init)
        .map_err(|e| e.to_string())?;
    let mut resp = stub
        .fetch_with_request(req)
        .await
        .map_err(|e| format!("{name} {op}: {e}"))?;
    let status = resp.status_code();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{name} {op}: {status} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("{name} {op}: bad answer: {e}"))
}
