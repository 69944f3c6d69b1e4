//! Signed ISO-8601 durations (`P1DT2H`, `-PT30M`) and how they move a partition to its trigger.

use std::fmt;

use chrono::{DateTime, Days, Duration, Months, NaiveDateTime, Utc};

use super::zone::Zone;

/// A signed ISO-8601 duration split into its calendar part (applied in the local calendar)
/// and its time part (applied as exact elapsed time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IsoDuration {
    negative: bool,
    months: u32,
    days: u64,
    time: Duration,
}

impl IsoDuration {
    /// The zero duration.
    pub const ZERO: IsoDuration = IsoDuration {
        negative: false,
        months: 0,
        days: 0,
        time: Duration::zero(),
    };

    /// Parses `[+-]PnYnMnWnDTnHnMnS` (fractional seconds allowed). The error is the reason only.
    pub fn parse(text: &str) -> Result<IsoDuration, String> {
        let trimmed = text.trim();
        let (negative, body) = match trimmed.as_bytes().first() {
            Some(b'-') => (true, &trimmed[1..]),
            Some(b'+') => (false, &trimmed[1..]),
            _ => (false, trimmed),
        };
        let invalid =
            || format!("{trimmed:?} is not an ISO-8601 duration (examples: PT1H, P1DT2H, -PT30M)");
        // Refuse the bare designators the grammar allows but that say nothing.
        if !body.starts_with('P') || body == "P" || body.ends_with('T') {
            return Err(invalid());
        }
        let (rest, parsed) =
            iso8601::parsers::parse_duration(body.as_bytes()).map_err(|_| invalid())?;
        if !rest.is_empty() {
            return Err(invalid());
        }
        let duration = match parsed {
            iso8601::Duration::Weeks(w) => IsoDuration {
                negative,
                months: 0,
                days: u64::from(w) * 7,
                time: Duration::zero(),
            },
            iso8601::Duration::YMDHMS {
                year,
                month,
                day,
                hour,
                minute,
                second,
                millisecond,
            } => {
                let months = year
                    .checked_mul(12)
                    .and_then(|m| m.checked_add(month))
                    .ok_or_else(|| format!("{trimmed:?} is too large"))?;
                let time = Duration::hours(i64::from(hour))
                    + Duration::minutes(i64::from(minute))
                    + Duration::seconds(i64::from(second))
                    + Duration::milliseconds(i64::from(millisecond));
                IsoDuration {
                    negative,
                    months,
                    days: u64::from(day),
                    time,
                }
            }
        };
        Ok(duration)
    }

    /// Whether the duration is zero.
    pub fn is_zero(&self) -> bool {
        self.months == 0 && self.days == 0 && self.time.is_zero()
    }

    /// Whether the duration is negative (and not zero).
    pub fn is_negative(&self) -> bool {
        self.negative && !self.is_zero()
    }

    /// The duration as exact elapsed time, counting a day as 24 hours and a month as 30 days;
    /// for timeouts and TTLs, where calendar precision does not matter. `None` when it does not
    /// fit a [`Duration`] (far beyond the supported range, see [`IsoDuration::check_range`]).
    pub fn approximate(&self) -> Option<Duration> {
        let days = i64::from(self.months)
            .checked_mul(30)?
            .checked_add(i64::try_from(self.days).ok()?)?;
        let magnitude = Duration::try_days(days)?.checked_add(&self.time)?;
        Some(if self.negative { -magnitude } else { magnitude })
    }

    /// Refuses a duration that leads outside the supported range (SPEC §2: instants between
    /// years 1970 and 9999) from every instant in it: applied to the range's far edge, it must
    /// land inside the range, both in the calendar and as approximate elapsed time. The error
    /// is the reason only; callers add the field name.
    pub fn check_range(&self) -> Result<(), String> {
        let (first, end) = (super::SUPPORTED_START, super::SUPPORTED_END);
        let edge = if self.negative {
            end - Duration::seconds(1)
        } else {
            first
        };
        let within = |t: Option<DateTime<Utc>>| t.is_some_and(|t| t >= first && t < end);
        let exact = self.add_to(edge, &Zone::UTC);
        let approximate = self.approximate().and_then(|d| edge.checked_add_signed(d));
        if within(exact) && within(approximate) {
            Ok(())
        } else {
            Err(format!(
                "{self} is outside the supported range: it must keep instants of years 1970 to 9999 within them"
            ))
        }
    }

    /// Adds the duration to instant `t` (SPEC §2): the calendar part in zone's wall-clock
    /// calendar (month-aware; a gap moves forward by its length, an overlap takes its first
    /// occurrence), then the time part as exact elapsed time. `None` on overflow.
    pub fn add_to(&self, t: DateTime<Utc>, zone: &Zone) -> Option<DateTime<Utc>> {
        let shifted = if self.months == 0 && self.days == 0 {
            t
        } else {
            zone.resolve(self.shift_calendar(zone.local(t))?)
        };
        if self.negative {
            shifted.checked_sub_signed(self.time)
        } else {
            shifted.checked_add_signed(self.time)
        }
    }

    /// Subtracts the duration from instant `t`: the inverse of [`IsoDuration::add_to`] up to
    /// month-end clamping and gaps, which is enough to seed a search.
    pub fn subtract_from(&self, t: DateTime<Utc>, zone: &Zone) -> Option<DateTime<Utc>> {
        let inverse = IsoDuration {
            negative: !self.negative,
            ..*self
        };
        let unshifted = if inverse.negative {
            t.checked_sub_signed(self.time)?
        } else {
            t.checked_add_signed(self.time)?
        };
        if self.months == 0 && self.days == 0 {
            return Some(unshifted);
        }
        Some(zone.resolve(inverse.shift_calendar(zone.local(unshifted))?))
    }

    fn shift_calendar(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        if self.negative {
            local
                .checked_sub_months(Months::new(self.months))?
                .checked_sub_days(Days::new(self.days))
        } else {
            local
                .checked_add_months(Months::new(self.months))?
                .checked_add_days(Days::new(self.days))
        }
    }
}

impl fmt::Display for IsoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("PT0S");
        }
        if self.negative {
            f.write_str("-")?;
        }
        f.write_str("P")?;
        let (years, months) = (self.months / 12, self.months % 12);
        for (value, unit) in [
            (u64::from(years), 'Y'),
            (u64::from(months), 'M'),
            (self.days, 'D'),
        ] {
            if value > 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        if !self.time.is_zero() {
            f.write_str("T")?;
            let total = self.time.num_milliseconds();
            let (h, m, ms) = (total / 3_600_000, (total / 60_000) % 60, total % 60_000);
            if h > 0 {
                write!(f, "{h}H")?;
            }
            if m > 0 {
                write!(f, "{m}M")?;
            }
            if ms > 0 {
                if ms % 1000 == 0 {
                    write!(f, "{}S", ms / 1000)?;
                } else {
                    write!(f, "{}.{:03}S", ms / 1000, ms % 1000)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn parses_signed_durations() {
        for (text, shown) in [
            ("PT1H", "PT1H"),
            ("P1D", "P1D"),
            ("P1W", "P7D"),
            ("P1M", "P1M"),
            ("P1Y", "P1Y"),
            ("P1DT2H", "P1DT2H"),
            ("-PT30M", "-PT30M"),
            ("+PT90S", "PT1M30S"),
            ("PT0S", "PT0S"),
            ("P1Y2M3DT4H5M6S", "P1Y2M3DT4H5M6S"),
        ] {
            let d = IsoDuration::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(d.to_string(), shown, "{text}");
        }
    }

    #[test]
    fn huge_durations_are_refused_not_panicked_on() {
        for text in [
            "P300000000Y",
            "-P300000000Y",
            "P1000000Y",
            "P8031Y",
            "PT4000000000H",
        ] {
            let d = IsoDuration::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let err = d.check_range().expect_err(text);
            assert!(err.contains("outside the supported range"), "{text}: {err}");
        }
        assert_eq!(
            IsoDuration::parse("P300000000Y").unwrap().approximate(),
            None
        );
        for text in ["P8000Y", "-P8000Y", "P7D", "PT1H", "PT0S"] {
            let d = IsoDuration::parse(text).unwrap();
            assert_eq!(d.check_range(), Ok(()), "{text}");
            assert!(d.approximate().is_some(), "{text}");
        }
        assert_eq!(
            IsoDuration::parse("-PT30M").unwrap().approximate(),
            Some(Duration::minutes(-30))
        );
    }

    #[test]
    fn refuses_garbage_with_the_reason() {
        for text in [
            "", "P", "PT", "1H", "P1H", "PT1D", "P1DX", "--PT1H", "hourly",
        ] {
            let err = IsoDuration::parse(text).expect_err(text);
            assert!(err.contains("ISO-8601"), "{text}: {err}");
        }
    }

    #[test]
    fn calendar_part_is_local_and_month_aware() {
        let utc_zone = Zone::UTC;
        let d = IsoDuration::parse("P1DT2H").unwrap();
        // SPEC §2: @daily with P1DT2H: partition 2017-06-29 triggers at 2017-06-30T02:00Z.
        assert_eq!(
            d.add_to(utc("2017-06-29T00:00:00Z"), &utc_zone),
            Some(utc("2017-06-30T02:00:00Z"))
        );
        let month = IsoDuration::parse("P1M").unwrap();
        assert_eq!(
            month.add_to(utc("2024-01-31T00:00:00Z"), &utc_zone),
            Some(utc("2024-02-29T00:00:00Z"))
        );
        let stockholm = Zone::parse("Europe/Stockholm").unwrap();
        // A day across spring-forward is 23 hours of elapsed time.
        let day = IsoDuration::parse("P1D").unwrap();
        assert_eq!(
            day.add_to(utc("2024-03-30T23:00:00Z"), &stockholm),
            Some(utc("2024-03-31T22:00:00Z"))
        );
        // PT24H is exact elapsed time: 00:00+01:00 + 24h = 01:00+02:00.
        let hours = IsoDuration::parse("PT24H").unwrap();
        assert_eq!(
            hours.add_to(utc("2024-03-30T23:00:00Z"), &stockholm),
            Some(utc("2024-03-31T23:00:00Z"))
        );
        // Landing in the gap (02:30 on 2024-03-31) moves forward by the gap: 03:30+02:00.
        assert_eq!(
            day.add_to(utc("2024-03-30T01:30:00Z"), &stockholm),
            Some(utc("2024-03-31T01:30:00Z"))
        );
        let negative = IsoDuration::parse("-PT30M").unwrap();
        assert_eq!(
            negative.add_to(utc("2024-01-01T10:00:00Z"), &utc_zone),
            Some(utc("2024-01-01T09:30:00Z"))
        );
        assert_eq!(
            negative.subtract_from(utc("2024-01-01T09:30:00Z"), &utc_zone),
            Some(utc("2024-01-01T10:00:00Z"))
        );
    }
}
