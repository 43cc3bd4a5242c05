//! Activity a host has seen and not yet written, one entry per cookie, and what
//! the store's answer means for it: the same rule for an Envoy worker's buffer
//! and a ledger node's (`ledger::buffer`).

/// Distinct cookies buffered between flushes; beyond this, requests count as
/// anonymous so that a flood of random cookies cannot grow memory.
pub const MAX_PENDING: usize = 65_536;

/// Requests one cookie made since the last flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    pub last_ms: u64,
    pub requests: u64,
    /// Not found at a flush once already: it may have been a rotation another
    /// worker or node had not written yet; a second miss is anonymous.
    pub retried: bool,
}

impl Pending {
    pub fn new(last_ms: u64, requests: u64) -> Pending {
        Pending {
            last_ms,
            requests,
            retried: false,
        }
    }

    /// Another request (or several) with the same cookie.
    pub fn add(&mut self, at: u64, requests: u64) {
        self.last_ms = self.last_ms.max(at);
        self.requests += requests;
    }

    /// Another buffer's activity for the same cookie (a worker's, handed to the
    /// singleton): a cookie not found once already stays so.
    pub fn absorb(&mut self, other: Pending) {
        self.add(other.last_ms, other.requests);
        self.retried |= other.retried;
    }
}

/// What a flush learnt about a buffered cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// It led to a live session: these requests were authenticated.
    Authenticated(u64),
    /// Unknown for the first time: sent once more with the next flush.
    Retry(Pending),
    /// Unknown twice: these requests were anonymous.
    Anonymous(u64),
}

/// Settles a buffered cookie once the store said whether it leads to a session.
pub fn settle(p: Pending, found: bool) -> Settled {
    match (found, p.retried) {
        (true, _) => Settled::Authenticated(p.requests),
        (false, false) => Settled::Retry(Pending { retried: true, ..p }),
        (false, true) => Settled::Anonymous(p.requests),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_cookie_is_retried_once_then_anonymous() {
        let mut p = Pending::new(10, 1);
        p.add(5, 2);
        assert_eq!((p.last_ms, p.requests), (10, 3));
        assert_eq!(settle(p, true), Settled::Authenticated(3));
        let Settled::Retry(again) = settle(p, false) else {
            panic!("not retried");
        };
        assert!(again.retried);
        assert_eq!(settle(again, false), Settled::Anonymous(3));
        assert_eq!(settle(again, true), Settled::Authenticated(3));
    }
}
