//! Schedule math (SPEC §2): which instants are partitions, and when each is triggered.
//!
//! Everything here is pure: the current time is always an argument, so tests can walk years
//! of schedules in milliseconds and the controller, `charon preview` and backfills agree.

mod cron;
mod offset;
mod zone;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Timelike, Utc};
use thiserror::Error;

pub use self::cron::{CronExpr, Kind};
pub use self::offset::IsoDuration;
pub use self::zone::Zone;

/// Bound on how far an instant's wall-clock time can move relative to its neighbours' across a
/// zone transition. Real transitions shift clocks by at most two hours.
const TRANSITION_SLACK: Duration = Duration::hours(3);

/// The first instant of the supported range (SPEC §2): 1970-01-01T00:00:00Z.
pub const SUPPORTED_START: DateTime<Utc> = DateTime::<Utc>::UNIX_EPOCH;

/// The first instant after the supported range: 10000-01-01T00:00:00Z.
pub const SUPPORTED_END: DateTime<Utc> = match DateTime::from_timestamp(253_402_300_800, 0) {
    Some(t) => t,
    // 253402300800 s after the epoch is year 10000, well within chrono's range.
    None => DateTime::<Utc>::MAX_UTC,
};

/// Whether `t` lies in the supported range, years 1970 to 9999 (SPEC §2).
pub fn in_supported_range(t: DateTime<Utc>) -> bool {
    (SUPPORTED_START..SUPPORTED_END).contains(&t)
}

/// Which schedule input was wrong, with the reason.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// `spec.schedule` does not parse.
    #[error("spec.schedule: {0}")]
    Schedule(String),
    /// `spec.timeZone` is not an IANA zone.
    #[error("spec.timeZone: {0}")]
    TimeZone(String),
    /// `spec.offset` is not an ISO-8601 duration.
    #[error("spec.offset: {0}")]
    Offset(String),
}

impl ScheduleError {
    /// The reason without the field name, for callers that name the input differently.
    pub fn reason(&self) -> &str {
        match self {
            ScheduleError::Schedule(r) | ScheduleError::TimeZone(r) | ScheduleError::Offset(r) => r,
        }
    }
}

/// A workflow's schedule: which instants are partitions (cron in a zone) and when each is
/// triggered (partition + offset).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    cron: CronExpr,
    zone: Zone,
    offset: IsoDuration,
}

impl Schedule {
    /// Builds a schedule from the three spec fields; `time_zone` and `offset` are optional
    /// (UTC and the alias's default offset).
    pub fn new(
        schedule: &str,
        time_zone: Option<&str>,
        offset: Option<&str>,
    ) -> Result<Schedule, ScheduleError> {
        let cron = CronExpr::parse(schedule).map_err(ScheduleError::Schedule)?;
        let zone = Zone::parse(time_zone.unwrap_or("UTC")).map_err(ScheduleError::TimeZone)?;
        let offset = match offset {
            Some(text) => IsoDuration::parse(text).map_err(ScheduleError::Offset)?,
            None => default_offset(cron.kind()),
        };
        Ok(Schedule { cron, zone, offset })
    }

    /// The cron expression (aliases expanded) and its kind.
    pub fn cron(&self) -> &CronExpr {
        &self.cron
    }

    /// The schedule's kind, which decides the parameter format.
    pub fn kind(&self) -> Kind {
        self.cron.kind()
    }

    /// The time zone cron fields are read in.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// The offset from partition to trigger.
    pub fn offset(&self) -> &IsoDuration {
        &self.offset
    }

    /// The instants at which wall-clock time `n` is a partition, under SPEC §2's
    /// daylight-saving rule (Debian cron): a gap fires once at its end for a specific hour and
    /// not at all for a wildcard or step hour; an overlap fires once (first occurrence) for a
    /// specific hour and twice for a wildcard or step hour.
    fn firings(&self, n: NaiveDateTime) -> [Option<DateTime<Utc>>; 2] {
        let wildcard = self.cron.hour_is_wildcard();
        match self.zone.instants(n) {
            LocalResult::Single(t) => [Some(t), None],
            LocalResult::Ambiguous(first, second) if wildcard => [Some(first), Some(second)],
            LocalResult::Ambiguous(first, _) => [Some(first), None],
            LocalResult::None if wildcard => [None, None],
            LocalResult::None => [Some(self.zone.gap_end(n)), None],
        }
    }

    /// The instant of wall-clock time `n` when it is unambiguous and no zone transition lies
    /// between it and `t` (checked as: same offset at both ends, at most a day apart, as real
    /// zones never change offset twice within a day). Then wall-clock order between the two
    /// equals instant order, and the daylight-saving rules do not apply.
    fn without_transition(&self, t: DateTime<Utc>, n: NaiveDateTime) -> Option<DateTime<Utc>> {
        let LocalResult::Single(x) = self.zone.instants(n) else {
            return None;
        };
        let close = (x - t).abs() <= Duration::days(1);
        (close && self.zone.offset_at(x) == self.zone.offset_at(t)).then_some(x)
    }

    /// The first partition strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.zone.is_utc() {
            // Matches are whole minutes, so the first match after `t`'s minute is after `t`.
            return self
                .cron
                .next_naive(floor_minute(t.naive_utc()), false)
                .map(|n| n.and_utc());
        }
        // Common case: no transition between `t` and the next wall-clock match, so the match's
        // only instant is the answer.
        let fast = self
            .cron
            .next_naive(floor_minute(self.zone.local(t)), false)
            .and_then(|n| self.without_transition(t, n));
        if let Some(x) = fast.filter(|x| *x > t) {
            return Some(x);
        }
        // Wall-clock order and instant order differ only near transitions: start a little
        // before `t`'s wall-clock time and stop once no later wall-clock time can beat the best.
        let mut best: Option<DateTime<Utc>> = None;
        let mut cursor = self
            .cron
            .next_naive(self.zone.local(t) - TRANSITION_SLACK, true);
        while let Some(n) = cursor {
            if let Some(b) = best
                && n > self.zone.local(b) + TRANSITION_SLACK
            {
                break;
            }
            for x in self.firings(n).into_iter().flatten() {
                if x > t && best.is_none_or(|b| x < b) {
                    best = Some(x);
                }
            }
            cursor = self.cron.next_naive(n, false);
        }
        best
    }

    /// The last partition strictly before `t`.
    pub fn previous_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.zone.is_utc() {
            // Matches are whole minutes, so the last match before the minute that ends at or
            // after `t` is before `t`.
            return self
                .cron
                .previous_naive(ceil_minute(t.naive_utc()), false)
                .map(|n| n.and_utc());
        }
        let fast = self
            .cron
            .previous_naive(ceil_minute(self.zone.local(t)), false)
            .and_then(|n| self.without_transition(t, n));
        if let Some(x) = fast.filter(|x| *x < t) {
            return Some(x);
        }
        let mut best: Option<DateTime<Utc>> = None;
        let mut cursor = self
            .cron
            .previous_naive(self.zone.local(t) + TRANSITION_SLACK, true);
        while let Some(n) = cursor {
            if let Some(b) = best
                && n < self.zone.local(b) - TRANSITION_SLACK
            {
                break;
            }
            for x in self.firings(n).into_iter().flatten() {
                if x < t && best.is_none_or(|b| x > b) {
                    best = Some(x);
                }
            }
            cursor = self.cron.previous_naive(n, false);
        }
        best
    }

    /// Whether `t` is a partition instant.
    pub fn is_aligned(&self, t: DateTime<Utc>) -> bool {
        t.checked_sub_signed(Duration::nanoseconds(1))
            .and_then(|before| self.next_after(before))
            == Some(t)
    }

    /// `t` itself when it is a partition, else the last partition before it.
    pub fn align_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.is_aligned(t) {
            Some(t)
        } else {
            self.previous_before(t)
        }
    }

    /// The first partition at or after `t`.
    pub fn align_at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.is_aligned(t) {
            Some(t)
        } else {
            self.next_after(t)
        }
    }

    /// When partition `partition` is triggered: partition + offset (SPEC §2).
    pub fn trigger_at(&self, partition: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.offset.add_to(partition, &self.zone)
    }

    /// The first partition `i` with `trigger_at(i) > now`: where a new workflow starts
    /// (SPEC §3), and the next one due after a trigger at `now`.
    pub fn first_due_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let triggers_after_now = |p: DateTime<Utc>| self.trigger_at(p).is_some_and(|at| at > now);
        // Seed near the answer by undoing the offset, then correct in both directions:
        // trigger_at is non-decreasing in the partition, so the walk ends.
        let seed = self
            .offset
            .subtract_from(now, &self.zone)
            .and_then(|t| self.align_at_or_after(t))?;
        let mut candidate = seed;
        while let Some(previous) = self.previous_before(candidate) {
            if !triggers_after_now(previous) {
                break;
            }
            candidate = previous;
        }
        while !triggers_after_now(candidate) {
            candidate = self.next_after(candidate)?;
        }
        Some(candidate)
    }

    /// Partitions strictly after `t`, oldest first.
    pub fn partitions_after(&self, t: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        std::iter::successors(self.next_after(t), move |p| self.next_after(*p))
    }

    /// Partitions strictly before `t`, newest first (reverse backfills).
    pub fn partitions_before(&self, t: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        std::iter::successors(self.previous_before(t), move |p| self.previous_before(*p))
    }

    /// Partitions in `[start, end)`, oldest first, or newest first when `reverse`.
    pub fn range(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        reverse: bool,
    ) -> Box<dyn Iterator<Item = DateTime<Utc>> + '_> {
        if reverse {
            Box::new(self.partitions_before(end).take_while(move |p| *p >= start))
        } else {
            let from = start - Duration::nanoseconds(1);
            Box::new(self.partitions_after(from).take_while(move |p| *p < end))
        }
    }
}

fn floor_minute(n: NaiveDateTime) -> NaiveDateTime {
    n.with_second(0)
        .and_then(|n| n.with_nanosecond(0))
        .unwrap_or(n)
}

fn ceil_minute(n: NaiveDateTime) -> NaiveDateTime {
    let floor = floor_minute(n);
    if floor == n {
        n
    } else {
        floor + Duration::minutes(1)
    }
}

/// The default offset of SPEC §2's alias table: one period, so a partition runs once its
/// period is over; `PT0S` for plain cron.
pub fn default_offset(kind: Kind) -> IsoDuration {
    let text = match kind {
        Kind::Hourly => "PT1H",
        Kind::Daily => "P1D",
        Kind::Weekly => "P1W",
        Kind::Monthly => "P1M",
        Kind::Yearly => "P1Y",
        Kind::Cron => return IsoDuration::ZERO,
    };
    // The table above holds only valid durations, checked by `default_offsets_parse`.
    IsoDuration::parse(text).unwrap_or(IsoDuration::ZERO)
}

#[cfg(test)]
mod tests;
