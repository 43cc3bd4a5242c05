//! Per-minute active users over the last hour, sampled by the sweeping worker.

use crate::stats::{rfc3339, Counts};
use serde::{Deserialize, Serialize};

pub const HISTORY_KEY: &str = "headcount.v1.history";
pub const MINUTES: u64 = 60;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Minutes since the epoch.
    pub minute: u64,
    /// Peak within the minute.
    pub active_users: u32,
    pub active_sessions: u32,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub samples: Vec<Sample>,
}

impl History {
    /// Folds a sample taken at `now_ms` into its minute (keeping the minute's peak)
    /// and drops minutes older than an hour.
    pub fn record(&mut self, counts: &Counts, now_ms: u64) {
        let minute = now_ms / 60_000;
        let users = u32::try_from(counts.active_users).unwrap_or(u32::MAX);
        let sessions = u32::try_from(counts.active_sessions).unwrap_or(u32::MAX);
        match self.samples.iter_mut().find(|s| s.minute == minute) {
            Some(s) => {
                s.active_users = s.active_users.max(users);
                s.active_sessions = s.active_sessions.max(sessions);
            }
            None => self.samples.push(Sample {
                minute,
                active_users: users,
                active_sessions: sessions,
            }),
        }
        self.samples.retain(|s| s.minute + MINUTES > minute);
    }

    /// The last 60 minutes, oldest first, zeros where nothing was sampled.
    pub fn view(&self, now_ms: u64) -> HistoryView {
        let current = now_ms / 60_000;
        let minutes = (current + 1 - MINUTES..=current)
            .map(|m| {
                let s = self
                    .samples
                    .iter()
                    .find(|s| s.minute == m)
                    .copied()
                    .unwrap_or_default();
                MinuteView {
                    minute: rfc3339(m * 60_000),
                    active_users: s.active_users,
                    active_sessions: s.active_sessions,
                }
            })
            .collect();
        HistoryView { minutes }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MinuteView {
    pub minute: String,
    pub active_users: u32,
    pub active_sessions: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryView {
    pub minutes: Vec<MinuteView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(users: usize) -> Counts {
        Counts {
            active_users: users,
            active_sessions: users,
            ..Counts::default()
        }
    }

    #[test]
    fn keeps_the_peak_per_minute_for_an_hour() {
        let mut h = History::default();
        let t0 = 1_000 * 60_000;
        h.record(&counts(2), t0);
        h.record(&counts(5), t0 + 10_000);
        h.record(&counts(1), t0 + 20_000);
        h.record(&counts(3), t0 + 60_000);
        let v = h.view(t0 + 60_000);
        assert_eq!(v.minutes.len(), 60);
        assert_eq!(v.minutes[59].active_users, 3);
        assert_eq!(v.minutes[58].active_users, 5);
        assert_eq!(v.minutes[0].active_users, 0);
        assert_eq!(v.minutes[59].minute, rfc3339(t0 + 60_000));
        // An hour later the old minutes are gone.
        h.record(&counts(0), t0 + 61 * 60_000);
        assert_eq!(h.samples.len(), 1);
    }
}
