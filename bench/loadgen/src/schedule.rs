//! When request `i` is due, and whether it carries a cookie: pure arithmetic on
//! the request's index, so any connection task can take any index.

use std::time::Duration;

/// Requests at a constant rate: request `i` is due `i / rate` seconds after the
/// start; the first `warmup` ones are sent but not measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub rate: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    pub fn new(rate: f64, warmup: Duration, duration: Duration) -> Result<Schedule, String> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!(
                "--rate must be a positive number of requests per second, not {rate}"
            ));
        }
        let count = |d: Duration| (d.as_secs_f64() * rate).round() as u64;
        let warmup = count(warmup);
        let measured = count(duration);
        if measured == 0 {
            return Err("--duration × --rate gives no request to measure".into());
        }
        Ok(Schedule {
            rate,
            warmup,
            total: warmup + measured,
        })
    }

    /// How long after the start request `i` is due.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// When measuring starts (the first measured request is due).
    pub fn measured_from(&self) -> Duration {
        self.offset(self.warmup)
    }

    /// When the last request is due.
    pub fn end(&self) -> Duration {
        self.offset(self.total)
    }

    pub fn measured(&self, i: u64) -> bool {
        i >= self.warmup
    }

    pub fn measured_count(&self) -> u64 {
        self.total - self.warmup
    }
}

/// Which requests carry a session cookie: like bench/load.lua, an accumulator
/// gains `share` per request and a request carries a cookie each time it
/// reaches 1 (so of `n` requests, ⌊n × share⌋ do), the cookies taken in turn.
/// In integer parts per million, so the pattern is exact.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    per_million: u64,
    cookies: u64,
}

const MILLION: u64 = 1_000_000;

impl Mix {
    pub fn new(share: f64, cookies: usize) -> Result<Mix, String> {
        if !(0.0..=1.0).contains(&share) {
            return Err(format!("--auth-share must be between 0 and 1, not {share}"));
        }
        if share > 0.0 && cookies == 0 {
            return Err("--auth-share above 0 needs --cookies with at least one value".into());
        }
        let per_million = (share * MILLION as f64).round() as u64;
        Ok(Mix {
            per_million,
            cookies: cookies as u64,
        })
    }

    /// The cookie (index into the list) request `i` carries, if any.
    pub fn cookie(&self, i: u64) -> Option<usize> {
        if self.cookies == 0 {
            return None;
        }
        let before = i * self.per_million / MILLION;
        let after = (i + 1) * self.per_million / MILLION;
        (after > before).then_some((before % self.cookies) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_due_at_i_over_rate() {
        let s = Schedule::new(4000.0, Duration::from_secs(1), Duration::from_secs(2)).unwrap();
        assert_eq!((s.warmup, s.total, s.measured_count()), (4000, 12000, 8000));
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_micros(250));
        assert_eq!(s.offset(4000), Duration::from_secs(1));
        assert_eq!(s.measured_from(), Duration::from_secs(1));
        assert_eq!(s.end(), Duration::from_secs(3));
        assert!(!s.measured(3999) && s.measured(4000));
    }

    #[test]
    fn a_schedule_needs_a_rate_and_a_request() {
        assert!(Schedule::new(0.0, Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Schedule::new(f64::NAN, Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Schedule::new(1.0, Duration::ZERO, Duration::from_millis(100)).is_err());
    }

    #[test]
    fn the_cookie_pattern_is_load_lua_s_accumulator() {
        // load.lua with share 0.8: acc 0.8 (anonymous), 1.6 -> cookie, 1.4 -> cookie, ...
        let mix = Mix::new(0.8, 3).unwrap();
        let pattern: Vec<_> = (0..10).map(|i| mix.cookie(i)).collect();
        assert_eq!(
            pattern,
            [
                None,
                Some(0),
                Some(1),
                Some(2),
                Some(0),
                None,
                Some(1),
                Some(2),
                Some(0),
                Some(1)
            ]
        );
        let n = 100_000;
        assert_eq!((0..n).filter(|&i| mix.cookie(i).is_some()).count(), 80_000);
        let half = Mix::new(0.5, 7).unwrap();
        assert_eq!((0..1001).filter(|&i| half.cookie(i).is_some()).count(), 500);
    }

    #[test]
    fn shares_of_none_and_all() {
        let none = Mix::new(0.0, 0).unwrap();
        assert!((0..100).all(|i| none.cookie(i).is_none()));
        let all = Mix::new(1.0, 4).unwrap();
        assert_eq!(
            (0..6).map(|i| all.cookie(i)).collect::<Vec<_>>(),
            [Some(0), Some(1), Some(2), Some(3), Some(0), Some(1)]
        );
        assert!(Mix::new(0.5, 0).is_err());
        assert!(Mix::new(1.5, 3).is_err());
    }
}
