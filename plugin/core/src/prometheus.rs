//! `GET {prefix}/metrics`: the counts in the Prometheus text format (0.0.4).
//! Every sample carries the app it counts (`app="..."`), so one scrape config
//! over many apps' routes, or one dashboard over them, keeps them apart.

use crate::app::AppName;
use crate::events::Events;
use crate::stats::Counts;
use std::fmt::Write;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label values escape `\`, `"` and newlines, per the exposition format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Text<'a> {
    out: String,
    app: &'a AppName,
}

impl Text<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// One sample: `name{app="..",extra="..."} value`.
    fn sample(&mut self, name: &str, extra: Option<(&str, &str)>, value: u64) {
        let _ = write!(self.out, "{name}{{app=\"{}\"", label(self.app.as_str()));
        if let Some((k, v)) = extra {
            let _ = write!(self.out, ",{k}=\"{}\"", label(v));
        }
        let _ = writeln!(self.out, "}} {value}");
    }

    fn metric(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, None, value);
    }
}

pub fn render(app: &AppName, counts: &Counts, events: &Events) -> String {
    let mut t = Text {
        out: String::new(),
        app,
    };
    t.metric(
        "headcount_active_users",
        "gauge",
        "Distinct users active in the window.",
        counts.active_users as u64,
    );
    let by_role = "headcount_active_users_by_role";
    t.family(by_role, "gauge", "Distinct active users per role.");
    for (role, n) in &counts.by_role {
        t.sample(by_role, Some(("role", role)), *n as u64);
    }
    t.metric(
        "headcount_active_sessions",
        "gauge",
        "Sessions active in the window.",
        counts.active_sessions as u64,
    );
    for (name, help, value) in [
        (
            "headcount_logins_total",
            "Logins seen.",
            events.logins_total,
        ),
        (
            "headcount_logouts_total",
            "Logouts seen.",
            events.logouts_total,
        ),
        (
            "headcount_expiries_total",
            "Sessions ended by idle timeout or maximum lifetime.",
            events.expiries_total,
        ),
        (
            "headcount_evictions_total",
            "Sessions evicted by the live-session cap.",
            events.evictions_total,
        ),
        (
            "headcount_revocations_total",
            "Sessions revoked by an admin.",
            events.revocations_total,
        ),
    ] {
        t.metric(name, "counter", help, value);
    }
    let unnamed = "headcount_unnamed_logins_total";
    t.family(
        unnamed,
        "counter",
        "Logins the app accepted whose typed name was ambiguous, or that named nobody.",
    );
    for (why, n) in crate::typed::Unnamed::ALL.iter().zip(events.unnamed_totals) {
        t.sample(unnamed, Some(("reason", why.name())), n);
    }
    let lookups = "headcount_whoami_lookups_total";
    t.family(
        lookups,
        "counter",
        "Lookups of sessions Headcount did not know, by outcome.",
    );
    let w = events.whoami;
    for (outcome, n) in [
        ("begun", w.begun),
        ("nobody", w.nobody),
        ("throttled", w.throttled),
    ] {
        t.sample(lookups, Some(("outcome", outcome)), n);
    }
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series() {
        let counts = Counts {
            active_users: 3,
            active_sessions: 4,
            by_role: [("admin".to_string(), 1), ("stu\"dent".to_string(), 2)]
                .into_iter()
                .collect(),
        };
        let events = Events {
            logins_total: 9,
            logouts_total: 2,
            expiries_total: 1,
            ..Events::default()
        };
        let app = AppName::parse("app", "shop-a").unwrap();
        let text = render(&app, &counts, &events);
        assert!(
            text.contains("\nheadcount_active_users{app=\"shop-a\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("headcount_active_users_by_role{app=\"shop-a\",role=\"admin\"} 1\n"));
        assert!(text
            .contains("headcount_active_users_by_role{app=\"shop-a\",role=\"stu\\\"dent\"} 2\n"));
        assert!(text.contains("headcount_active_sessions{app=\"shop-a\"} 4\n"));
        assert!(text.contains("headcount_logins_total{app=\"shop-a\"} 9\n"));
        assert!(text.contains("headcount_evictions_total{app=\"shop-a\"} 0\n"));
        assert!(text.contains("# TYPE headcount_logouts_total counter\n"));
        assert!(text.contains(
            "headcount_unnamed_logins_total{app=\"shop-a\",reason=\"repeated_field\"} 0\n"
        ));
        assert!(text
            .contains("headcount_whoami_lookups_total{app=\"shop-a\",outcome=\"throttled\"} 0\n"));
    }
}
