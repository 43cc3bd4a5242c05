//! Headcount as a Cloudflare Worker: a thin host over `headcount-core`.
//!
//! The Worker (`proxy.rs`) proxies every request to `ORIGIN` and asks the core what
//! each one means; session state lives in the `Sessions` Durable Object class
//! (`object.rs`, SQLite storage), each one shard of the core's session ledger
//! (`headcount_core::ledger`). Activity is coalesced in the isolate (the ledger's
//! `Buffer`) and written in batches (`flush.rs`), so proxied requests do not each
//! cost a Durable Object request. See workers/README.md.
#![forbid(unsafe_code)]

mod admin;
mod bearer;
mod flush;
mod object;
mod proxy;
mod revoked;
mod setup;
mod shards;
mod store;
mod whoami;

pub use object::Sessions;
use worker::{event, Context, Env, Request, Response, Result};

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    proxy::handle(req, env, ctx).await
}
