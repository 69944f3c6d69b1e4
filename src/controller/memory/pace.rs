//! How busy the operator is starting and ending runs, measured by the writes that do it.
//!
//! Some status writes only show progress: an attempt that is still running, a trigger whose
//! runs have not ended. They are held back for a few seconds in case the run ends first, so
//! one write records both. While the operator is busy (thousands of workflows due at the same
//! instant, thousands of runs ending), they are held back longer, up to
//! [`BUSY_PROGRESS_WITHIN`]: the API server's capacity goes to the writes that make runs
//! happen, and a burst of runs costs one status write per run instead of two.

use std::time::{Duration, Instant};

/// Writes per second that start or end runs (instance and Job creates, state changes) from
/// which the operator counts as busy.
pub const BUSY_WRITES_PER_SECOND: u32 = 20;

/// How long a progress-only status write may be held back while the operator is busy: past
/// the end of the runs of a large burst (100,000 runs due at once end within five minutes of
/// their trigger on 2 cores), so each of them is still written once.
pub const BUSY_PROGRESS_WITHIN: Duration = Duration::from_secs(600);

/// How long the operator counts as busy after [`BUSY_WRITES_PER_SECOND`] writes within one
/// second: long enough to carry a burst over a pause (a relist of tens of thousands of
/// objects, an API server slow to answer under the burst).
pub const BUSY_LINGER: Duration = Duration::from_secs(60);

/// Counts the writes that start or end runs, over a sliding second of wall-clock time.
#[derive(Default)]
pub struct Pace(std::sync::Mutex<Counts>);

/// The times of the latest writes (at most [`BUSY_WRITES_PER_SECOND`]), and until when the
/// operator is busy.
#[derive(Default)]
struct Counts {
    latest: std::collections::VecDeque<Instant>,
    busy_until: Option<Instant>,
}

impl Pace {
    /// Counts one write that starts or ends a run (not a progress-only write).
    pub fn wrote(&self) {
        self.wrote_at(Instant::now());
    }

    /// How long a progress-only write may be held back: `quiet` normally, longer when busy.
    pub fn progress_within(&self, quiet: Duration) -> Duration {
        if self.busy_at(Instant::now()) {
            quiet.max(BUSY_PROGRESS_WITHIN)
        } else {
            quiet
        }
    }

    fn wrote_at(&self, now: Instant) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        counts.latest.push_back(now);
        if counts.latest.len() > BUSY_WRITES_PER_SECOND as usize {
            counts.latest.pop_front();
        }
        // Busy when the last BUSY_WRITES_PER_SECOND writes all fell within one second.
        let full = counts.latest.len() == BUSY_WRITES_PER_SECOND as usize;
        let within = counts
            .latest
            .front()
            .is_some_and(|first| now.saturating_duration_since(*first) < Duration::from_secs(1));
        if full && within {
            counts.busy_until = Some(now + BUSY_LINGER);
        }
    }

    fn busy_at(&self, now: Instant) -> bool {
        let counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        counts.busy_until.is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_from_many_writes_within_a_second_until_it_lingers_out() {
        let pace = Pace::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(!pace.busy_at(start), "nothing written");
        // Writes spread out never make the operator busy.
        for i in 0..2 * BUSY_WRITES_PER_SECOND {
            pace.wrote_at(at(u64::from(i) * 100));
        }
        assert!(!pace.busy_at(at(4_000)), "ten writes a second");
        for i in 0..BUSY_WRITES_PER_SECOND - 1 {
            pace.wrote_at(at(5_000 + u64::from(i)));
        }
        assert!(!pace.busy_at(at(5_100)), "one short of the rate");
        pace.wrote_at(at(5_200));
        assert!(pace.busy_at(at(5_300)));
        // A pause in the burst: still busy.
        let linger = u64::try_from(BUSY_LINGER.as_millis()).unwrap_or(u64::MAX);
        assert!(pace.busy_at(at(5_200 + linger - 1)));
        assert!(!pace.busy_at(at(5_200 + linger)), "quiet after the linger");
        // Any second counts, not only whole ones from the first write.
        let later = 5_200 + linger + 10_000;
        for i in 0..BUSY_WRITES_PER_SECOND {
            pace.wrote_at(at(later + 90 * u64::from(i)));
        }
        assert!(!pace.busy_at(at(later + 1_800)), "20 writes over 1.71 s");
        for i in 0..BUSY_WRITES_PER_SECOND / 2 {
            pace.wrote_at(at(later + 2_900 + u64::from(i)));
        }
        for i in 0..BUSY_WRITES_PER_SECOND / 2 {
            pace.wrote_at(at(later + 3_100 + u64::from(i)));
        }
        assert!(pace.busy_at(at(later + 3_200)), "20 writes within 0.21 s");
    }

    #[test]
    fn progress_waits_longer_only_when_busy() {
        let pace = Pace::default();
        let quiet = Duration::from_secs(5);
        assert_eq!(pace.progress_within(quiet), quiet);
        for _ in 0..BUSY_WRITES_PER_SECOND {
            pace.wrote();
        }
        assert_eq!(pace.progress_within(quiet), BUSY_PROGRESS_WITHIN);
    }
}
