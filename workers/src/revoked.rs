//! The isolate's copy of the revoked cookie values (`enforce_revocation`): the
//! core's `RevokedSet`, one per isolate. Filled at once when this isolate handles
//! a revocation, loaded from shard 0 once per isolate (`flush::load_revoked`),
//! refreshed from every flush reply.

use headcount_core::ledger::revoked::RevokedSet;
use std::cell::RefCell;

thread_local! {
    static REVOKED: RefCell<RevokedSet> = RefCell::new(RevokedSet::default());
}

pub fn with<R>(f: impl FnOnce(&mut RevokedSet) -> R) -> R {
    REVOKED.with(|r| f(&mut r.borrow_mut()))
}
