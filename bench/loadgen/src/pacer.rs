//! Lets requests go at their due times.
//!
//! A thread sleeps until each request of the schedule is due and then adds one
//! permit to a semaphore; a connection task takes a permit, then the next
//! index. One wake-up of that thread and one of the runtime per request: a
//! timer per request (tokio's rounds up to the millisecond, and a timer thread
//! taking registrations wakes once more for each) would cost more and be
//! coarser.

use crate::schedule::Schedule;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Starts the pacing thread. After the last request it adds `extra` more
/// permits, one for each task still waiting, so that every task wakes, finds
/// no index left and ends.
pub fn start(schedule: Schedule, t0: Instant, extra: usize) -> Result<Arc<Semaphore>, String> {
    let permits = Arc::new(Semaphore::new(0));
    let released = permits.clone();
    std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || run(schedule, t0, extra, &released))
        .map_err(|e| format!("cannot start the pacing thread: {e}"))?;
    Ok(permits)
}

fn run(schedule: Schedule, t0: Instant, extra: usize, permits: &Semaphore) {
    crate::timer::tighten_slack();
    let mut i = 0;
    while i < schedule.total {
        let now = Instant::now();
        let due = t0 + schedule.offset(i);
        if due > now {
            std::thread::sleep(due - now);
            continue;
        }
        // Everything due by now (several, when this thread woke late).
        let first = i;
        while i < schedule.total && t0 + schedule.offset(i) <= now {
            i += 1;
        }
        permits.add_permits(usize::try_from(i - first).unwrap_or(usize::MAX));
    }
    permits.add_permits(extra);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_permit_per_request_at_its_due_time_then_one_per_waiter() {
        let s = Schedule::new(1000.0, Duration::ZERO, Duration::from_millis(20)).unwrap();
        let t0 = Instant::now() + Duration::from_millis(5);
        let permits = start(s, t0, 3).unwrap();
        for i in 0..20 {
            permits.acquire().await.unwrap().forget();
            assert!(Instant::now() >= t0 + s.offset(i), "request {i} went early");
        }
        for _ in 0..3 {
            permits.acquire().await.unwrap().forget();
        }
        assert!(Instant::now() < t0 + Duration::from_secs(1));
    }
}
