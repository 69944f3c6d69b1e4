//! Partitions as text (SPEC §2, §3): rendering parameters, parsing them back leniently for
//! ad-hoc triggers and backfills, and the `{}` substitution in container arguments.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde::Serialize;
use thiserror::Error;

use crate::schedule::{Kind, Schedule};

/// One partition of a schedule: its logical instant, when it is triggered, and its parameter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Partition {
    /// The partition's logical instant.
    #[serde(serialize_with = "serialize_rfc3339")]
    pub logical_time: DateTime<Utc>,
    /// When the partition is triggered (logical instant + offset).
    #[serde(serialize_with = "serialize_rfc3339")]
    pub trigger_at: DateTime<Utc>,
    /// The partition rendered as text, as the workload sees it.
    pub parameter: String,
}

/// Formats an instant as RFC 3339 in UTC with a `Z` and no fractional seconds when there are
/// none, the form every Charon timestamp uses.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn serialize_rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// Why a parameter string was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ParameterError {
    /// The text is not a date or date-time Charon understands.
    #[error(
        "cannot parse {0:?} as a partition: expected yyyy, yyyy-MM, yyyy-MM-dd or yyyy-MM-ddTHH[:mm[:ss]] optionally followed by Z or an offset like +02:00"
    )]
    Syntax(String),
    /// The text parses but names no real date or time.
    #[error("{0:?} is not a valid date or time")]
    OutOfRange(String),
    /// The partition, or when it is triggered, lies outside years 1970 to 9999 (SPEC §2).
    #[error(
        "{0:?} is outside the supported range: partitions and their trigger instants must lie in years 1970 to 9999"
    )]
    OutsideRange(String),
    /// No partition of the schedule lies at or before the instant.
    #[error("no partition of the schedule at or before {0:?}")]
    NoPartition(String),
}

impl Schedule {
    /// The partition at logical instant `logical` (assumed aligned).
    pub fn partition(&self, logical: DateTime<Utc>) -> Option<Partition> {
        Some(Partition {
            logical_time: logical,
            trigger_at: self.trigger_at(logical)?,
            parameter: self.parameter(logical),
        })
    }

    /// Renders a partition instant as its parameter (SPEC §2): in UTC the alias formats and
    /// `…:00Z` for plain cron; in other zones local dates, or local date-times with their
    /// UTC offset, so that every partition of a workflow has a distinct parameter.
    pub fn parameter(&self, logical: DateTime<Utc>) -> String {
        let zone = self.zone();
        let local = logical.with_timezone(
            &FixedOffset::east_opt(
                i32::try_from(zone.offset_at(logical).num_seconds()).unwrap_or(0),
            )
            // Offsets from the tz database are within ±24h, which FixedOffset accepts.
            .unwrap_or(FixedOffset::east_opt(0).expect("zero offset is valid")),
        );
        match (self.kind(), zone.is_utc()) {
            (Kind::Daily | Kind::Weekly, _) => local.format("%Y-%m-%d").to_string(),
            (Kind::Monthly, _) => local.format("%Y-%m").to_string(),
            (Kind::Yearly, _) => local.format("%Y").to_string(),
            (Kind::Hourly, true) => local.format("%Y-%m-%dT%H").to_string(),
            (Kind::Hourly, false) => local.format("%Y-%m-%dT%H%:z").to_string(),
            (Kind::Cron, true) => local.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            (Kind::Cron, false) => local.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        }
    }

    /// Parses a parameter leniently (SPEC §3) and aligns it: the text is read as a date, hour,
    /// minute or second, with `Z` or an offset or else in the workflow's zone, and moved back
    /// to the last partition at or before it.
    pub fn parse_parameter(&self, text: &str) -> Result<DateTime<Utc>, ParameterError> {
        let instant = self.parse_instant(text)?;
        let logical = self
            .align_at_or_before(instant)
            .ok_or_else(|| ParameterError::NoPartition(text.trim().to_string()))?;
        let inside = crate::schedule::in_supported_range(logical)
            && self
                .trigger_at(logical)
                .is_some_and(crate::schedule::in_supported_range);
        if inside {
            Ok(logical)
        } else {
            Err(ParameterError::OutsideRange(text.trim().to_string()))
        }
    }

    /// Parses a date or date-time leniently without aligning it: an explicit `Z` or offset is
    /// honoured, otherwise the wall-clock time is read in the workflow's zone.
    pub fn parse_instant(&self, text: &str) -> Result<DateTime<Utc>, ParameterError> {
        let (naive, offset) = parse_lenient(text)?;
        Ok(match offset {
            Some(offset) => (naive - chrono::Duration::seconds(i64::from(offset))).and_utc(),
            None => self.zone().resolve(naive),
        })
    }
}

/// Splits `text` into a wall-clock time and an optional UTC offset in seconds.
fn parse_lenient(text: &str) -> Result<(NaiveDateTime, Option<i32>), ParameterError> {
    let trimmed = text.trim();
    let syntax = || ParameterError::Syntax(trimmed.to_string());
    let out_of_range = || ParameterError::OutOfRange(trimmed.to_string());
    let mut rest = trimmed;

    let year = take_digits(&mut rest, 4).ok_or_else(syntax)?;
    let mut month = 1;
    let mut day = 1;
    let mut full_date = false;
    if let Some(after) = rest.strip_prefix('-') {
        rest = after;
        month = take_digits(&mut rest, 2).ok_or_else(syntax)?;
        if let Some(after) = rest.strip_prefix('-') {
            rest = after;
            day = take_digits(&mut rest, 2).ok_or_else(syntax)?;
            full_date = true;
        }
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month, day).ok_or_else(out_of_range)?;

    let (mut hour, mut minute, mut second, mut nanos) = (0, 0, 0, 0);
    let mut offset = None;
    if let Some(after) = rest
        .strip_prefix('T')
        .or_else(|| rest.strip_prefix('t'))
        .or_else(|| rest.strip_prefix(' '))
    {
        if !full_date {
            // A time needs a full date before it.
            return Err(syntax());
        }
        rest = after;
        hour = take_digits(&mut rest, 2).ok_or_else(syntax)?;
        if let Some(after) = rest.strip_prefix(':') {
            rest = after;
            minute = take_digits(&mut rest, 2).ok_or_else(syntax)?;
            if let Some(after) = rest.strip_prefix(':') {
                rest = after;
                second = take_digits(&mut rest, 2).ok_or_else(syntax)?;
                if let Some(after) = rest.strip_prefix('.').or_else(|| rest.strip_prefix(',')) {
                    rest = after;
                    let digits =
                        rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                    if digits == 0 || digits > 9 {
                        return Err(syntax());
                    }
                    let fraction = &rest[..digits];
                    nanos = fraction.parse::<u32>().map_err(|_| syntax())?
                        * 10u32.pow(9 - digits as u32);
                    rest = &rest[digits..];
                }
            }
        }
        offset = parse_offset(&mut rest).map_err(|()| syntax())?;
    }
    if !rest.is_empty() {
        return Err(syntax());
    }
    let time =
        NaiveTime::from_hms_nano_opt(hour, minute, second, nanos).ok_or_else(out_of_range)?;
    Ok((date.and_time(time), offset))
}

/// Reads exactly `n` ASCII digits from the front of `rest`.
fn take_digits(rest: &mut &str, n: usize) -> Option<u32> {
    let head = rest.get(..n)?;
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    *rest = &rest[n..];
    head.parse().ok()
}

/// Reads `Z`, `±HH`, `±HHMM` or `±HH:MM`; `Ok(None)` when nothing is there.
fn parse_offset(rest: &mut &str) -> Result<Option<i32>, ()> {
    if let Some(after) = rest.strip_prefix('Z').or_else(|| rest.strip_prefix('z')) {
        *rest = after;
        return Ok(Some(0));
    }
    let sign = match rest.as_bytes().first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Ok(None),
    };
    *rest = &rest[1..];
    let hours = take_digits(rest, 2).ok_or(())?;
    let minutes = if let Some(after) = rest.strip_prefix(':') {
        *rest = after;
        take_digits(rest, 2).ok_or(())?
    } else {
        take_digits(rest, 2).unwrap_or(0)
    };
    if hours > 23 || minutes > 59 {
        return Err(());
    }
    Ok(Some(sign * (hours * 3600 + minutes * 60) as i32))
}

/// Replaces every element that is exactly `{}` with the parameter (SPEC §2); anything else,
/// `--date={}` included, stays literal.
pub fn substitute(items: &[String], parameter: &str) -> Vec<String> {
    items
        .iter()
        .map(|item| {
            if item == "{}" {
                parameter.to_string()
            } else {
                item.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn substitution_replaces_whole_elements_only() {
        let args: Vec<String> = ["--hour", "{}", "--date={}", "{}x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            substitute(&args, "2016-04-01T14"),
            ["--hour", "2016-04-01T14", "--date={}", "{}x"]
        );
    }

    #[test]
    fn far_partitions_are_kept_or_refused_never_remapped() {
        let utc = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let hourly = Schedule::new("@hourly", None, None).unwrap();
        assert_eq!(
            hourly.parse_parameter("9999-12-31T22"),
            Ok(utc("9999-12-31T22:00:00Z"))
        );
        assert_eq!(
            hourly.parameter(utc("9999-12-31T22:00:00Z")),
            "9999-12-31T22"
        );
        // Its trigger instant (+PT1H) would be in year 10000.
        assert_eq!(
            hourly.parse_parameter("9999-12-31T23"),
            Err(ParameterError::OutsideRange("9999-12-31T23".into()))
        );
        let plain = Schedule::new("0 * * * *", None, None).unwrap();
        assert_eq!(
            plain.parse_parameter("9999-12-31T23"),
            Ok(utc("9999-12-31T23:00:00Z"))
        );
        assert_eq!(
            hourly.parse_parameter("1969-12-31T23"),
            Err(ParameterError::OutsideRange("1969-12-31T23".into()))
        );
        let daily = Schedule::new("@daily", None, None).unwrap();
        assert_eq!(
            daily.parse_parameter("7000-06-15"),
            Ok(utc("7000-06-15T00:00:00Z"))
        );
    }

    #[test]
    fn lenient_forms_parse() {
        let hourly = Schedule::new("@hourly", None, None).unwrap();
        for (text, want) in [
            ("2024-01-02T05:30", "2024-01-02T05:00:00Z"),
            ("2024-01-02T05", "2024-01-02T05:00:00Z"),
            ("2024-01-02 05:59:59", "2024-01-02T05:00:00Z"),
            ("2024-01-02t05:10:00.250Z", "2024-01-02T05:00:00Z"),
            ("2024-01-02T07:30+02:00", "2024-01-02T05:00:00Z"),
            ("2024-01-02T07+0200", "2024-01-02T05:00:00Z"),
            ("2024-01-02T00:30-01", "2024-01-02T01:00:00Z"),
            ("2024-01-02", "2024-01-02T00:00:00Z"),
            ("2024-01", "2024-01-01T00:00:00Z"),
            ("2024", "2024-01-01T00:00:00Z"),
        ] {
            assert_eq!(hourly.parse_parameter(text), Ok(utc(want)), "{text}");
        }
    }

    #[test]
    fn lenient_parse_refuses_garbage_with_a_reason() {
        let hourly = Schedule::new("@hourly", None, None).unwrap();
        for text in [
            "",
            "yesterday",
            "2024-1-2",
            "2024-01-02T5",
            "2024-01-02T05:30+25:00",
            "2024-01-02T05Q",
        ] {
            let err = hourly.parse_parameter(text).unwrap_err();
            assert!(matches!(err, ParameterError::Syntax(_)), "{text}: {err}");
        }
        for text in ["2024-02-30", "2024-13", "2024-01-02T24"] {
            let err = hourly.parse_parameter(text).unwrap_err();
            assert!(
                matches!(err, ParameterError::OutOfRange(_)),
                "{text}: {err}"
            );
        }
    }
}
