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
    /// or date-time read in --time-zone).
    #[arg(long, conflicts_with = "after")]
    pub from: Option<String>,
    /// List partitions whose trigger instant is strictly after this time (same forms as
    /// --from). Default: now, so the first line is the partition the controller fires next.
    #[arg(long)]
    pub after: Option<String>,
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
    let instant = |flag: &'static str, text: &str| {
        DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| schedule.parse_instant(text))
            .map_err(|err| invalid(flag, err.to_string()))
    };
    if args.from.is_some() && args.after.is_some() {
        return Err(invalid("from", "cannot be combined with --after"));
    }
    // The first partition listed: by logical instant (--from), or by trigger instant
    // (--after, default now), which is how the controller finds its next trigger.
    let first = match (&args.from, &args.after) {
        (Some(text), _) => schedule.next_after(instant("from", text)?),
        (None, Some(text)) => schedule.first_due_after(instant("after", text)?),
        (None, None) => schedule.first_due_after(now),
    };
    let mut partitions = Vec::with_capacity(args.count);
    let logicals = std::iter::successors(first, |p| schedule.next_after(*p));
    for logical in logicals.take(args.count) {
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
            after: None,
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
    fn after_is_strict_on_the_trigger_instant() {
        let mut a = args("@hourly", "UTC", None, "", 2);
        a.from = None;
        a.after = Some("2016-04-01T15:00:00Z".into());
        let out = compute(&a, Utc::now()).unwrap();
        // Partition T14 is triggered at 15:00 exactly, which is not after 15:00.
        assert_eq!(out[0].parameter, "2016-04-01T15");
        assert_eq!(rfc3339(out[0].trigger_at), "2016-04-01T16:00:00Z");
    }

    #[test]
    fn the_default_starts_at_the_next_trigger() {
        // At 02:19 an hourly workflow's next run is partition 02:00, triggered at 03:00.
        let mut a = args("@hourly", "UTC", None, "", 2);
        a.from = None;
        let now = "2024-05-01T02:19:00Z".parse().unwrap();
        let out = compute(&a, now).unwrap();
        assert_eq!(out[0].parameter, "2024-05-01T02");
        assert_eq!(rfc3339(out[0].trigger_at), "2024-05-01T03:00:00Z");
        assert_eq!(out[1].parameter, "2024-05-01T03");
    }

    #[test]
    fn from_and_after_exclude_each_other() {
        let mut a = args("@hourly", "UTC", None, "2016-04-01", 1);
        a.after = Some("2016-04-01".into());
        let err = compute(&a, Utc::now()).unwrap_err().to_string();
        assert_eq!(err, "--from: cannot be combined with --after");
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
            (
                PreviewArgs {
                    from: None,
                    after: Some("soon".into()),
                    ..args("@daily", "UTC", None, "", 1)
                },
                "--after: cannot parse",
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

    /// The default preview's first line is the `status.nextTrigger` the controller's plan
    /// computes at the same instant, for a workflow in its steady state (created a while ago
    /// and reconciled since).
    mod agrees_with_the_controller {
        use super::*;
        use charon_core::resources::{Workflow, WorkflowSpec};
        use chrono::Duration;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        use proptest::prelude::*;

        const SCHEDULES: &[&str] = &[
            "@hourly",
            "daily",
            "@weekly",
            "monthly",
            "@yearly",
            "*/15 * * * *",
            "30 2 * * *",
            "0 */3 * * MON-FRI",
            "45 1,13 1,15 * *",
        ];
        const ZONES: &[&str] = &[
            "UTC",
            "Europe/Stockholm",
            "America/New_York",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
        ];
        const OFFSETS: &[Option<&str>] = &[
            None,
            Some("PT0S"),
            Some("PT1H"),
            Some("-PT30M"),
            Some("P1DT2H"),
            Some("PT90M"),
            Some("P1M"),
        ];

        fn workflow(
            schedule: &str,
            zone: &str,
            offset: Option<&str>,
            created: DateTime<Utc>,
        ) -> Workflow {
            let spec: WorkflowSpec = serde_json::from_value(serde_json::json!({
                "schedule": schedule,
                "timeZone": zone,
                "offset": offset,
                "template": {"image": "busybox"},
            }))
            .expect("test spec");
            let mut wf = Workflow::new("wf", spec);
            wf.metadata.generation = Some(1);
            wf.metadata.creation_timestamp = Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(created.timestamp()).expect("in range"),
            ));
            wf
        }

        /// `status.nextTrigger` after the controller reconciled at creation and at `now`.
        fn next_trigger(
            wf: &mut Workflow,
            created: DateTime<Utc>,
            now: DateTime<Utc>,
        ) -> Partition {
            wf.status = Some(
                charon_core::workflow::plan(
                    wf,
                    charon_core::validate::Policy::PERMISSIVE,
                    0,
                    created,
                )
                .status,
            );
            loop {
                let plan = charon_core::workflow::plan(
                    wf,
                    charon_core::validate::Policy::PERMISSIVE,
                    0,
                    now,
                );
                wf.status = Some(plan.status);
                // A long catch-up is planned in batches: the next one follows at once.
                if plan.requeue_at != Some(now) {
                    break;
                }
            }
            let next = wf
                .status
                .as_ref()
                .and_then(|s| s.next_trigger.clone())
                .expect("a next trigger");
            Partition {
                logical_time: next.logical_time,
                trigger_at: next.trigger_at,
                parameter: next.parameter,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn first_line_is_the_next_trigger(
                schedule in prop::sample::select(SCHEDULES),
                zone in prop::sample::select(ZONES),
                offset in prop::sample::select(OFFSETS),
                now_s in 946_684_800i64..2_082_758_400,
                age_s in 0i64..2 * 86_400,
                on_a_trigger in any::<bool>(),
            ) {
                let mut now = DateTime::from_timestamp(now_s, 0).expect("in range");
                let a = PreviewArgs {
                    schedule: schedule.into(),
                    time_zone: zone.into(),
                    offset: offset.map(String::from),
                    from: None,
                    after: None,
                    count: 2,
                    output: PreviewFormat::Json,
                };
                if on_a_trigger {
                    // Exactly at a trigger instant, where "after" must be strict.
                    now = compute(&a, now).expect("preview")[0].trigger_at;
                }
                let created = now - Duration::seconds(age_s);
                let mut wf = workflow(schedule, zone, offset, created);
                let want = next_trigger(&mut wf, created, now);
                let got = compute(&a, now).expect("preview");
                prop_assert_eq!(&got[0], &want);
                prop_assert!(got[0].trigger_at > now);
            }
        }
    }
}
