//! The stats report: who is active now, by role, with per-session details.

use crate::config::Config;
use crate::session::Session;
use crate::traffic::TrafficFigures;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionView {
    pub session_id: String,
    pub user_id: String,
    pub username: String,
    pub role: String,
    pub ip: String,
    pub user_agent: String,
    /// Browser and OS from the user agent, e.g. "Chrome 148 on Linux".
    pub device: String,
    pub login_time: String,
    pub last_activity: String,
    pub duration_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub active_users: usize,
    pub active_sessions: usize,
    pub window_seconds: u64,
    /// Every configured role (zeros included) and any other role seen.
    pub by_role: BTreeMap<String, usize>,
    pub sessions: Vec<SessionView>,
    pub traffic: TrafficFigures,
    pub generated_at: String,
}

/// Counts that the gauges export.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counts {
    pub active_users: usize,
    pub active_sessions: usize,
    pub by_role: BTreeMap<String, usize>,
}

/// Active sessions, one per session id (a session mid-rotation is counted once),
/// most recently active first.
pub fn active_sessions(sessions: Vec<Session>, now: u64, cfg: &Config) -> Vec<Session> {
    let mut seen = HashSet::new();
    let mut active: Vec<Session> = sessions
        .into_iter()
        .filter(|s| s.is_active(now, cfg))
        .filter(|s| seen.insert(s.id))
        .collect();
    active.sort_by(|a, b| b.last_ms.cmp(&a.last_ms).then(a.username.cmp(&b.username)));
    active
}

/// Distinct users overall and per role. A user is identified by user id; if one
/// user has sessions under two roles, each role counts them once.
pub fn counts(active: &[Session], cfg: &Config) -> Counts {
    let users: BTreeSet<&str> = active.iter().map(|s| s.user_id.as_str()).collect();
    let mut per_role: BTreeMap<String, BTreeSet<&str>> = cfg
        .roles
        .iter()
        .map(|r| (r.clone(), BTreeSet::new()))
        .collect();
    for s in active {
        per_role
            .entry(s.role.clone())
            .or_default()
            .insert(&s.user_id);
    }
    Counts {
        active_users: users.len(),
        active_sessions: active.len(),
        by_role: per_role.into_iter().map(|(r, u)| (r, u.len())).collect(),
    }
}

pub fn report(sessions: Vec<Session>, traffic: TrafficFigures, now: u64, cfg: &Config) -> Stats {
    let active = active_sessions(sessions, now, cfg);
    let c = counts(&active, cfg);
    Stats {
        active_users: c.active_users,
        active_sessions: c.active_sessions,
        window_seconds: cfg.active_window_ms / 1000,
        by_role: c.by_role,
        sessions: active
            .iter()
            .map(|s| SessionView {
                session_id: s.uuid(),
                user_id: s.user_id.clone(),
                username: s.username.clone(),
                role: s.role.clone(),
                ip: s.ip.clone(),
                user_agent: s.user_agent.clone(),
                device: crate::device::describe(&s.user_agent),
                login_time: rfc3339(s.login_ms),
                last_activity: rfc3339(s.last_ms),
                duration_seconds: now.saturating_sub(s.login_ms) / 1000,
            })
            .collect(),
        traffic,
        generated_at: rfc3339(now),
    }
}

impl Stats {
    pub fn to_json(&self) -> Vec<u8> {
        // Plain data with string keys: serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// `2026-11-28T10:45:00.123Z` for a Unix time in milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::Traffic;

    fn s(id: u8, user: &str, role: &str, last: u64) -> Session {
        Session {
            id: [id; 16],
            user_id: user.into(),
            username: user.into(),
            role: role.into(),
            ip: "10.0.0.1".into(),
            user_agent: "ua".into(),
            login_ms: 1_000,
            last_ms: last,
            cookie: [id; 16],
            aliases: vec![],
        }
    }

    #[test]
    fn counts_distinct_users_roles_with_zeros_and_dedupes_sessions() {
        let cfg = Config::default();
        let now = 400_000;
        let all = vec![
            s(1, "admin_user", "admin", now - 10),
            s(2, "student1", "student", now - 20),
            s(3, "student1", "student", now - 30),
            s(3, "student1", "student", now - 30), // mid-rotation duplicate
            s(4, "student2", "student", now - 300_001), // idle past the window
            s(5, "guest", "auditor", now),
        ];
        let stats = report(all, Traffic::default().figures(now), now, &cfg);
        assert_eq!(stats.active_users, 3);
        assert_eq!(stats.active_sessions, 4);
        assert_eq!(stats.by_role.get("admin"), Some(&1));
        assert_eq!(stats.by_role.get("teacher"), Some(&0));
        assert_eq!(stats.by_role.get("student"), Some(&1));
        assert_eq!(stats.by_role.get("auditor"), Some(&1));
        assert_eq!(
            stats.sessions.first().map(|v| v.username.as_str()),
            Some("guest")
        );
        assert_eq!(stats.window_seconds, 300);
    }

    #[test]
    fn formats_rfc3339_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_830_252_123), "2026-11-28T01:44:12.123Z");
    }
}
