//! The session ledger: the session table as ops on shards, for hosts whose store
//! is not Envoy's shared data (the Worker's SQLite Durable Objects; the fleet
//! collector's Redis). One set of rules (`apply`), one protocol (`wire`), any
//! store (`store::LedgerStore`; `memory::MemoryLedger` in process).
//!
//! - `address`: which shard a request goes to, for which app (every request names it).
//! - `wire`: the versioned protocol between nodes and shards (ops, batches, replies).
//! - `apply`: what each op does to a shard (`Ledger`), the sweep and the alarm's timing.
//! - `store`: what a shard's store must offer.
//! - `memory`: a store in maps.
//! - `buffer`: a node's coalescing buffer of ops and traffic.
//! - `node`: a node's whole side for callback-driven hosts (Envoy in fleet mode):
//!   buffer, one batch in flight per shard, resends, follow-ups, revoked values.
//! - `route`: a node's addressing of ops to shards, rounds of follow-ups, merged reports.
//! - `revoked`: a node's copy of the revoked cookie values.

pub mod address;
pub mod apply;
pub mod buffer;
pub mod memory;
pub mod node;
pub mod revoked;
pub mod route;
pub mod store;
pub mod wire;

pub use crate::ids::{CookieHash, NodeId, SessionId, UserKey};
pub use apply::{Here, Ledger, LedgerError, Outcome};
pub use memory::MemoryLedger;
pub use store::{CookieRow, LedgerStore};
pub use wire::{Batch, BatchReply, Op};

#[cfg(test)]
pub(crate) mod testing {
    use crate::session::Session;

    /// A session with id `[id; 16]` and cookie `[cookie; 16]`.
    pub fn session(id: u8, cookie: u8) -> Session {
        Session {
            id: crate::ids::SessionId([id; 16]),
            user_id: "7".into(),
            username: "ann".into(),
            role: "teacher".into(),
            ip: String::new(),
            user_agent: String::new(),
            login_ms: 1,
            last_ms: 1,
            cookie: crate::ids::CookieHash([cookie; 16]),
            aliases: Vec::new(),
        }
    }
}

#[cfg(test)]
mod node_tests;
#[cfg(test)]
mod tests;
