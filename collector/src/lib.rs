//! `headcount-collector`: the fleet's ledger service. Envoy nodes in fleet mode
//! send it the ledger protocol's requests (`headcount_core::ledger::wire`); it
//! applies the core's ledger rules (`headcount_core::ledger::Ledger`) to a store
//! that any number of collector replicas share: Redis 7 (or Valkey), standalone
//! or Redis Cluster (`redis`). No rule lives here; a collector only runs steps.
#![forbid(unsafe_code)]

pub mod redis_ledger;
pub mod service;
pub mod store;
pub mod sweeper;
