//! Activity a host has seen and not yet written, one entry per cookie, and what
//! the store's answer means for it: the same rule for an Envoy worker's buffer
//! and a ledger node's (`ledger::buffer`).

use crate::session::CookieHash;

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
    /// Unknown for the first time, or while the app is asked who it is: sent
    /// once more with the next flush.
    Retry(Pending),
    /// Unknown twice, and nobody is asking: these requests were anonymous.
    Anonymous(u64),
}

/// Whether the app is being asked who a cookie is (`whoami.begin_unknown`: a
/// lookup queued or in flight), as the host that flushes knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asking {
    No,
    /// Its requests wait for the answer, not for one more flush: the answer
    /// may begin the session they belong to. A lookup ends (answer, timeout,
    /// throttled, not sent), so this wait is bounded by the lookup's timeout.
    Yes,
}

/// Settles a buffered cookie once the store said whether it leads to a session.
pub fn settle(p: Pending, found: bool, asking: Asking) -> Settled {
    match (found, p.retried, asking) {
        (true, _, _) => Settled::Authenticated(p.requests),
        (false, false, _) | (false, true, Asking::Yes) => {
            Settled::Retry(Pending { retried: true, ..p })
        }
        (false, true, Asking::No) => Settled::Anonymous(p.requests),
    }
}

/// Buffered activity, one entry per cookie.
pub type Buffered<T> = Vec<(CookieHash, T)>;

/// Splits buffered activity into what may be handed on now and what stays:
/// the cookies the app is being asked about stay with the host that asks,
/// until the answer (which may begin their session) is in.
pub fn hold_asked<T>(
    pending: Buffered<T>,
    asking: impl Fn(&CookieHash) -> Asking,
) -> (Buffered<T>, Buffered<T>) {
    pending
        .into_iter()
        .partition(|(h, _)| asking(h) == Asking::No)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_cookie_is_retried_once_then_anonymous() {
        let mut p = Pending::new(10, 1);
        p.add(5, 2);
        assert_eq!((p.last_ms, p.requests), (10, 3));
        assert_eq!(settle(p, true, Asking::No), Settled::Authenticated(3));
        let Settled::Retry(again) = settle(p, false, Asking::No) else {
            panic!("not retried");
        };
        assert!(again.retried);
        assert_eq!(settle(again, false, Asking::No), Settled::Anonymous(3));
        assert_eq!(settle(again, true, Asking::No), Settled::Authenticated(3));
    }

    #[test]
    fn an_unknown_cookie_waits_while_the_app_is_asked_about_it() {
        let mut p = Pending::new(10, 2);
        for _ in 0..5 {
            let Settled::Retry(next) = settle(p, false, Asking::Yes) else {
                panic!("not kept while asked");
            };
            p = next;
        }
        assert_eq!(settle(p, true, Asking::No), Settled::Authenticated(2));
        assert_eq!(settle(p, false, Asking::No), Settled::Anonymous(2));
    }

    #[test]
    fn cookies_being_asked_about_are_held_back() {
        let asked = CookieHash([1; 16]);
        let other = CookieHash([2; 16]);
        let pending = vec![(asked, 1), (other, 2)];
        let asking = |h: &CookieHash| if *h == asked { Asking::Yes } else { Asking::No };
        let (go, stay) = hold_asked(pending, asking);
        assert_eq!((go, stay), (vec![(other, 2)], vec![(asked, 1)]));
    }
}
