//! The stats report: who is active now, by role, with per-session details.

use crate::config::Config;
use crate::session::{Session, SessionRef};
use crate::traffic::TrafficFigures;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

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
    /// The app counted (`app.rs`).
    pub app: String,
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

/// Default and largest number of sessions listed in a report; counts always
/// cover every session. A listing of 100k sessions would be megabytes of JSON
/// that no dashboard shows, and its cost would block the worker serving it.
pub const DEFAULT_LISTED: usize = 1000;
pub const MAX_LISTED: usize = 10_000;

/// Streams sessions (borrowed straight from shared data, no allocation for the
/// ones not listed) into the counts and the `limit` most recently active.
pub struct Collector<'c> {
    cfg: &'c Config,
    now: u64,
    limit: usize,
    active: usize,
    users: HashSet<u64>,
    roles: BTreeMap<String, HashSet<u64>>,
    listed: Vec<Session>,
    /// Sessions at or below this last activity cannot enter the listing any more.
    floor: u64,
}

fn user_key(user_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    user_id.hash(&mut h);
    h.finish()
}

impl<'c> Collector<'c> {
    pub fn new(cfg: &'c Config, now: u64, limit: usize) -> Self {
        Collector {
            cfg,
            now,
            limit: limit.min(MAX_LISTED),
            active: 0,
            users: HashSet::new(),
            roles: cfg
                .roles
                .iter()
                .map(|r| (r.clone(), HashSet::new()))
                .collect(),
            listed: Vec::new(),
            floor: 0,
        }
    }

    pub fn visit(&mut self, s: &SessionRef<'_>) {
        if !s.is_active(self.now, self.cfg) {
            return;
        }
        self.active += 1;
        let user = user_key(s.user_id);
        self.users.insert(user);
        match self.roles.get_mut(s.role) {
            Some(set) => {
                set.insert(user);
            }
            None => {
                self.roles.insert(s.role.to_string(), HashSet::from([user]));
            }
        }
        if self.limit > 0 && (s.last_ms > self.floor || self.listed.len() < self.limit) {
            self.listed.push(s.to_session());
            if self.listed.len() >= 2 * self.limit {
                self.trim();
                self.floor = self.listed.last().map_or(0, |x| x.last_ms);
            }
        }
    }

    fn trim(&mut self) {
        self.listed
            .sort_by(|a, b| b.last_ms.cmp(&a.last_ms).then(a.username.cmp(&b.username)));
        self.listed.truncate(self.limit);
    }

    pub fn counts(&self) -> Counts {
        Counts {
            active_users: self.users.len(),
            active_sessions: self.active,
            by_role: self
                .roles
                .iter()
                .map(|(r, u)| (r.clone(), u.len()))
                .collect(),
        }
    }

    pub fn report(mut self, traffic: TrafficFigures) -> Stats {
        self.trim();
        let c = self.counts();
        let now = self.now;
        Stats {
            app: self.cfg.app_name().to_string(),
            active_users: c.active_users,
            active_sessions: c.active_sessions,
            window_seconds: self.cfg.active_window_ms / 1000,
            by_role: c.by_role,
            sessions: self.listed.iter().map(|s| view(s, now)).collect(),
            traffic,
            generated_at: rfc3339(now),
        }
    }
}

fn view(s: &Session, now: u64) -> SessionView {
    SessionView {
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
    }
}

/// Counts over owned sessions (hosts that keep sessions elsewhere, and tests).
pub fn counts(sessions: &[Session], now: u64, cfg: &Config) -> Counts {
    let mut c = Collector::new(cfg, now, 0);
    sessions.iter().for_each(|s| c.visit(&s.as_ref()));
    c.counts()
}

/// The full report over owned sessions, listing up to `DEFAULT_LISTED`.
pub fn report(sessions: Vec<Session>, traffic: TrafficFigures, now: u64, cfg: &Config) -> Stats {
    report_listing(sessions, traffic, now, cfg, DEFAULT_LISTED)
}

/// The report over owned sessions, listing up to `limit` (`listed_limit`).
pub fn report_listing(
    sessions: Vec<Session>,
    traffic: TrafficFigures,
    now: u64,
    cfg: &Config,
    limit: usize,
) -> Stats {
    let mut c = Collector::new(cfg, now, limit);
    sessions.iter().for_each(|s| c.visit(&s.as_ref()));
    c.report(traffic)
}

/// How many sessions the stats route lists: its `limit` query parameter
/// (0: the counts alone), else `DEFAULT_LISTED`; at most `MAX_LISTED`.
pub fn listed_limit(path: &[u8]) -> usize {
    crate::gateway::query_param(path, "limit")
        .map_or(DEFAULT_LISTED, |n| usize::try_from(n).unwrap_or(MAX_LISTED))
}

impl Stats {
    /// The report as JSON, byte for byte what `serde_json::to_vec` gives. The
    /// session list is written by hand: it is up to thousands of objects of short
    /// strings that rarely need escaping, and serde's per-byte escaping and
    /// per-token writes were a quarter of a 10k-session report's cost.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512 + self.sessions.len() * 448);
        write_report(&mut out, self, |out| {
            for (i, s) in self.sessions.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                s.write_json(out);
            }
        });
        out
    }
}

/// Writes `head` as the report's JSON, with `sessions` writing the list's items
/// (`head.sessions` itself is not read).
pub(crate) fn write_report(out: &mut Vec<u8>, head: &Stats, sessions: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"{\"app\":");
    json_str(out, &head.app);
    out.extend_from_slice(b",\"active_users\":");
    json_value(out, &head.active_users);
    out.extend_from_slice(b",\"active_sessions\":");
    json_value(out, &head.active_sessions);
    out.extend_from_slice(b",\"window_seconds\":");
    json_value(out, &head.window_seconds);
    out.extend_from_slice(b",\"by_role\":");
    json_value(out, &head.by_role);
    out.extend_from_slice(b",\"sessions\":[");
    sessions(out);
    out.extend_from_slice(b"],\"traffic\":");
    json_value(out, &head.traffic);
    out.extend_from_slice(b",\"generated_at\":");
    json_str(out, &head.generated_at);
    out.push(b'}');
}

/// A listed session's fields that never change, as the start of its JSON object.
pub(crate) struct SessionFixed<'a> {
    pub session_id: &'a str,
    pub user_id: &'a str,
    pub username: &'a str,
    pub role: &'a str,
    pub ip: &'a str,
    pub user_agent: &'a str,
    pub device: &'a str,
    pub login_time: &'a str,
}

impl SessionFixed<'_> {
    /// Everything up to `login_time`; `write_session_end` closes the object.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        let fields = [
            ("{\"session_id\":", self.session_id),
            (",\"user_id\":", self.user_id),
            (",\"username\":", self.username),
            (",\"role\":", self.role),
            (",\"ip\":", self.ip),
            (",\"user_agent\":", self.user_agent),
            (",\"device\":", self.device),
            (",\"login_time\":", self.login_time),
        ];
        for (key, value) in fields {
            out.extend_from_slice(key.as_bytes());
            json_str(out, value);
        }
    }
}

/// The fields that change (last activity, duration) and the object's end.
pub(crate) fn write_session_end(out: &mut Vec<u8>, last_activity: &str, duration_seconds: u64) {
    out.extend_from_slice(b",\"last_activity\":");
    json_str(out, last_activity);
    out.extend_from_slice(b",\"duration_seconds\":");
    json_value(out, &duration_seconds);
    out.push(b'}');
}

impl SessionView {
    fn write_json(&self, out: &mut Vec<u8>) {
        SessionFixed {
            session_id: &self.session_id,
            user_id: &self.user_id,
            username: &self.username,
            role: &self.role,
            ip: &self.ip,
            user_agent: &self.user_agent,
            device: &self.device,
            login_time: &self.login_time,
        }
        .write_json(out);
        write_session_end(out, &self.last_activity, self.duration_seconds);
    }
}

/// A JSON string: copied as is when nothing in it needs escaping (what serde_json
/// escapes: control characters, `"` and `\`), else through serde_json.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        json_value(out, s);
    }
}

fn json_value(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    // Plain data with string keys: serialisation cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// `2026-11-28T10:45:00.123Z` for a Unix time in milliseconds (years past 9999
/// read as the epoch). Written digit by digit: a report lists up to thousands
/// of times, and `format!` with a calendar library cost several times more.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, sod) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    if year > 9999 {
        return "1970-01-01T00:00:00.000Z".to_string();
    }
    let mut out = String::with_capacity(24);
    push_digits(&mut out, year, 4);
    let parts = [
        ('-', month, 2),
        ('-', day, 2),
        ('T', sod / 3600, 2),
        (':', sod / 60 % 60, 2),
        (':', sod % 60, 2),
        ('.', ms % 1000, 3),
    ];
    for (sep, n, width) in parts {
        out.push(sep);
        push_digits(&mut out, n, width);
    }
    out.push('Z');
    out
}

/// `n`'s last `width` (at most 4) decimal digits, zero-padded.
fn push_digits(out: &mut String, n: u64, width: usize) {
    // 32-bit arithmetic: a 64-bit division is several times slower on x86.
    let mut n = (n % 10_000) as u32;
    let mut digits = [b'0'; 4];
    for d in digits.iter_mut().take(width).rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    for d in digits.iter().take(width) {
        out.push(char::from(*d));
    }
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::Traffic;

    #[test]
    fn hand_written_json_is_serdes_byte_for_byte() {
        let cfg = Config::default();
        let now = 1_795_830_252_123;
        let mut odd = s(2, "o\"dd\\name\u{1}\t", "stu\u{7f}dent", now - 5);
        odd.user_agent = "Mozilla/5.0 «ünïcode» \"quoted\" \u{1f}".into();
        odd.ip = "2001:db8::1".into();
        let sessions = vec![s(1, "admin_user", "admin", now - 10), odd];
        for report in [
            report(sessions.clone(), Traffic::default().figures(now), now, &cfg),
            report(Vec::new(), Traffic::default().figures(now), now, &cfg),
        ] {
            let want = serde_json::to_vec(&report).unwrap();
            assert_eq!(
                String::from_utf8(report.to_json()).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
    }

    fn s(id: u8, user: &str, role: &str, last: u64) -> Session {
        Session {
            id: crate::ids::SessionId([id; 16]),
            user_id: user.into(),
            username: user.into(),
            role: role.into(),
            ip: "10.0.0.1".into(),
            user_agent: "ua".into(),
            login_ms: 1_000,
            last_ms: last,
            cookie: crate::ids::CookieHash([id; 16]),
            aliases: vec![],
        }
    }

    #[test]
    fn counts_distinct_users_and_roles_with_zeros() {
        let cfg = Config::default();
        let now = 400_000;
        let all = vec![
            s(1, "admin_user", "admin", now - 10),
            s(2, "student1", "student", now - 20),
            s(3, "student1", "student", now - 30),
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
    fn listing_is_bounded_but_counts_cover_everyone() {
        let cfg = Config::default();
        let now = 1_000_000;
        let mut c = Collector::new(&cfg, now, 3);
        let all: Vec<Session> = (0..50u8)
            .map(|i| s(i, &format!("u{i}"), "student", now - 1000 + u64::from(i)))
            .collect();
        all.iter().for_each(|x| c.visit(&x.as_ref()));
        assert_eq!(c.counts().active_users, 50);
        let r = c.report(Traffic::default().figures(now));
        assert_eq!(r.active_sessions, 50);
        let names: Vec<&str> = r.sessions.iter().map(|v| v.username.as_str()).collect();
        assert_eq!(names, vec!["u49", "u48", "u47"]);
    }

    #[test]
    fn rfc3339_matches_the_calendar_library() {
        let via_time = |ms: u64| {
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .unwrap();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        };
        let mut ms = 0u64;
        while ms < 253_402_300_799_999 {
            assert_eq!(rfc3339(ms), via_time(ms), "{ms}");
            ms = ms * 3 / 2 + 86_399_997;
        }
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(u64::MAX), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn formats_rfc3339_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_830_252_123), "2026-11-28T01:44:12.123Z");
    }
}
