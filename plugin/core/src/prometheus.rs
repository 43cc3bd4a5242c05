//! `GET {prefix}/metrics`: the counts in the Prometheus text format (0.0.4).

use crate::events::Events;
use crate::stats::Counts;
use std::fmt::Write;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
    );
}

/// Label values escape `\`, `"` and newlines, per the exposition format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(counts: &Counts, events: &Events) -> String {
    let mut out = String::new();
    metric(
        &mut out,
        "headcount_active_users",
        "gauge",
        "Distinct users active in the window.",
        counts.active_users as u64,
    );
    let _ = write!(
        out,
        "# HELP headcount_active_users_by_role Distinct active users per role.\n# TYPE headcount_active_users_by_role gauge\n"
    );
    for (role, n) in &counts.by_role {
        let _ = writeln!(
            out,
            "headcount_active_users_by_role{{role=\"{}\"}} {n}",
            label(role)
        );
    }
    metric(
        &mut out,
        "headcount_active_sessions",
        "gauge",
        "Sessions active in the window.",
        counts.active_sessions as u64,
    );
    metric(
        &mut out,
        "headcount_logins_total",
        "counter",
        "Logins seen.",
        events.logins_total,
    );
    metric(
        &mut out,
        "headcount_logouts_total",
        "counter",
        "Logouts seen.",
        events.logouts_total,
    );
    metric(
        &mut out,
        "headcount_expiries_total",
        "counter",
        "Sessions ended by idle timeout or maximum lifetime.",
        events.expiries_total,
    );
    metric(
        &mut out,
        "headcount_evictions_total",
        "counter",
        "Sessions evicted by the live-session cap.",
        events.evictions_total,
    );
    metric(
        &mut out,
        "headcount_revocations_total",
        "counter",
        "Sessions revoked by an admin.",
        events.revocations_total,
    );
    let _ = write!(
        out,
        "# HELP headcount_unnamed_logins_total Logins the app accepted whose typed name was ambiguous, or that named nobody.\n# TYPE headcount_unnamed_logins_total counter\n"
    );
    for (why, n) in crate::typed::Unnamed::ALL.iter().zip(events.unnamed_totals) {
        let _ = writeln!(
            out,
            "headcount_unnamed_logins_total{{reason=\"{}\"}} {n}",
            why.name()
        );
    }
    let _ = write!(
        out,
        "# HELP headcount_whoami_lookups_total Lookups of sessions Headcount did not know, by outcome.\n# TYPE headcount_whoami_lookups_total counter\n"
    );
    let w = events.whoami;
    for (outcome, n) in [
        ("begun", w.begun),
        ("nobody", w.nobody),
        ("throttled", w.throttled),
    ] {
        let _ = writeln!(
            out,
            "headcount_whoami_lookups_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    out
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
        let text = render(&counts, &events);
        assert!(text.contains("\nheadcount_active_users 3\n"), "{text}");
        assert!(text.contains("headcount_active_users_by_role{role=\"admin\"} 1\n"));
        assert!(text.contains("headcount_active_users_by_role{role=\"stu\\\"dent\"} 2\n"));
        assert!(text.contains("headcount_active_sessions 4\n"));
        assert!(text.contains("headcount_logins_total 9\n"));
        assert!(text.contains("headcount_evictions_total 0\n"));
        assert!(text.contains("# TYPE headcount_logouts_total counter\n"));
        assert!(text.contains("headcount_unnamed_logins_total{reason=\"repeated_field\"} 0\n"));
        assert!(text.contains("headcount_whoami_lookups_total{outcome=\"throttled\"} 0\n"));
    }
}
