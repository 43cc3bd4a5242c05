//! Sleeps precise to tens of microseconds, for the upstream's delay.
//!
//! Tokio's timer rounds every deadline up to its next millisecond tick: a
//! 1 ms upstream would answer in 1–2 ms, spread evenly. One thread instead
//! keeps the pending deadlines in a heap and waits for the earliest with
//! `recv_timeout` (a futex wait). The thread asks for a timer slack of 1 µs
//! instead of Linux's default 50 µs (allowed to root, or with CAP_SYS_NICE;
//! otherwise the default stays).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Deadlines this close are not waited for: the round trip through the
/// thread costs about as much.
const NOT_WORTH_IT: Duration = Duration::from_micros(15);

type Wake = (Instant, oneshot::Sender<()>);

/// A handle on the timer thread; the thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct Timer {
    tx: mpsc::Sender<Wake>,
}

impl Timer {
    pub fn start() -> Result<Timer, String> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("precise-timer".into())
            .spawn(move || run(&rx))
            .map_err(|e| format!("cannot start the timer thread: {e}"))?;
        Ok(Timer { tx })
    }

    /// Returns at `at` (or at once if it is past).
    pub async fn sleep_until(&self, at: Instant) {
        if at.saturating_duration_since(Instant::now()) <= NOT_WORTH_IT {
            return;
        }
        let (done, wait) = oneshot::channel();
        if self.tx.send((at, done)).is_err() {
            // The thread is gone: tokio's coarser timer still waits.
            tokio::time::sleep_until(at.into()).await;
            return;
        }
        // An error means the thread dropped the deadline on its way out: wake anyway.
        let _ = wait.await;
    }
}

struct Pending {
    at: Instant,
    seq: u64,
    done: oneshot::Sender<()>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Reversed: the earliest deadline is the heap's top.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The timer slack of the waiting threads: how late the kernel may end their
/// waits, to batch wake-ups.
const SLACK_NS: &str = "1000";

/// Sets this thread's timer slack to `SLACK_NS`, best effort:
/// `/proc/thread-self` links to `<pid>/task/<tid>`, and
/// `/proc/<tid>/timerslack_ns` is that thread's slack.
pub(crate) fn tighten_slack() {
    if let Ok(link) = std::fs::read_link("/proc/thread-self") {
        if let Some(tid) = link.file_name() {
            let path = std::path::Path::new("/proc")
                .join(tid)
                .join("timerslack_ns");
            let _ = std::fs::write(path, SLACK_NS);
        }
    }
}

fn run(rx: &mpsc::Receiver<Wake>) {
    tighten_slack();
    let mut heap = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|p: &Pending| p.at <= now) {
            if let Some(p) = heap.pop() {
                let _ = p.done.send(());
            }
        }
        let next = match heap.peek() {
            Some(p) => rx.recv_timeout(p.at.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((at, done)) => {
                seq += 1;
                heap.push(Pending { at, seq, done });
            }
            Err(RecvTimeoutError::Timeout) => {}
            // No handle is left, so nobody waits: the heap's senders drop with it.
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_in_deadline_order_and_not_early() {
        let timer = Timer::start().unwrap();
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(6);
        let sooner = t0 + Duration::from_millis(3);
        let (a, b) = tokio::join!(
            async {
                timer.sleep_until(later).await;
                Instant::now()
            },
            async {
                timer.sleep_until(sooner).await;
                Instant::now()
            }
        );
        assert!(a >= later && b >= sooner);
        assert!(b < a);
        // Generous: a loaded test machine may wake the thread late.
        assert!(a - later < Duration::from_millis(50), "{:?}", a - later);
    }
}
