//! IANA time zones and the mapping between wall-clock time and instants.
//!
//! chrono-tz supplies the tz database; the rules for wall-clock times that do not exist
//! (spring-forward gaps) or exist twice (fall-back overlaps) are SPEC §2's and live here.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// Zone names whose partitions are rendered in UTC form (`2016-04-01T14`, `…:00Z`).
const UTC_NAMES: [&str; 8] = [
    "UTC",
    "Etc/UTC",
    "Etc/UCT",
    "UCT",
    "Etc/Universal",
    "Universal",
    "Etc/Zulu",
    "Zulu",
];

/// A workflow's time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zone {
    tz: Tz,
    utc: bool,
}

impl Zone {
    /// UTC, the default zone.
    pub const UTC: Zone = Zone {
        tz: Tz::UTC,
        utc: true,
    };

    /// Parses an IANA zone name (exact spelling, as in the tz database).
    pub fn parse(name: &str) -> Result<Zone, String> {
        let name = name.trim();
        if name.is_empty() {
            return Ok(Zone::UTC);
        }
        let tz: Tz = name.parse().map_err(|_| {
            format!("unknown time zone {name:?}: expected an IANA name such as Europe/Stockholm")
        })?;
        Ok(Zone {
            tz,
            utc: UTC_NAMES.contains(&name),
        })
    }

    /// Whether parameters are rendered in UTC form.
    pub fn is_utc(&self) -> bool {
        self.utc
    }

    /// The IANA name.
    pub fn name(&self) -> &'static str {
        self.tz.name()
    }

    /// The zone's offset from UTC at instant `t`.
    pub fn offset_at(&self, t: DateTime<Utc>) -> Duration {
        if self.utc {
            return Duration::zero();
        }
        let secs = self.tz.offset_from_utc_datetime(&t.naive_utc()).fix();
        Duration::seconds(i64::from(secs.local_minus_utc()))
    }

    /// The wall-clock time at instant `t`.
    pub fn local(&self, t: DateTime<Utc>) -> NaiveDateTime {
        t.naive_utc() + self.offset_at(t)
    }

    /// The instant(s) at which wall-clock time `n` occurs: one, two in an overlap
    /// (earliest first), none in a gap.
    pub fn instants(&self, n: NaiveDateTime) -> LocalResult<DateTime<Utc>> {
        if self.utc {
            return LocalResult::Single(n.and_utc());
        }
        self.tz
            .from_local_datetime(&n)
            .map(|t| t.with_timezone(&Utc))
    }

    /// Resolves a wall-clock time the way offsets and parameters need (SPEC §2): inside an
    /// overlap the first occurrence; inside a gap the time moves forward by the gap's length.
    pub fn resolve(&self, n: NaiveDateTime) -> DateTime<Utc> {
        match self.instants(n) {
            LocalResult::Single(t) => t,
            LocalResult::Ambiguous(first, _) => first,
            // Read with the offset in force before the gap: the result's wall-clock time is
            // `n` plus the gap's length.
            LocalResult::None => n.and_utc() - self.offset_before_gap(n),
        }
    }

    /// The first instant after the gap that contains wall-clock time `n` (the transition).
    pub fn gap_end(&self, n: NaiveDateTime) -> DateTime<Utc> {
        let before = self.offset_before_gap(n);
        let after = self.offset_after_gap(n);
        // The transition T satisfies n - after < T <= n - before; wall-clock time jumps over
        // `n` exactly at T, so search the whole seconds (transitions fall on them) for the
        // first instant whose wall-clock time exceeds `n`.
        let mut lo = (n.and_utc() - after).timestamp(); // local(lo) <= n
        let mut hi = (n.and_utc() - before).timestamp(); // local(hi) > n
        let at = |secs: i64| DateTime::from_timestamp(secs, 0).unwrap_or_default();
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.local(at(mid)) > n {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        at(hi)
    }

    fn offset_before_gap(&self, n: NaiveDateTime) -> Duration {
        // A gap is at most a few hours long and zones change offset at most a few times a
        // year, so a day before `n` read as UTC is safely before the transition.
        self.offset_at(n.and_utc() - Duration::days(1))
    }

    fn offset_after_gap(&self, n: NaiveDateTime) -> Duration {
        self.offset_at(n.and_utc() + Duration::days(1))
    }
}

impl Default for Zone {
    fn default() -> Self {
        Zone::UTC
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn naive(y: i32, m: u32, d: u32, h: u32, min: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(h, min, 0)
            .unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn unknown_zone_is_refused_with_its_name() {
        let err = Zone::parse("Mars/Olympus").unwrap_err();
        assert!(err.contains("Mars/Olympus"), "{err}");
        assert!(Zone::parse("UTC").unwrap().is_utc());
        assert!(Zone::parse("Etc/UTC").unwrap().is_utc());
        assert!(!Zone::parse("Europe/London").unwrap().is_utc());
    }

    #[test]
    fn gap_end_is_the_transition_instant() {
        let z = Zone::parse("Europe/Stockholm").unwrap();
        // 2024-03-31 02:00 -> 03:00 local, at 01:00Z.
        assert_eq!(
            z.gap_end(naive(2024, 3, 31, 2, 30)),
            utc("2024-03-31T01:00:00Z")
        );
        let kolkata_like = Zone::parse("Australia/Lord_Howe").unwrap();
        // 2024-10-06 02:00 -> 02:30 local (+10:30 -> +11:00), at 2024-10-05T15:30Z.
        assert_eq!(
            kolkata_like.gap_end(naive(2024, 10, 6, 2, 10)),
            utc("2024-10-05T15:30:00Z")
        );
    }

    #[test]
    fn resolve_moves_gap_times_forward_and_takes_first_overlap() {
        let z = Zone::parse("Europe/Stockholm").unwrap();
        // 02:30 does not exist; moving forward by the 1h gap gives 03:30+02:00.
        assert_eq!(
            z.resolve(naive(2024, 3, 31, 2, 30)),
            utc("2024-03-31T01:30:00Z")
        );
        // 02:30 exists twice on 2024-10-27; the first is +02:00.
        assert_eq!(
            z.resolve(naive(2024, 10, 27, 2, 30)),
            utc("2024-10-27T00:30:00Z")
        );
    }
}
