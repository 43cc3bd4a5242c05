//! What the plugin's own routes answer, on every host: status, content type and
//! body, with the same error texts everywhere. Hosts find the data (shared data,
//! Durable Objects) and send the `Answer`; every admin answer also carries
//! `Cache-Control: no-store`.

use crate::config::Config;
use crate::events::{self, Events};
use crate::gateway::{self, Access, AdminRoute};
use crate::history::History;
use crate::prometheus;
use crate::session::Session;
use crate::stats::Counts;

pub const JSON: &str = "application/json";
pub const HTML: &str = "text/html; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(status: u16, body: Vec<u8>) -> Answer {
        Answer {
            status,
            content_type: JSON,
            body,
        }
    }

    /// `{"error": message}`, which says nothing about sessions.
    pub fn error(status: u16, message: &str) -> Answer {
        Answer::json(status, gateway::error_body(message))
    }

    /// The routes that need no data: the dashboard page (it carries none), 404
    /// and 405. `None` for the data routes.
    pub fn without_data(cfg: &Config, route: AdminRoute) -> Option<Answer> {
        match route {
            AdminRoute::Dashboard => Some(Answer {
                status: 200,
                content_type: HTML,
                body: gateway::dashboard_html(cfg).into_bytes(),
            }),
            AdminRoute::NotFound => Some(Answer::error(404, "no such headcount route")),
            AdminRoute::MethodNotAllowed => Some(Answer::error(405, "method not allowed")),
            _ => None,
        }
    }

    /// 401 or 403 for a data route the request may not read; `None` if allowed.
    pub fn denied(access: Access) -> Option<Answer> {
        match access {
            Access::Allowed => None,
            Access::Unauthenticated => Some(Answer::error(
                401,
                "authentication required: admin session or bearer token",
            )),
            Access::Forbidden => Some(Answer::error(403, "not allowed")),
            Access::CrossSite => Some(Answer::error(
                403,
                "cross-site request refused: send it from the dashboard, with the x-headcount-request header, or with the admin token",
            )),
        }
    }

    /// Every header of this answer besides `content-type`: `Cache-Control:
    /// no-store` and `nosniff` always, no referrer; the dashboard page also a
    /// strict `Content-Security-Policy` (its one inline script and style by
    /// hash, nothing from elsewhere, no framing).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("cache-control", "no-store".to_string()),
            ("x-content-type-options", "nosniff".to_string()),
            ("referrer-policy", "no-referrer".to_string()),
        ];
        if self.content_type == HTML {
            h.push(("content-security-policy", csp(&self.body)));
            h.push(("x-frame-options", "DENY".to_string()));
        }
        h
    }

    /// The store could not be read: 503 (the host logs why).
    pub fn unavailable() -> Answer {
        Answer::error(503, "headcount data unavailable")
    }

    /// Fleet mode: the collectors (or their store) could not answer; `reason`
    /// says which way (no answer, a status), never a secret.
    pub fn ledger_unavailable(reason: &str) -> Answer {
        Answer::error(503, &format!("headcount ledger unavailable: {reason}"))
    }

    /// A request with a revoked session's cookie or token (`enforce_revocation`).
    pub fn session_revoked() -> Answer {
        Answer::error(401, "session revoked")
    }

    /// `POST .../sessions/{id}/revoke`: the session it ended, or 404.
    pub fn revoked(session: Option<&Session>) -> Answer {
        match session {
            Some(s) => {
                let body = format!(r#"{{"revoked":true,"session_id":"{}"}}"#, s.uuid());
                Answer::json(200, body.into_bytes())
            }
            None => Answer::error(404, "no such live session"),
        }
    }

    pub fn history(history: &History, now: u64) -> Answer {
        Answer::json(200, to_json(&history.view(now)))
    }

    /// `/events?after=N`: `path` is the request's path with its query string.
    pub fn events(events: &Events, path: &[u8]) -> Answer {
        Answer::json(200, to_json(&events.view(events::after_param(path))))
    }

    pub fn metrics(app: &crate::app::AppName, counts: &Counts, events: &Events) -> Answer {
        Answer {
            status: 200,
            content_type: prometheus::CONTENT_TYPE,
            body: prometheus::render(app, counts, events).into_bytes(),
        }
    }
}

/// The page's policy: only its own inline script and style (by SHA-256), fetches
/// to its own origin, the empty icon; no plugins, frames, forms elsewhere or
/// `<base>`.
fn csp(page: &[u8]) -> String {
    let text = String::from_utf8_lossy(page);
    let hash = |open: &str, close: &str| {
        inline(&text, open, close)
            .map(|body| {
                use base64::Engine;
                use sha2::Digest;
                let digest = sha2::Sha256::digest(body.as_bytes());
                format!(
                    "'sha256-{}'",
                    base64::engine::general_purpose::STANDARD.encode(digest)
                )
            })
            .unwrap_or_else(|| "'none'".to_string())
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        hash("<script>", "</script>"),
        hash("<style>", "</style>")
    )
}

/// The text between the first `open` and the next `close`.
fn inline<'a>(page: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = page.find(open)? + open.len();
    let len = page.get(start..)?.find(close)?;
    page.get(start..start + len)
}

fn to_json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_says_the_same() {
        let cfg = Config::from_json(b"{}").unwrap();
        let page = Answer::without_data(&cfg, AdminRoute::Dashboard).unwrap();
        assert_eq!((page.status, page.content_type), (200, HTML));
        assert_eq!(Answer::without_data(&cfg, AdminRoute::Stats), None);
        assert_eq!(
            Answer::without_data(&cfg, AdminRoute::NotFound)
                .unwrap()
                .body,
            br#"{"error":"no such headcount route"}"#
        );
        assert_eq!(Answer::denied(Access::Allowed), None);
        assert_eq!(Answer::denied(Access::Unauthenticated).unwrap().status, 401);
        assert_eq!(
            Answer::denied(Access::Forbidden).unwrap().body,
            br#"{"error":"not allowed"}"#
        );
        assert_eq!(Answer::revoked(None).status, 404);
        let s = crate::ledger::testing::session(1, 2);
        let body = String::from_utf8(Answer::revoked(Some(&s)).body).unwrap();
        assert!(
            body.contains(&s.uuid()) && body.contains("\"revoked\":true"),
            "{body}"
        );
        assert_eq!(
            Answer::events(&Events::default(), b"/x?after=3").status,
            200
        );
    }

    #[test]
    fn the_page_gets_a_strict_policy_and_every_answer_nosniff() {
        let cfg = Config::from_json(b"{}").unwrap();
        let page = Answer::without_data(&cfg, AdminRoute::Dashboard).unwrap();
        let headers = page.headers();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        let policy = get("content-security-policy").unwrap();
        assert!(
            policy.starts_with("default-src 'none'; script-src 'sha256-"),
            "{policy}"
        );
        assert!(
            policy.contains("frame-ancestors 'none'") && !policy.contains("unsafe"),
            "{policy}"
        );
        assert_eq!(policy.matches("'sha256-").count(), 2, "{policy}");
        // The policy runs only the one inline script and style: the markup outside them may
        // carry no event handler attribute (onclick=) or style attribute, which it would block.
        let text = String::from_utf8(page.body.clone()).unwrap();
        let (head, rest) = text.split_once("<style>").unwrap();
        let (_, rest) = rest.split_once("</style>").unwrap();
        let (body, rest) = rest.split_once("<script>").unwrap();
        let (_, tail) = rest.split_once("</script>").unwrap();
        assert!(
            !tail.contains("<script") && !tail.contains("<style"),
            "one of each"
        );
        for markup in [head, body, tail] {
            for word in markup.split(|c: char| c.is_whitespace() || c == '<') {
                let name = word.split('=').next().unwrap_or_default();
                let handler = name.len() > 2
                    && name.starts_with("on")
                    && name.bytes().all(|b| b.is_ascii_lowercase());
                assert!(
                    !(word.contains('=') && (handler || name == "style")),
                    "{word}"
                );
            }
        }
        assert_eq!(get("x-frame-options").as_deref(), Some("DENY"));
        let json = Answer::error(404, "x").headers();
        assert!(json.contains(&("x-content-type-options", "nosniff".into())));
        assert!(json.contains(&("referrer-policy", "no-referrer".into())));
        assert!(json.iter().all(|(n, _)| *n != "content-security-policy"));
    }
}
