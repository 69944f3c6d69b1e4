//! Table tests of SPEC §2/§3's examples, daylight-saving cases in several zones, and property
//! tests that walk ten simulated years.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn schedule(expr: &str, zone: &str, offset: Option<&str>) -> Schedule {
    Schedule::new(expr, Some(zone), offset).unwrap_or_else(|e| panic!("{expr} {zone}: {e}"))
}

/// The next `n` partitions strictly after `from`, as (logical, trigger, parameter) strings.
fn next_n(s: &Schedule, from: &str, n: usize) -> Vec<(String, String, String)> {
    s.partitions_after(utc(from))
        .take(n)
        .map(|p| {
            let part = s.partition(p).unwrap();
            (
                crate::partition::rfc3339(part.logical_time),
                crate::partition::rfc3339(part.trigger_at),
                part.parameter,
            )
        })
        .collect()
}

fn params(s: &Schedule, from: &str, n: usize) -> Vec<String> {
    next_n(s, from, n).into_iter().map(|(_, _, p)| p).collect()
}

fn logicals(s: &Schedule, from: &str, n: usize) -> Vec<String> {
    next_n(s, from, n).into_iter().map(|(l, _, _)| l).collect()
}

#[test]
fn default_offsets_parse() {
    for kind in [
        Kind::Hourly,
        Kind::Daily,
        Kind::Weekly,
        Kind::Monthly,
        Kind::Yearly,
    ] {
        assert!(!default_offset(kind).is_zero(), "{kind:?}");
    }
    assert!(default_offset(Kind::Cron).is_zero());
}

#[test]
fn styx_utc_parameter_formats() {
    let cases = [
        (
            "@hourly",
            "2016-04-01T13:59:00Z",
            "2016-04-01T14:00:00Z",
            "2016-04-01T15:00:00Z",
            "2016-04-01T14",
        ),
        (
            "@daily",
            "2016-03-31T12:00:00Z",
            "2016-04-01T00:00:00Z",
            "2016-04-02T00:00:00Z",
            "2016-04-01",
        ),
        (
            "@weekly",
            "2016-04-01T00:00:00Z",
            "2016-04-04T00:00:00Z",
            "2016-04-11T00:00:00Z",
            "2016-04-04",
        ),
        (
            "@monthly",
            "2016-03-15T00:00:00Z",
            "2016-04-01T00:00:00Z",
            "2016-05-01T00:00:00Z",
            "2016-04",
        ),
        (
            "@yearly",
            "2015-06-01T00:00:00Z",
            "2016-01-01T00:00:00Z",
            "2017-01-01T00:00:00Z",
            "2016",
        ),
        (
            "0 * * * *",
            "2016-04-01T13:59:00Z",
            "2016-04-01T14:00:00Z",
            "2016-04-01T14:00:00Z",
            "2016-04-01T14:00:00Z",
        ),
        (
            "30 14 * * *",
            "2016-04-01T13:59:00Z",
            "2016-04-01T14:30:00Z",
            "2016-04-01T14:30:00Z",
            "2016-04-01T14:30:00Z",
        ),
    ];
    for (expr, from, logical, trigger, parameter) in cases {
        let s = schedule(expr, "UTC", None);
        assert_eq!(
            next_n(&s, from, 1),
            [(
                logical.to_string(),
                trigger.to_string(),
                parameter.to_string()
            )],
            "{expr}"
        );
    }
}

#[test]
fn offset_example_of_the_spec() {
    // @daily, offset P1DT2H, UTC: at 2017-06-30T02:00Z the partition 2017-06-29 is triggered.
    let s = schedule("@daily", "UTC", Some("P1DT2H"));
    let p = s.partition(utc("2017-06-29T00:00:00Z")).unwrap();
    assert_eq!(p.parameter, "2017-06-29");
    assert_eq!(p.trigger_at, utc("2017-06-30T02:00:00Z"));
    assert_eq!(
        s.first_due_after(utc("2017-06-30T01:59:59Z")),
        Some(utc("2017-06-29T00:00:00Z"))
    );
    assert_eq!(
        s.first_due_after(utc("2017-06-30T02:00:00Z")),
        Some(utc("2017-06-30T00:00:00Z"))
    );
}

#[test]
fn negative_and_explicit_offsets() {
    let s = schedule("@hourly", "UTC", Some("-PT30M"));
    assert_eq!(
        next_n(&s, "2016-04-01T13:00:00Z", 1),
        [(
            "2016-04-01T14:00:00Z".into(),
            "2016-04-01T13:30:00Z".into(),
            "2016-04-01T14".into()
        )]
    );
    let cron = schedule("0 12 * * *", "UTC", Some("PT15M"));
    assert_eq!(
        cron.trigger_at(utc("2016-04-01T12:00:00Z")),
        Some(utc("2016-04-01T12:15:00Z"))
    );
    let monthly = schedule("@monthly", "UTC", None);
    assert_eq!(
        monthly.trigger_at(utc("2016-01-01T00:00:00Z")),
        Some(utc("2016-02-01T00:00:00Z"))
    );
}

#[test]
fn first_partition_rule() {
    // An hourly workflow with the default offset created at 10:22 first triggers at 11:00 for …T10.
    let s = schedule("@hourly", "UTC", None);
    let first = s.first_due_after(utc("2024-05-01T10:22:00Z")).unwrap();
    assert_eq!(s.parameter(first), "2024-05-01T10");
    assert_eq!(s.trigger_at(first), Some(utc("2024-05-01T11:00:00Z")));
    // Created exactly at a trigger instant: that partition is not due after now.
    let at = s.first_due_after(utc("2024-05-01T11:00:00Z")).unwrap();
    assert_eq!(s.parameter(at), "2024-05-01T11");
    // Cron with zero offset: the next instant after now.
    let c = schedule("*/5 * * * *", "UTC", None);
    assert_eq!(
        c.first_due_after(utc("2024-05-01T10:22:00Z")),
        Some(utc("2024-05-01T10:25:00Z"))
    );
    // A yearly offset on a daily schedule.
    let y = schedule("@daily", "UTC", Some("P1Y"));
    assert_eq!(
        y.first_due_after(utc("2024-05-01T10:22:00Z")),
        Some(utc("2023-05-02T00:00:00Z"))
    );
}

#[test]
fn alignment_and_lenient_triggers() {
    let hb = schedule("@hourly", "UTC", None);
    assert_eq!(
        hb.parse_parameter("2024-01-02T05:30").unwrap(),
        utc("2024-01-02T05:00:00Z")
    );
    assert_eq!(
        hb.parameter(hb.parse_parameter("2024-01-02T05:30").unwrap()),
        "2024-01-02T05"
    );
    let weekly = schedule("@weekly", "UTC", None);
    assert_eq!(
        weekly.parameter(weekly.parse_parameter("2016-04-06").unwrap()),
        "2016-04-04"
    );
    let monthly = schedule("@monthly", "UTC", None);
    assert_eq!(
        monthly.parameter(monthly.parse_parameter("2016-04-17T10").unwrap()),
        "2016-04"
    );
    let yearly = schedule("@yearly", "UTC", None);
    assert_eq!(
        yearly.parameter(yearly.parse_parameter("2016").unwrap()),
        "2016"
    );
    // Another zone's offset is converted into the workflow's zone before aligning.
    let sthlm = schedule("@daily", "Europe/Stockholm", None);
    assert_eq!(
        sthlm.parameter(sthlm.parse_parameter("2024-06-01T23:30Z").unwrap()),
        "2024-06-02"
    );
    assert!(hb.is_aligned(utc("2024-01-02T05:00:00Z")));
    assert!(!hb.is_aligned(utc("2024-01-02T05:00:01Z")));
    assert_eq!(
        hb.previous_before(utc("2024-01-02T05:00:00Z")),
        Some(utc("2024-01-02T04:00:00Z"))
    );
    assert_eq!(
        hb.previous_before(utc("2024-01-02T05:00:01Z")),
        Some(utc("2024-01-02T05:00:00Z"))
    );
    assert_eq!(
        hb.next_after(utc("2024-01-02T05:00:01Z")),
        Some(utc("2024-01-02T06:00:00Z"))
    );
}

#[test]
fn ranges_forward_and_reverse() {
    let hb = schedule("@hourly", "UTC", None);
    let start = utc("2024-01-01T00:00:00Z");
    let end = utc("2024-01-01T12:00:00Z");
    let forward: Vec<_> = hb.range(start, end, false).collect();
    assert_eq!(forward.len(), 12);
    assert_eq!(forward[0], start);
    assert_eq!(forward[11], utc("2024-01-01T11:00:00Z"));
    let mut reverse: Vec<_> = hb.range(start, end, true).collect();
    reverse.reverse();
    assert_eq!(forward, reverse);
}

// --- Daylight saving (SPEC §2: Debian cron rules) ---

#[test]
fn stockholm_spring_forward_wildcard_hour_skips_the_gap() {
    let s = schedule("@hourly", "Europe/Stockholm", None);
    assert_eq!(
        params(&s, "2024-03-30T23:30:00Z", 4),
        [
            "2024-03-31T01+01:00",
            "2024-03-31T03+02:00",
            "2024-03-31T04+02:00",
            "2024-03-31T05+02:00"
        ]
    );
    let q = schedule("*/30 * * * *", "Europe/Stockholm", None);
    assert_eq!(
        params(&q, "2024-03-31T00:00:00Z", 3),
        [
            "2024-03-31T01:30:00+01:00",
            "2024-03-31T03:00:00+02:00",
            "2024-03-31T03:30:00+02:00"
        ]
    );
}

#[test]
fn stockholm_spring_forward_specific_hour_fires_once_after_the_gap() {
    let s = schedule("30 2 * * *", "Europe/Stockholm", None);
    assert_eq!(
        next_n(&s, "2024-03-30T12:00:00Z", 3),
        [
            (
                "2024-03-31T01:00:00Z".into(),
                "2024-03-31T01:00:00Z".into(),
                "2024-03-31T03:00:00+02:00".into()
            ),
            (
                "2024-04-01T00:30:00Z".into(),
                "2024-04-01T00:30:00Z".into(),
                "2024-04-01T02:30:00+02:00".into()
            ),
            (
                "2024-04-02T00:30:00Z".into(),
                "2024-04-02T00:30:00Z".into(),
                "2024-04-02T02:30:00+02:00".into()
            ),
        ]
    );
    // Every minute of the missing hour collapses onto the one instant after the gap.
    let m = schedule("* 2 * * *", "Europe/Stockholm", None);
    assert_eq!(
        logicals(&m, "2024-03-31T00:58:00Z", 3),
        [
            "2024-03-31T01:00:00Z",
            "2024-04-01T00:00:00Z",
            "2024-04-01T00:01:00Z"
        ]
    );
}

#[test]
fn stockholm_fall_back_wildcard_fires_twice_specific_once() {
    let s = schedule("@hourly", "Europe/Stockholm", None);
    assert_eq!(
        params(&s, "2024-10-26T23:30:00Z", 4),
        [
            "2024-10-27T02+02:00",
            "2024-10-27T02+01:00",
            "2024-10-27T03+01:00",
            "2024-10-27T04+01:00"
        ]
    );
    assert_eq!(
        logicals(&s, "2024-10-26T23:30:00Z", 2),
        ["2024-10-27T00:00:00Z", "2024-10-27T01:00:00Z"]
    );
    let once = schedule("30 2 * * *", "Europe/Stockholm", None);
    assert_eq!(
        logicals(&once, "2024-10-26T12:00:00Z", 2),
        ["2024-10-27T00:30:00Z", "2024-10-28T01:30:00Z"]
    );
    // Steps on the hour count as wildcards: both 02:15s fire.
    let step = schedule("15 */2 * * *", "Europe/Stockholm", None);
    assert_eq!(
        params(&step, "2024-10-26T23:30:00Z", 3),
        [
            "2024-10-27T02:15:00+02:00",
            "2024-10-27T02:15:00+01:00",
            "2024-10-27T04:15:00+01:00"
        ]
    );
    // Minutes interleave across the repeated hour in instant order.
    let quarter = schedule("*/30 * * * *", "Europe/Stockholm", None);
    assert_eq!(
        params(&quarter, "2024-10-26T23:45:00Z", 4),
        [
            "2024-10-27T02:00:00+02:00",
            "2024-10-27T02:30:00+02:00",
            "2024-10-27T02:00:00+01:00",
            "2024-10-27T02:30:00+01:00",
        ]
    );
}

#[test]
fn new_york_daily_and_hourly() {
    // 2024-03-10 02:00 -> 03:00 EST->EDT; 2024-11-03 02:00 -> 01:00 EDT->EST.
    let daily = schedule("@daily", "America/New_York", None);
    assert_eq!(
        next_n(&daily, "2024-03-09T12:00:00Z", 2),
        [
            (
                "2024-03-10T05:00:00Z".into(),
                "2024-03-11T04:00:00Z".into(),
                "2024-03-10".into()
            ),
            (
                "2024-03-11T04:00:00Z".into(),
                "2024-03-12T04:00:00Z".into(),
                "2024-03-11".into()
            ),
        ]
    );
    let hourly = schedule("@hourly", "America/New_York", None);
    assert_eq!(
        params(&hourly, "2024-11-03T04:30:00Z", 3),
        [
            "2024-11-03T01-04:00",
            "2024-11-03T01-05:00",
            "2024-11-03T02-05:00"
        ]
    );
    let at_two = schedule("0 2 * * *", "America/New_York", None);
    assert_eq!(
        params(&at_two, "2024-03-09T12:00:00Z", 2),
        ["2024-03-10T03:00:00-04:00", "2024-03-11T02:00:00-04:00"]
    );
    let one_thirty = schedule("30 1 * * *", "America/New_York", None);
    assert_eq!(
        logicals(&one_thirty, "2024-11-02T12:00:00Z", 2),
        ["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"]
    );
}

#[test]
fn half_hour_zones() {
    // Australia/Adelaide (+09:30/+10:30): 2024-10-06 02:00 -> 03:00; 2024-04-07 03:00 -> 02:00.
    let hourly = schedule("@hourly", "Australia/Adelaide", None);
    assert_eq!(
        params(&hourly, "2024-10-05T15:00:00Z", 3),
        [
            "2024-10-06T01+09:30",
            "2024-10-06T03+10:30",
            "2024-10-06T04+10:30"
        ]
    );
    assert_eq!(
        params(&hourly, "2024-04-06T15:00:00Z", 3),
        [
            "2024-04-07T02+10:30",
            "2024-04-07T02+09:30",
            "2024-04-07T03+09:30"
        ]
    );
    // Asia/Kolkata has no DST: local hours sit at :30 in UTC.
    let kolkata = schedule("@hourly", "Asia/Kolkata", None);
    assert_eq!(
        next_n(&kolkata, "2024-01-01T00:00:00Z", 1),
        [(
            "2024-01-01T00:30:00Z".into(),
            "2024-01-01T01:30:00Z".into(),
            "2024-01-01T06+05:30".into()
        )]
    );
    // Lord Howe shifts by 30 minutes: 02:00 -> 02:30 on 2024-10-06.
    let lh = schedule("15 2 * * *", "Australia/Lord_Howe", None);
    assert_eq!(
        params(&lh, "2024-10-05T00:00:00Z", 1),
        ["2024-10-06T02:30:00+11:00"]
    );
    let lh_wild = schedule("15 * * * *", "Australia/Lord_Howe", None);
    assert_eq!(
        params(&lh_wild, "2024-10-05T14:00:00Z", 2),
        ["2024-10-06T01:15:00+10:30", "2024-10-06T03:15:00+11:00"]
    );
}

#[test]
fn midnight_gap_daily_runs_after_the_gap() {
    // America/Santiago springs forward at 24:00 -> 01:00 (2024-09-08).
    let daily = schedule("@daily", "America/Santiago", None);
    let p = daily.parse_parameter("2024-09-08").unwrap();
    assert_eq!(p, utc("2024-09-08T04:00:00Z"));
    assert_eq!(daily.parameter(p), "2024-09-08");
    assert_eq!(
        params(&daily, "2024-09-07T12:00:00Z", 2),
        ["2024-09-08", "2024-09-09"]
    );
}

#[test]
fn monthly_and_yearly_in_a_zone_use_local_dates() {
    let monthly = schedule("@monthly", "Europe/Stockholm", None);
    assert_eq!(
        next_n(&monthly, "2024-03-15T00:00:00Z", 1),
        [(
            "2024-03-31T22:00:00Z".into(),
            "2024-04-30T22:00:00Z".into(),
            "2024-04".into()
        )]
    );
    let yearly = schedule("@yearly", "America/New_York", None);
    assert_eq!(params(&yearly, "2024-03-15T00:00:00Z", 1), ["2025"]);
}

// --- Properties over ten simulated years ---

const ZONES: [&str; 6] = [
    "UTC",
    "Europe/Stockholm",
    "America/New_York",
    "Australia/Adelaide",
    "Australia/Lord_Howe",
    "America/Santiago",
];
const EXPRESSIONS: [&str; 9] = [
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "@yearly",
    "30 2 * * *",
    "15 */2 * * *",
    "0 1-3 * * 0",
    "45 * 1,15 * *",
];

fn ten_year_start() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..10 * 365 * 24 * 60).prop_map(|m| utc("2020-01-01T00:00:00Z") + Duration::minutes(m))
}

/// How many partitions a property walks from its start, enough to cross several transitions
/// for sub-daily schedules without making the suite slow.
fn walk_len(expr: &str) -> usize {
    match expr {
        "@hourly" | "15 */2 * * *" | "45 * 1,15 * *" => 24 * 200,
        "@yearly" => 10,
        "@monthly" => 60,
        _ => 400,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn partitions_increase_are_aligned_unique_and_round_trip(
        zone in prop::sample::select(&ZONES[..]),
        expr in prop::sample::select(&EXPRESSIONS[..]),
        start in ten_year_start(),
    ) {
        let s = schedule(expr, zone, None);
        let mut seen = std::collections::HashSet::new();
        let mut previous: Option<DateTime<Utc>> = None;
        for p in s.partitions_after(start).take(walk_len(expr)) {
            prop_assert!(p > start);
            if let Some(prev) = previous {
                prop_assert!(p > prev, "{} then {} ({} {})", prev, p, expr, zone);
                prop_assert_eq!(s.previous_before(p), Some(prev), "previous of {}", p);
            }
            prop_assert!(s.is_aligned(p), "{} not aligned", p);
            let parameter = s.parameter(p);
            prop_assert!(seen.insert(parameter.clone()), "duplicate parameter {}", parameter);
            prop_assert_eq!(s.parse_parameter(&parameter), Ok(p), "parse({})", parameter);
            let trigger = s.trigger_at(p).unwrap();
            prop_assert!(trigger >= previous.and_then(|q| s.trigger_at(q)).unwrap_or(trigger));
            previous = Some(p);
        }
    }

    #[test]
    fn next_of_previous_is_the_aligned_partition_at_or_after(
        zone in prop::sample::select(&ZONES[..]),
        expr in prop::sample::select(&EXPRESSIONS[..]),
        t in ten_year_start(),
        seconds in 0i64..60,
    ) {
        let s = schedule(expr, zone, None);
        let t = t + Duration::seconds(seconds);
        let at_or_after = s.align_at_or_after(t).unwrap();
        prop_assert!(at_or_after >= t);
        let previous = s.previous_before(t).unwrap();
        prop_assert!(previous < t);
        prop_assert_eq!(s.next_after(previous), Some(at_or_after));
        // Nothing lies strictly between previous and t, nor between t and at_or_after.
        prop_assert_eq!(s.align_at_or_before(t).map(|p| p == t || p == previous), Some(true));
    }

    #[test]
    fn first_due_after_is_the_first_partition_triggering_after_now(
        zone in prop::sample::select(&ZONES[..]),
        expr in prop::sample::select(&EXPRESSIONS[..]),
        offset in prop::sample::select(&["PT0S", "PT1H", "P1D", "-PT30M", "P1DT2H", "P1M"][..]),
        now in ten_year_start(),
    ) {
        let s = schedule(expr, zone, Some(offset));
        let first = s.first_due_after(now).unwrap();
        prop_assert!(s.trigger_at(first).unwrap() > now);
        let before = s.previous_before(first).unwrap();
        prop_assert!(s.trigger_at(before).unwrap() <= now);
    }
}
