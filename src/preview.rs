//! `charon preview`: the next partitions of a schedule, exactly as the controller computes them,
//! so a user can check a schedule before applying it (SPEC §2).

use chrono::{DateTime, Utc};
use thiserror::Error;

use charon_core::partition::{Partition, rfc3339};
use charon_core::schedule::{Schedule, ScheduleError};

/// Output format of `charon preview`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PreviewFormat {
    /// Aligned columns for a terminal.
    #[default]
    Table,
    /// A JSON array of `{logicalTime, triggerAt, parameter}`.
    Json,
}

/// Arguments of `charon preview`.
#[derive(Clone, Debug, clap::Args)]
pub struct PreviewArgs {
    /// Cron expression (5 fields) or alias such as @hourly.
    #[arg(long)]
    pub schedule: String,
    /// IANA time zone the cron fields are read in.
    #[arg(long, default_value = "UTC")]
    pub time_zone: String,
    /// ISO-8601 offset from partition to trigger (default: the alias's period, PT0S for cron).
    #[arg(long, allow_hyphen_values = true)]
    pub offset: Option<String>,
    /// List partitions whose logical instant is strictly after this time (RFC 3339, or a date
    /// or date-time read in --time-zone). Default: now.
    #[arg(long)]
    pub from: Option<String>,
    /// How many partitions to list.
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = PreviewFormat::Table)]
    pub output: PreviewFormat,
}

/// Most partitions one preview lists, so a typo cannot ask for billions.
pub const MAX_COUNT: usize = 100_000;

/// Why a preview could not be computed; each names the flag at fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PreviewError {
    /// A flag's value is invalid.
    #[error("--{flag}: {reason}")]
    InvalidFlag {
        /// The flag, without dashes.
        flag: &'static str,
        /// Why its value was refused.
        reason: String,
    },
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> PreviewError {
    PreviewError::InvalidFlag {
        flag,
        reason: reason.into(),
    }
}

/// Computes the preview at `now` and renders it.
pub fn run(args: &PreviewArgs, now: DateTime<Utc>) -> Result<String, PreviewError> {
    let partitions = compute(args, now)?;
    Ok(match args.output {
        PreviewFormat::Json => {
            // Serialising plain strings cannot fail.
            let mut out = serde_json::to_string_pretty(&partitions).unwrap_or_default();
            out.push('\n');
            out
        }
        PreviewFormat::Table => table(&partitions),
    })
}

/// The partitions a preview lists.
pub fn compute(args: &PreviewArgs, now: DateTime<Utc>) -> Result<Vec<Partition>, PreviewError> {
    let schedule = Schedule::new(
        &args.schedule,
        Some(&args.time_zone),
        args.offset.as_deref(),
    )
    .map_err(|err| match err {
        ScheduleError::Schedule(reason) => invalid("schedule", reason),
        ScheduleError::TimeZone(reason) => invalid("time-zone", reason),
        ScheduleError::Offset(reason) => invalid("offset", reason),
    })?;
    if args.count > MAX_COUNT {
        return Err(invalid(
            "count",
            format!("at most {MAX_COUNT}, got {}", args.count),
        ));
    }
    let from = match &args.from {
        None => now,
        Some(text) => DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| schedule.parse_instant(text))
            .map_err(|err| invalid("from", err.to_string()))?,
    };
    let mut partitions = Vec::with_capacity(args.count);
    for logical in schedule.partitions_after(from).take(args.count) {
        let partition = schedule.partition(logical).ok_or_else(|| {
            invalid(
                "offset",
                format!("trigger time of {} is out of range", rfc3339(logical)),
            )
        })?;
        partitions.push(partition);
    }
    Ok(partitions)
}

fn table(partitions: &[Partition]) -> String {
    let rows: Vec<[String; 3]> = partitions
        .iter()
        .map(|p| {
            [
                rfc3339(p.logical_time),
                rfc3339(p.trigger_at),
                p.parameter.clone(),
            ]
        })
        .collect();
    let header = ["LOGICAL TIME", "TRIGGER AT", "PARAMETER"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header.map(String::from)).chain(rows) {
        let line = format!(
            "{:<w0$}   {:<w1$}   {}",
            row[0],
            row[1],
            row[2],
            w0 = widths[0],
            w1 = widths[1]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(
        schedule: &str,
        zone: &str,
        offset: Option<&str>,
        from: &str,
        count: usize,
    ) -> PreviewArgs {
        PreviewArgs {
            schedule: schedule.into(),
            time_zone: zone.into(),
            offset: offset.map(String::from),
            from: Some(from.into()),
            count,
            output: PreviewFormat::Json,
        }
    }

    #[test]
    fn json_has_the_contract_keys() {
        let out = run(
            &args("@hourly", "UTC", None, "2016-04-01T13:30:00Z", 2),
            Utc::now(),
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!([
                {"logicalTime": "2016-04-01T14:00:00Z", "triggerAt": "2016-04-01T15:00:00Z", "parameter": "2016-04-01T14"},
                {"logicalTime": "2016-04-01T15:00:00Z", "triggerAt": "2016-04-01T16:00:00Z", "parameter": "2016-04-01T15"},
            ])
        );
    }

    #[test]
    fn from_is_strict() {
        let out = compute(
            &args("@hourly", "UTC", None, "2016-04-01T14:00:00Z", 1),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(out[0].parameter, "2016-04-01T15");
    }

    #[test]
    fn errors_name_the_flag() {
        for (a, want) in [
            (
                args("0 * * * * *", "UTC", None, "2016-04-01", 1),
                "--schedule: expected 5 fields, got 6",
            ),
            (
                args("@daily", "Nowhere/City", None, "2016-04-01", 1),
                "--time-zone: unknown time zone",
            ),
            (
                args("@daily", "UTC", Some("1 day"), "2016-04-01", 1),
                "--offset: ",
            ),
            (
                args("@daily", "UTC", None, "last tuesday", 1),
                "--from: cannot parse",
            ),
            (
                args("@daily", "UTC", None, "2016-04-01", MAX_COUNT + 1),
                "--count: at most",
            ),
        ] {
            let err = run(&a, Utc::now()).unwrap_err().to_string();
            assert!(err.starts_with(want), "got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn table_is_aligned() {
        let mut a = args("@daily", "UTC", None, "2016-04-01T00:00:00Z", 2);
        a.output = PreviewFormat::Table;
        assert_eq!(
            run(&a, Utc::now()).unwrap(),
            "LOGICAL TIME           TRIGGER AT             PARAMETER\n\
             2016-04-02T00:00:00Z   2016-04-03T00:00:00Z   2016-04-02\n\
             2016-04-03T00:00:00Z   2016-04-04T00:00:00Z   2016-04-03\n"
        );
    }
}
