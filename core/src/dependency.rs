//! Dependencies between workflows (SPEC §15): which upstream partitions an instance needs,
//! whether they are all `Done`, and cycles in `spec.dependsOn`.
//!
//! Pure: the adapter looks the needed partitions' instances up in its cache (their names are
//! derived from workflow and parameter, so no list is needed) and feeds their states back in.
//! Partitions are computed from both workflows' schedules, so zones, offsets and
//! daylight-saving days are the schedules' own: a daily Stockholm partition covers 23 hourly
//! UTC partitions in spring and 25 in autumn.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::names;
use crate::partition::rfc3339;
use crate::resources::{InstanceState, PartitionMapping};
use crate::schedule::Schedule;

/// Most upstream partitions one instance may need (`Within` a long period of a frequent
/// schedule): beyond it the instance waits with a message saying so, rather than checking
/// an unbounded number of instances.
pub const MAX_NEEDED: usize = 10_000;

/// How many missing partitions a waiting message names.
const NAMED: usize = 3;

/// One upstream partition an instance needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    /// The upstream workflow.
    pub workflow: String,
    /// The partition's logical instant.
    pub logical: DateTime<Utc>,
    /// The partition as its parameter.
    pub parameter: String,
    /// The name of the upstream instance that runs it.
    pub instance: String,
}

/// The logical instants of the `upstream` partitions that the `downstream` partition at
/// `logical` needs under `mapping`. `Err` says why there are none to wait for.
pub fn partitions(
    downstream: &Schedule,
    upstream: &Schedule,
    mapping: PartitionMapping,
    logical: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, String> {
    let outside = || "is outside the supported range of instants".to_string();
    match mapping {
        PartitionMapping::Same => {
            if upstream.is_aligned(logical) {
                Ok(vec![logical])
            } else {
                Err(format!(
                    "has no partition at {} (partitions: Same needs the same logical instant)",
                    rfc3339(logical)
                ))
            }
        }
        PartitionMapping::Covering => upstream
            .align_at_or_before(logical)
            .map(|p| vec![p])
            .ok_or_else(outside),
        PartitionMapping::Previous => upstream
            .previous_before(logical)
            .map(|p| vec![p])
            .ok_or_else(outside),
        PartitionMapping::Within => {
            let end = downstream.next_after(logical).ok_or_else(outside)?;
            let inside: Vec<DateTime<Utc>> = upstream
                .range(logical, end, false)
                .take(MAX_NEEDED + 1)
                .collect();
            if inside.len() > MAX_NEEDED {
                return Err(format!(
                    "has more than {MAX_NEEDED} partitions between {} and {} (partitions: Within)",
                    rfc3339(logical),
                    rfc3339(end)
                ));
            }
            if inside.is_empty() {
                return Err(format!(
                    "has no partition between {} and {} (partitions: Within)",
                    rfc3339(logical),
                    rfc3339(end)
                ));
            }
            Ok(inside)
        }
    }
}

/// The reverse of [`partitions`]: the partitions of `downstream` that need the `upstream`
/// partition at `logical` under `mapping`, oldest first (at most [`MAX_NEEDED`]).
pub fn dependent_partitions(
    downstream: &Schedule,
    upstream: &Schedule,
    mapping: PartitionMapping,
    logical: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    // Every candidate lies between the downstream period around `logical` and the end of
    // the upstream period that starts at it; each is checked with the forward mapping.
    let (Some(from), Some(to)) = (
        downstream.align_at_or_before(logical),
        upstream.next_after(logical),
    ) else {
        return Vec::new();
    };
    let end = to + chrono::Duration::nanoseconds(1);
    downstream
        .range(from, end, false)
        .take(MAX_NEEDED)
        .filter(|q| {
            partitions(downstream, upstream, mapping, *q).is_ok_and(|ps| ps.contains(&logical))
        })
        .collect()
}

/// [`partitions`] as the instances of workflow `upstream_name` that run them.
pub fn needs(
    downstream: &Schedule,
    upstream_name: &str,
    upstream: &Schedule,
    mapping: PartitionMapping,
    logical: DateTime<Utc>,
) -> Result<Vec<Need>, String> {
    let instants = partitions(downstream, upstream, mapping, logical)
        .map_err(|why| format!("workflow {upstream_name} {why}"))?;
    Ok(instants
        .into_iter()
        .map(|logical| {
            let parameter = upstream.parameter(logical);
            Need {
                workflow: upstream_name.to_string(),
                logical,
                instance: names::instance_name(upstream_name, &parameter),
                parameter,
            }
        })
        .collect())
}

/// Whether every needed partition is `Done`, given each one's instance state (`None`: no such
/// instance). `Err` is the waiting message, naming up to three missing partitions, oldest
/// first.
pub fn verdict(needed: &[(Need, Option<InstanceState>)]) -> Result<(), String> {
    let mut missing: Vec<&(Need, Option<InstanceState>)> = needed
        .iter()
        .filter(|(_, state)| *state != Some(InstanceState::Done))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort_by(|a, b| (a.0.logical, &a.0.workflow).cmp(&(b.0.logical, &b.0.workflow)));
    let named: Vec<String> = missing
        .iter()
        .take(NAMED)
        .map(|(need, state)| {
            let state = state.map_or("not triggered", InstanceState::as_str);
            format!("{} {} ({state})", need.workflow, need.parameter)
        })
        .collect();
    let more = match missing.len().saturating_sub(NAMED) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    Err(format!(
        "waiting for dependencies: {} of {} upstream partitions not Done: {}{more}",
        missing.len(),
        needed.len(),
        named.join(", ")
    ))
}

/// A cycle through `start` in the graph of `spec.dependsOn` (`upstream_of` lists a
/// workflow's upstream workflows), as the path `start → … → start`; `None` when `start` is
/// on no cycle. A workflow that depends on itself is a cycle of one. Only the workflows
/// reachable from `start` are looked at.
pub fn cycle(start: &str, upstream_of: impl Fn(&str) -> Vec<String>) -> Option<Vec<String>> {
    // Depth-first search from `start`, remembering the path to each visited workflow.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut stack: Vec<(String, Vec<String>)> = vec![(start.to_string(), vec![start.to_string()])];
    while let Some((at, path)) = stack.pop() {
        for next in upstream_of(&at) {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(next);
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next, longer));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn schedule(cron: &str, zone: &str) -> Schedule {
        Schedule::new(cron, Some(zone), None).unwrap()
    }

    #[test]
    fn same_covering_previous_and_within_pick_the_partitions_the_spec_names() {
        let hourly = schedule("@hourly", "UTC");
        let daily = schedule("@daily", "UTC");
        let t = utc("2024-05-02T05:00:00Z");
        let same = partitions(&hourly, &hourly, PartitionMapping::Same, t).unwrap();
        assert_eq!(same, [t]);
        let covering = partitions(&hourly, &daily, PartitionMapping::Covering, t).unwrap();
        assert_eq!(covering, [utc("2024-05-02T00:00:00Z")]);
        let previous = partitions(&hourly, &hourly, PartitionMapping::Previous, t).unwrap();
        assert_eq!(previous, [utc("2024-05-02T04:00:00Z")]);
        let previous_day = partitions(
            &daily,
            &daily,
            PartitionMapping::Previous,
            utc("2024-05-02T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(previous_day, [utc("2024-05-01T00:00:00Z")]);
        let day = utc("2024-05-02T00:00:00Z");
        let within = partitions(&daily, &hourly, PartitionMapping::Within, day).unwrap();
        assert_eq!(within.len(), 24);
        assert_eq!(within[0], day);
        assert_eq!(within[23], utc("2024-05-02T23:00:00Z"));
        // Covering at an upstream partition is that partition itself.
        let at_midnight = partitions(&hourly, &daily, PartitionMapping::Covering, day).unwrap();
        assert_eq!(at_midnight, [day]);
    }

    #[test]
    fn same_needs_a_partition_at_the_same_instant() {
        let hourly = schedule("@hourly", "UTC");
        let daily = schedule("@daily", "UTC");
        let why = partitions(
            &hourly,
            &daily,
            PartitionMapping::Same,
            utc("2024-05-02T05:00:00Z"),
        )
        .unwrap_err();
        assert!(
            why.contains("no partition at 2024-05-02T05:00:00Z"),
            "{why}"
        );
    }

    #[test]
    fn a_daily_stockholm_partition_covers_23_and_25_hourly_utc_partitions_on_dst_days() {
        let daily = schedule("@daily", "Europe/Stockholm");
        let hourly = schedule("@hourly", "UTC");
        // 2024-03-31: clocks go from 02:00 to 03:00 in Stockholm (a 23-hour day).
        let spring = daily.parse_parameter("2024-03-31").unwrap();
        assert_eq!(spring, utc("2024-03-30T23:00:00Z"));
        let needed = partitions(&daily, &hourly, PartitionMapping::Within, spring).unwrap();
        assert_eq!(needed.len(), 23);
        assert_eq!(needed.first(), Some(&utc("2024-03-30T23:00:00Z")));
        assert_eq!(needed.last(), Some(&utc("2024-03-31T21:00:00Z")));
        // 2024-10-27: clocks go from 03:00 back to 02:00 (a 25-hour day).
        let autumn = daily.parse_parameter("2024-10-27").unwrap();
        let needed = partitions(&daily, &hourly, PartitionMapping::Within, autumn).unwrap();
        assert_eq!(needed.len(), 25);
        assert_eq!(needed.first(), Some(&utc("2024-10-26T22:00:00Z")));
        assert_eq!(needed.last(), Some(&utc("2024-10-27T22:00:00Z")));
        // An ordinary day has 24.
        let plain = daily.parse_parameter("2024-10-28").unwrap();
        let needed = partitions(&daily, &hourly, PartitionMapping::Within, plain).unwrap();
        assert_eq!(needed.len(), 24);
        // And the hourly UTC partition inside the long day is covered by that day.
        let covered = partitions(
            &hourly,
            &daily,
            PartitionMapping::Covering,
            utc("2024-10-27T22:30:00Z"),
        );
        assert_eq!(covered.unwrap(), [autumn]);
    }

    #[test]
    fn offsets_do_not_move_partitions() {
        // Offsets move triggers, not partitions: an upstream triggered two hours late still
        // has its partition at the same logical instant.
        let late = Schedule::new("@hourly", None, Some("PT3H")).unwrap();
        let hourly = schedule("@hourly", "UTC");
        let t = utc("2024-05-02T05:00:00Z");
        assert_eq!(
            partitions(&hourly, &late, PartitionMapping::Same, t).unwrap(),
            [t]
        );
    }

    #[test]
    fn within_refuses_an_unbounded_number_of_partitions() {
        let yearly = schedule("@yearly", "UTC");
        let minutely = schedule("* * * * *", "UTC");
        let why = partitions(
            &yearly,
            &minutely,
            PartitionMapping::Within,
            utc("2024-01-01T00:00:00Z"),
        )
        .unwrap_err();
        assert!(why.contains("more than 10000 partitions"), "{why}");
    }

    #[test]
    fn dependent_partitions_reverse_every_mapping() {
        let hourly = schedule("@hourly", "UTC");
        let daily = schedule("@daily", "Europe/Stockholm");
        let p = utc("2024-10-27T05:00:00Z");
        let day = daily.align_at_or_before(p).unwrap();
        assert_eq!(
            dependent_partitions(&daily, &hourly, PartitionMapping::Within, p),
            [day]
        );
        let hours = dependent_partitions(&hourly, &daily, PartitionMapping::Covering, day);
        assert_eq!(hours.len(), 25, "the long day covers 25 hours");
        assert_eq!(
            dependent_partitions(&hourly, &hourly, PartitionMapping::Same, p),
            [p]
        );
        assert_eq!(
            dependent_partitions(&hourly, &hourly, PartitionMapping::Previous, p),
            [utc("2024-10-27T06:00:00Z")]
        );
        assert!(dependent_partitions(&daily, &hourly, PartitionMapping::Same, p).is_empty());
    }

    #[test]
    fn needs_name_the_upstream_instances() {
        let hourly = schedule("@hourly", "UTC");
        let daily = schedule("@daily", "UTC");
        let needed = needs(
            &hourly,
            "ingest",
            &daily,
            PartitionMapping::Covering,
            utc("2024-05-02T05:00:00Z"),
        )
        .unwrap();
        assert_eq!(
            needed,
            [Need {
                workflow: "ingest".into(),
                logical: utc("2024-05-02T00:00:00Z"),
                parameter: "2024-05-02".into(),
                instance: "ingest-2024-05-02".into(),
            }]
        );
    }

    #[test]
    fn the_verdict_names_up_to_three_missing_partitions_oldest_first() {
        let hourly = schedule("@hourly", "UTC");
        let daily = schedule("@daily", "UTC");
        let day = utc("2024-05-02T00:00:00Z");
        let needed = needs(&daily, "ingest", &hourly, PartitionMapping::Within, day).unwrap();
        let all_done: Vec<_> = needed
            .iter()
            .cloned()
            .map(|n| (n, Some(InstanceState::Done)))
            .collect();
        assert_eq!(verdict(&all_done), Ok(()));
        let mut some: Vec<_> = all_done.clone();
        some[20].1 = Some(InstanceState::Running);
        some[3].1 = None;
        some[7].1 = Some(InstanceState::Error);
        some[9].1 = Some(InstanceState::Queued);
        assert_eq!(
            verdict(&some),
            Err("waiting for dependencies: 4 of 24 upstream partitions not Done: ingest 2024-05-02T03 (not triggered), ingest 2024-05-02T07 (Error), ingest 2024-05-02T09 (Queued) and 1 more".into())
        );
    }

    #[test]
    fn cycles_are_found_through_the_start_only() {
        let graph: std::collections::BTreeMap<String, Vec<String>> = [
            ("a", vec!["b"]),
            ("b", vec!["c"]),
            ("c", vec!["a", "d"]),
            ("d", vec![]),
            ("e", vec!["a"]),
            ("s", vec!["s"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        let graph = |name: &str| graph.get(name).cloned().unwrap_or_default();
        assert_eq!(
            cycle("a", graph),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert_eq!(cycle("b", graph).map(|c| c.len()), Some(4));
        assert_eq!(
            cycle("e", graph),
            None,
            "e depends on a cycle but is on none"
        );
        assert_eq!(cycle("d", graph), None);
        assert_eq!(cycle("s", graph), Some(vec!["s".into(), "s".into()]));
        assert_eq!(cycle("unknown", graph), None);
    }

    proptest::proptest! {
        /// Every partition `Within` a downstream period is `Covered` by that period, and the
        /// `Previous` partition of one is never inside it.
        #[test]
        fn within_and_covering_agree(hours in 0i64..(24 * 800), zone in proptest::sample::select(vec!["UTC", "Europe/Stockholm", "America/New_York", "Australia/Lord_Howe"])) {
            let daily = schedule("@daily", zone);
            let hourly = schedule("@hourly", "UTC");
            let t = utc("2023-01-01T00:00:00Z") + chrono::Duration::hours(hours);
            let day = daily.align_at_or_before(t).unwrap();
            let within = partitions(&daily, &hourly, PartitionMapping::Within, day).unwrap();
            for p in &within {
                proptest::prop_assert_eq!(partitions(&hourly, &daily, PartitionMapping::Covering, *p).unwrap(), vec![day]);
            }
            let previous = partitions(&hourly, &hourly, PartitionMapping::Previous, within[0]).unwrap();
            proptest::prop_assert!(previous[0] < day);
        }
    }
}
