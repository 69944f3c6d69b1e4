//! Where the controllers get the time from: the system clock, or in tests and benchmarks a
//! clock that can be moved forward so days of schedule pass in seconds.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};

/// A time source.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Changes whenever the clock jumps, so the controllers look at everything again (as
    /// they would have had the time passed); `None` for clocks that only move forward evenly.
    fn jumps(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system clock shifted by an adjustable amount.
#[derive(Debug)]
pub struct ShiftedClock {
    offset_ms: AtomicI64,
    jumps: tokio::sync::watch::Sender<u64>,
}

impl Default for ShiftedClock {
    fn default() -> Self {
        ShiftedClock {
            offset_ms: AtomicI64::new(0),
            jumps: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl ShiftedClock {
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
        self.jumps.send_modify(|n| *n += 1);
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }

    fn jumps(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.jumps.subscribe())
    }
}

/// A Kubernetes timestamp as the time type the controllers and views compute with.
pub fn chrono_of(t: k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
}
