//! The Worker side of `whoami` (the core's `whoami.rs`): after an accepted
//! login's response went out (`wait_until`), a subrequest to `ORIGIN` asks the
//! app who the session is, with the session cookie alone, bounded by
//! `whoami.timeout_ms`. The answer (or its absence) is settled by the core.

use crate::proxy::{bytes_of, header};
use crate::setup::Setup;
use futures::future::{select, Either};
use futures::StreamExt;
use headcount_core::identity::{self, CookieChange, Identity};
use headcount_core::whoami::{Credential, MAX_ANSWER};
use std::time::Duration;
use worker::{console_warn, Delay, Fetch, Headers, Method, Request, RequestInit, Response};

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
