//! Cron expressions and the well-known aliases, matched against local wall-clock time.
//!
//! Field parsing and naive (zone-less) matching are delegated to `croner`; what is ours is the
//! alias table of SPEC §2, the strict 5-field rule, error messages that name the offending field,
//! and the one fact the daylight-saving rules need: whether the hour field is a wildcard or step.

use std::fmt;

use chrono::{Datelike, NaiveDateTime};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// What a schedule is, which decides its default offset and its parameter format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `@hourly`: `0 * * * *`, parameters like `2016-04-01T14`.
    Hourly,
    /// `@daily`: `0 0 * * *`, parameters like `2016-04-01`.
    Daily,
    /// `@weekly`: `0 0 * * MON`, parameters are the Monday's date.
    Weekly,
    /// `@monthly`: `0 0 1 * *`, parameters like `2016-04`.
    Monthly,
    /// `@yearly`: `0 0 1 1 *`, parameters like `2016`.
    Yearly,
    /// Any other cron expression, parameters carry minutes and seconds.
    Cron,
}

impl Kind {
    /// The cron expression an alias stands for; `None` for a plain cron expression.
    pub fn alias_expression(self) -> Option<&'static str> {
        match self {
            Kind::Hourly => Some("0 * * * *"),
            Kind::Daily => Some("0 0 * * *"),
            Kind::Weekly => Some("0 0 * * MON"),
            Kind::Monthly => Some("0 0 1 * *"),
            Kind::Yearly => Some("0 0 1 1 *"),
            Kind::Cron => None,
        }
    }

    /// Recognises an alias: case-insensitive, with or without `@`, singular or plural.
    pub fn from_alias(text: &str) -> Option<Kind> {
        let word = text.strip_prefix('@').unwrap_or(text).to_ascii_lowercase();
        Some(match word.as_str() {
            "hourly" | "hours" | "hour" => Kind::Hourly,
            "daily" | "days" | "day" => Kind::Daily,
            "weekly" | "weeks" | "week" => Kind::Weekly,
            "monthly" | "months" | "month" => Kind::Monthly,
            "yearly" | "years" | "year" | "annually" => Kind::Yearly,
            _ => return None,
        })
    }
}

/// The names of the five fields, in order, as error messages use them.
const FIELD_NAMES: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
/// The values each field accepts, for error messages.
const FIELD_RANGES: [&str; 5] = ["0-59", "0-23", "1-31", "1-12 or JAN-DEC", "0-7 or SUN-SAT"];

/// A parsed schedule expression: an alias or a 5-field cron expression.
#[derive(Clone)]
pub struct CronExpr {
    kind: Kind,
    expression: String,
    cron: Cron,
    hour_wildcard: bool,
}

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronExpr")
            .field("kind", &self.kind)
            .field("expression", &self.expression)
            .finish()
    }
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.expression == other.expression
    }
}

/// The parser for 5-field expressions. `dom_and_dow` follows Vixie cron: when either day
/// field starts with `*` (`*`, `*/2`), a day must match both fields; only when both are
/// restricted does either suffice.
fn parser(dom_and_dow: bool) -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .dom_and_dow(dom_and_dow)
        .build()
}

impl CronExpr {
    /// Parses `spec.schedule`. The error is the reason only; callers add the field name.
    pub fn parse(text: &str) -> Result<CronExpr, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".to_string());
        }
        let (kind, expression) = match Kind::from_alias(trimmed) {
            Some(kind) => {
                // Every alias has an expression: only `Kind::Cron` lacks one.
                let expression = kind.alias_expression().unwrap_or_default();
                (kind, expression.to_string())
            }
            None if trimmed.starts_with('@') => {
                return Err(format!(
                    "unknown alias {trimmed:?}: expected @hourly, @daily, @weekly, @monthly or @yearly"
                ));
            }
            None => (
                Kind::Cron,
                trimmed.split_whitespace().collect::<Vec<_>>().join(" "),
            ),
        };
        let fields: Vec<&str> = expression.split(' ').collect();
        if fields.len() != 5 {
            return Err(format!("expected 5 fields, got {}", fields.len()));
        }
        let parser = parser(fields[2].starts_with('*') || fields[4].starts_with('*'));
        let cron = match parser.parse(&expression) {
            Ok(cron) => cron,
            Err(whole) => return Err(explain_field_error(&parser, &fields, &whole.to_string())),
        };
        // A pattern such as `0 0 30 2 *` parses but never fires: refuse it up front rather
        // than let a workflow wait forever.
        let probe = chrono::NaiveDate::from_ymd_opt(2000, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .unwrap_or_default();
        if cron.find_next_occurrence(&probe, false).is_err() {
            return Err(format!("{expression:?} never matches a date"));
        }
        let hour = fields[1];
        Ok(CronExpr {
            kind,
            hour_wildcard: hour.contains('*') || hour.contains('/'),
            expression,
            cron,
        })
    }

    /// Alias or plain cron.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The 5-field expression (an alias expanded).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Whether the hour field is a wildcard or a step, which selects the DST behaviour.
    pub fn hour_is_wildcard(&self) -> bool {
        self.hour_wildcard
    }

    /// The first matching wall-clock time strictly after `t` (or at `t` when `inclusive`).
    pub fn next_naive(&self, t: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        let (shifted, cycles) = into_search_range(t)?;
        let found = self.cron.find_next_occurrence(&shifted, inclusive).ok()?;
        shift_cycles(found, cycles)
    }

    /// The last matching wall-clock time strictly before `t` (or at `t` when `inclusive`).
    pub fn previous_naive(&self, t: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        let (shifted, cycles) = into_search_range(t)?;
        let found = self
            .cron
            .find_previous_occurrence(&shifted, inclusive)
            .ok()?;
        shift_cycles(found, cycles)
    }
}

/// Days in 400 Gregorian years: a whole number of weeks, so dates, leap days and weekdays
/// repeat exactly every 400 years.
const CYCLE_DAYS: i64 = 146_097;

/// `croner` searches only up to year 5000 (and answered a search from 9999 with a match in
/// 5000). Moving `t` by whole 400-year cycles into 2000–2399 keeps the calendar identical and
/// leaves centuries of room either way; the answer is moved back by the same cycles.
fn into_search_range(t: NaiveDateTime) -> Option<(NaiveDateTime, i64)> {
    let cycles = i64::from(t.year() - 2000).div_euclid(400);
    Some((shift_cycles(t, -cycles)?, cycles))
}

fn shift_cycles(t: NaiveDateTime, cycles: i64) -> Option<NaiveDateTime> {
    t.checked_add_signed(chrono::Duration::try_days(cycles.checked_mul(CYCLE_DAYS)?)?)
}

/// Finds which field made the whole expression fail by parsing each one alone.
fn explain_field_error(parser: &CronParser, fields: &[&str], whole: &str) -> String {
    for (index, field) in fields.iter().enumerate() {
        let mut alone = ["*"; 5];
        alone[index] = field;
        if let Err(err) = parser.parse(&alone.join(" ")) {
            let detail = err.to_string();
            let detail = detail
                .strip_prefix("Component error: ")
                .or_else(|| detail.strip_prefix("Pattern contains illegal characters: "))
                .unwrap_or(&detail)
                .trim_end_matches('.')
                .to_lowercase();
            return format!(
                "{} field {field:?}: {detail} (allowed: {})",
                FIELD_NAMES[index], FIELD_RANGES[index]
            );
        }
    }
    format!("invalid cron expression: {whole}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_case_insensitive_with_or_without_at() {
        for (text, kind) in [
            ("@hourly", Kind::Hourly),
            ("HOURS", Kind::Hourly),
            ("@Daily", Kind::Daily),
            ("days", Kind::Daily),
            ("@weekly", Kind::Weekly),
            ("weeks", Kind::Weekly),
            ("monthly", Kind::Monthly),
            ("@MONTHS", Kind::Monthly),
            ("@yearly", Kind::Yearly),
            ("years", Kind::Yearly),
            ("@annually", Kind::Yearly),
        ] {
            let expr = CronExpr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(expr.kind(), kind, "{text}");
            assert_eq!(Some(expr.expression()), kind.alias_expression());
        }
    }

    #[test]
    fn plain_cron_is_kind_cron_even_when_it_equals_an_alias() {
        let expr = CronExpr::parse("0 * * * *").unwrap();
        assert_eq!(expr.kind(), Kind::Cron);
        assert!(expr.hour_is_wildcard());
        assert!(!CronExpr::parse("30 2 * * *").unwrap().hour_is_wildcard());
        assert!(CronExpr::parse("0 */2 * * *").unwrap().hour_is_wildcard());
        assert!(
            CronExpr::parse("0 1-23/2 * * *")
                .unwrap()
                .hour_is_wildcard()
        );
        assert!(!CronExpr::parse("0 1,5 * * *").unwrap().hour_is_wildcard());
    }

    #[test]
    fn invalid_expressions_name_the_field_and_reason() {
        for (text, expected) in [
            ("0 * * * * *", "expected 5 fields, got 6"),
            ("* * *", "expected 5 fields, got 3"),
            ("", "must not be empty"),
            (
                "61 * * * *",
                "minute field \"61\": number out of bounds (allowed: 0-59)",
            ),
            ("0 24 * * *", "hour field \"24\""),
            ("0 0 0 * *", "day-of-month field \"0\""),
            ("0 0 * 13 *", "month field \"13\""),
            ("0 0 * * 8", "day-of-week field \"8\""),
            ("*/0 * * * *", "minute field \"*/0\": step cannot be zero"),
            ("x * * * *", "minute field \"x\""),
            ("@fortnightly", "unknown alias"),
            ("0 0 30 2 *", "never matches a date"),
        ] {
            let err = CronExpr::parse(text).expect_err(text);
            assert!(
                err.contains(expected),
                "{text:?}: got {err:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn day_fields_follow_vixie_cron() {
        let at = |d: u32| {
            chrono::NaiveDate::from_ymd_opt(2024, 1, d)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .unwrap()
        };
        // Both restricted: either matches (the 1st, and every Monday).
        let either = CronExpr::parse("0 0 1 * MON").unwrap();
        assert_eq!(either.next_naive(at(1), false), Some(at(8)));
        // `*/2` starts with `*`: both must match (odd days that are Mondays).
        let both = CronExpr::parse("0 0 */2 * MON").unwrap();
        assert_eq!(both.next_naive(at(1), true), Some(at(1)));
        assert_eq!(both.next_naive(at(1), false), Some(at(15)));
        // A plain `*` day-of-month leaves day-of-week alone.
        let weekly = CronExpr::parse("0 0 * * MON").unwrap();
        assert_eq!(weekly.next_naive(at(1), false), Some(at(8)));
    }

    #[test]
    fn matches_are_found_up_to_year_9999() {
        let at = |y: i32, m: u32, d: u32, h: u32| {
            chrono::NaiveDate::from_ymd_opt(y, m, d)
                .and_then(|d| d.and_hms_opt(h, 0, 0))
                .unwrap()
        };
        let hourly = CronExpr::parse("@hourly").unwrap();
        let last = at(9999, 12, 31, 23);
        assert_eq!(hourly.next_naive(last, true), Some(last));
        assert_eq!(
            hourly.previous_naive(last, false),
            Some(at(9999, 12, 31, 22))
        );
        assert_eq!(hourly.next_naive(at(9999, 12, 31, 22), false), Some(last));
        // Weekdays are right far from croner's range: 9999-12-31 is a Friday.
        let fridays = CronExpr::parse("0 0 * * FRI").unwrap();
        assert_eq!(
            fridays.previous_naive(at(10000, 1, 1, 0), false),
            Some(at(9999, 12, 31, 0))
        );
        // Crossing a 400-year boundary keeps leap days: 6000 is a leap year (divisible by 400).
        let leap = CronExpr::parse("0 0 29 2 *").unwrap();
        assert_eq!(
            leap.next_naive(at(5999, 3, 1, 0), false),
            Some(at(6000, 2, 29, 0))
        );
        assert_eq!(
            leap.previous_naive(at(6000, 3, 1, 0), false),
            Some(at(6000, 2, 29, 0))
        );
    }

    #[test]
    fn names_lists_ranges_and_steps_parse() {
        for text in [
            "*/15 1-5/2 * jan-mar 7",
            "0 9 * * MON-FRI",
            "5,35 */3 1,15 * *",
            "0 0 * * sun",
        ] {
            CronExpr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }
}
