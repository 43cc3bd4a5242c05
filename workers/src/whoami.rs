//! The Worker side of `whoami` (the core's `whoami.rs`): after an accepted
//! login's response went out (`wait_until`), a subrequest to `ORIGIN` asks the
//! app who the session is, with the session cookie alone, bounded by
//! `whoami.timeout_ms`. The answer (or its absence) is settled by the core.

use crate::flush::{self, with_buffer};
use crate::object::now_ms;
use crate::proxy::{bytes_of, header};
use crate::setup::{self, Setup};
use futures::future::{select, Either};
use futures::StreamExt;
use headcount_core::identity::{self, CookieChange, Identity};
use headcount_core::ids::CookieHash;
use headcount_core::ledger::Op;
use headcount_core::whoami::lookups::{
    self, Candidate, Candidates, Counts, Nobody, Verdict, Window,
};
use headcount_core::whoami::{Credential, MAX_ANSWER};
use std::cell::RefCell;
use std::time::Duration;
use worker::{
    console_log, console_warn, Delay, Env, Fetch, Headers, Method, Request, RequestInit, Response,
};

/// What the app answered: who it names (`None`: nobody, a failure or a timeout)
/// and the session cookie's new value if the answer rotated it.
#[derive(Default)]
pub struct Answer {
    pub who: Option<Identity>,
    pub rotated: Option<Vec<u8>>,
}

/// Asks the app about the session whose cookie or token is `credential`.
pub async fn ask(setup: &Setup, credential: &Credential, now: u64) -> Answer {
    let nobody = Answer {
        who: None,
        rotated: None,
    };
    let Some(w) = setup.cfg.whoami.as_ref() else {
        return nobody;
    };
    let Some(request) = request(setup, &w.path, credential) else {
        return nobody;
    };
    let fetch = Fetch::Request(request);
    let call = fetch.send();
    let timeout = Delay::from(Duration::from_millis(w.timeout_ms));
    let mut resp = match select(Box::pin(call), timeout).await {
        Either::Left((Ok(r), _)) => r,
        Either::Left((Err(e), _)) => {
            console_warn!("headcount: whoami call failed ({e}); the login's other sources name it");
            return nobody;
        }
        Either::Right(_) => {
            console_warn!("headcount: whoami timed out; the login's other sources name it");
            return nobody;
        }
    };
    let rotated = resp
        .headers()
        .get_all("set-cookie")
        .unwrap_or_default()
        .iter()
        .rev()
        .find_map(|v| identity::set_cookie(&bytes_of(v), &setup.cfg.session_cookie, now))
        .and_then(|c| match c {
            CookieChange::Set(v) => Some(v),
            CookieChange::Cleared => None,
        });
    let status = resp.status_code();
    let body = read_bounded(&mut resp).await.unwrap_or_default();
    Answer {
        who: w.answer(status, &body),
        rotated,
    }
}

fn request(setup: &Setup, path: &str, credential: &Credential) -> Option<Request> {
    let mut url = setup.origin.clone();
    let (p, q) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    url.set_path(p);
    url.set_query(q);
    let headers = Headers::new();
    headers
        .set(
            credential.header(),
            std::str::from_utf8(&credential.value).ok()?,
        )
        .ok()?;
    headers.set("user-agent", "headcount-whoami").ok()?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    init.redirect = worker::RequestRedirect::Manual;
    Request::new_with_init(url.as_str(), &init).ok()
}

async fn read_bounded(resp: &mut Response) -> Option<Vec<u8>> {
    if header(resp.headers(), "content-length")
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| n > MAX_ANSWER)
    {
        return None;
    }
    let mut stream = resp.stream().ok()?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.ok()?);
        if out.len() > MAX_ANSWER {
            return None;
        }
    }
    Some(out)
}

/// This isolate's lookups of unknown credentials (`begin_unknown`): requests'
/// credentials until a flush answers for them, those to ask, what the app
/// named nobody for lately, and the budget (`lookups_per_second` per isolate,
/// `max_in_flight`).
#[derive(Default)]
struct Unknown {
    candidates: Candidates,
    nobody: Nobody,
    /// Candidates to ask about, with their unknown touch, held back until the
    /// answer (sent first, it would find no session and count as anonymous).
    to_ask: Vec<(CookieHash, Candidate, Op)>,
    window: Window,
    in_flight: u32,
    counts: Counts,
}

thread_local! {
    static UNKNOWN: RefCell<Unknown> = RefCell::new(Unknown::default());
}

/// Whether lookups wait to be asked (the flush timer keeps running for them).
pub fn waiting() -> bool {
    UNKNOWN.with(|u| !u.borrow().to_ask.is_empty())
}

/// A request's credential, kept until a flush shows whether its session is
/// known; `facts` builds the candidate, only if it is kept.
pub fn keep(hash: CookieHash, now: u64, facts: impl FnOnce() -> Option<Candidate>) {
    UNKNOWN.with(|u| {
        let mut u = u.borrow_mut();
        if u.candidates.wants(&hash) && !u.nobody.holds(&hash, now) {
            if let Some(c) = facts() {
                u.candidates.add(hash, c, now);
            }
        }
    });
}

/// A batch's touches the shards answered for (all but `missing`): their
/// candidates go.
pub fn settled(sent: &[Op], missing: &[Op]) {
    let hash_of = |op: &Op| match op {
        Op::Touch { hash, .. } | Op::TouchSession { hash, .. } => Some(*hash),
        _ => None,
    };
    UNKNOWN.with(|u| {
        let mut u = u.borrow_mut();
        if u.candidates.is_empty() {
            return;
        }
        let missed: Vec<CookieHash> = missing.iter().filter_map(hash_of).collect();
        for h in sent.iter().filter_map(hash_of) {
            if !missed.contains(&h) {
                u.candidates.forget(&h);
            }
        }
    });
}

/// A flush's unknown touches (first misses): those with a candidate are held
/// to be asked about; the rest are returned, to be retried as usual.
pub fn missed(missing: Vec<Op>, now: u64) -> Vec<Op> {
    UNKNOWN.with(|u| {
        let mut u = u.borrow_mut();
        let mut rest = Vec::new();
        for op in missing {
            let Op::Touch { hash, .. } = &op else {
                rest.push(op);
                continue;
            };
            let hash = *hash;
            let asking = u.to_ask.iter().any(|(a, _, _)| *a == hash);
            match u.candidates.take(&hash) {
                Some(c) if !asking && !u.nobody.holds(&hash, now) => u.to_ask.push((hash, c, op)),
                _ => rest.push(op),
            }
        }
        // Candidates no flush will answer for (their touch went with a logout
        // or a rotation) go once they are old.
        u.candidates.prune(now, |_| false);
        rest
    })
}

/// Asks the app about the credentials a flush did not find, within the
/// budget, and buffers what the answers begin (an `Op::Bearer`: the shard
/// starts it unless it is live or revoked) and the counts.
pub async fn ask_unknown(env: &Env, setup: &Setup) {
    let Some(w) = setup.cfg.whoami.as_ref().filter(|w| w.begin_unknown) else {
        return;
    };
    let now = now_ms();
    let (admitted, throttled) = UNKNOWN.with(|u| {
        let mut u = u.borrow_mut();
        let queued = std::mem::take(&mut u.to_ask);
        let (mut admitted, mut throttled) = (Vec::new(), Vec::new());
        for (hash, c, touch) in queued {
            if u.in_flight < w.max_in_flight && u.window.admit(now, w.lookups_per_second) {
                u.in_flight += 1;
                admitted.push((hash, c, touch));
            } else {
                u.counts.throttled += 1;
                throttled.push(touch);
            }
        }
        (admitted, throttled)
    });
    with_buffer(|b| throttled.into_iter().for_each(|t| b.retry(t)));
    if admitted.is_empty() && UNKNOWN.with(|u| u.borrow().counts.is_empty()) {
        return;
    }
    let hasher = setup::hasher(env, setup).await.ok();
    let asks = admitted.into_iter().map(|(hash, c, touch)| async move {
        let answer = ask(setup, &c.credential, now_ms()).await;
        (hash, (c.ip, c.user_agent), answer.who, touch)
    });
    let answers = futures::future::join_all(asks).await;
    let answered = u32::try_from(answers.len()).unwrap_or(u32::MAX);
    UNKNOWN.with(|u| {
        let mut u = u.borrow_mut();
        u.in_flight = u.in_flight.saturating_sub(answered);
    });
    let now = now_ms();
    let (mut begun, mut unknown) = (Vec::new(), Vec::new());
    UNKNOWN.with(|u| {
        let mut u = u.borrow_mut();
        for (hash, facts, who, touch) in answers {
            let Some(h) = hasher.as_deref() else {
                unknown.push(touch);
                continue;
            };
            match lookups::verdict(&setup.cfg, h, hash, facts, who, now) {
                Verdict::Begin(s) => {
                    u.counts.begun += 1;
                    begun.push((s, touch));
                }
                Verdict::Nobody { until } => {
                    u.counts.nobody += 1;
                    u.nobody.remember(hash, until, now);
                    unknown.push(touch);
                }
            }
        }
    });
    let counts = UNKNOWN.with(|u| std::mem::take(&mut u.borrow_mut().counts));
    with_buffer(|b| {
        unknown.into_iter().for_each(|t| b.retry(t));
        for (session, touch) in begun {
            console_log!(
                "headcount: whoami: session of {} as {} begins ({})",
                session.username,
                session.role,
                session.uuid()
            );
            if b.push(Op::Bearer {
                session,
                requests: 0,
            }) {
                b.urgent = true;
                b.resend(touch);
            } else {
                flush::log_lost("a session whoami began");
                b.retry(touch);
            }
        }
        if !counts.is_empty() && !b.push(Op::Counts { whoami: counts }) {
            flush::log_lost("whoami's counts");
        }
    });
    if counts.throttled > 0 {
        console_warn!(
            "headcount: whoami: {} lookups of unknown credentials not sent (over lookups_per_second or max_in_flight)",
            counts.throttled
        );
    }
}
