//! How the user commands draw what they print: the partition grid, state cells, backfill
//! progress and tables.

use super::*;

/// The `Recent` grid: one cell per partition from the oldest of the newest instances to the
/// newest, with `-` for a partition of the schedule that has no instance, and the first and
/// last parameters. `None` without instances.
pub(super) fn recent_grid(
    instances: &[&WorkflowInstance],
    schedule: Option<&charon_core::schedule::Schedule>,
    colour: bool,
) -> Option<(String, String, String)> {
    let mut by_time: BTreeMap<DateTime<Utc>, (String, Option<InstanceState>)> = instances
        .iter()
        .map(|i| {
            let state = i.status.as_ref().map(|s| s.state).unwrap_or_default();
            (i.spec.logical_time, (i.spec.parameter.clone(), Some(state)))
        })
        .collect();
    let newest = *by_time.keys().next_back()?;
    if let Some(schedule) = schedule {
        // The schedule's partitions back from the newest instance, but not before the oldest.
        let oldest = *by_time.keys().next()?;
        let aligned = schedule.is_aligned(newest).then_some(newest);
        let partitions = aligned
            .into_iter()
            .chain(schedule.partitions_before(newest))
            .take_while(|p| *p >= oldest)
            .take(GRID_WIDTH);
        for p in partitions {
            by_time
                .entry(p)
                .or_insert_with(|| (schedule.parameter(p), None));
        }
    }
    let cells: Vec<&(String, Option<InstanceState>)> =
        by_time.values().rev().take(GRID_WIDTH).rev().collect();
    let grid: String = cells
        .iter()
        .map(|(_, state)| match state {
            Some(state) => cell(*state, colour),
            None => "-".to_string(),
        })
        .collect();
    let first = cells.first()?.0.clone();
    let last = cells.last()?.0.clone();
    Some((grid, first, last))
}

/// An instance's message, with a retry delay written as "retrying in 9m" when the status was
/// recorded turned into the time of the next attempt and what remains of the delay now.
pub(crate) fn current_message(
    status: &charon_core::resources::WorkflowInstanceStatus,
    now: DateTime<Utc>,
) -> String {
    let message = status.message.clone();
    let Some(at) = status
        .next_attempt_at
        .filter(|_| status.state == InstanceState::Queued)
    else {
        return message;
    };
    let remaining = at - now;
    let when = if remaining > chrono::Duration::zero() {
        format!(
            "at {} (in {})",
            at.format("%H:%M:%SZ"),
            charon_core::retry::human(remaining)
        )
    } else {
        format!("at {} (due now)", at.format("%H:%M:%SZ"))
    };
    for lead in ["retrying in ", "retrying without cost in "] {
        if let Some(start) = message.find(lead) {
            let delay = start + lead.len() - "in ".len();
            let rest = &message[start + lead.len()..];
            let end = rest.find(' ').unwrap_or(rest.len());
            return format!("{}{when}{}", &message[..delay], &rest[end..]);
        }
    }
    format!("{message}; next attempt {when}")
}

/// One character per partition, coloured on a terminal.
pub(super) fn cell(state: InstanceState, colour: bool) -> String {
    let (c, code) = match state {
        InstanceState::Done => ('D', "32"),
        InstanceState::Error => ('E', "31"),
        InstanceState::Halted => ('H', "35"),
        InstanceState::Running | InstanceState::Submitted | InstanceState::Submitting => {
            ('R', "36")
        }
        InstanceState::Queued => ('Q', "33"),
        _ => ('.', "37"),
    };
    if colour {
        format!("\x1b[{code}m{c}\x1b[0m")
    } else {
        c.to_string()
    }
}

/// `[#####.....] 5/10 50%  ETA 2m` for a backfill.
pub(super) fn progress_line(backfill: &Backfill, now: DateTime<Utc>) -> String {
    let s = backfill.status.clone().unwrap_or_default();
    let c = &s.counts;
    let finished = c.done + c.failed + c.skipped;
    let total = c.total.max(1);
    let width = 20;
    let filled = (finished as usize * width) / total as usize;
    let bar: String = "#".repeat(filled) + &".".repeat(width - filled);
    let percent = finished * 100 / total;
    let eta = match (s.started_at, finished) {
        // Only a running backfill is going anywhere: a halted one has no ETA.
        (Some(start), f) if s.state == BackfillState::Running && f > 0 && f < c.total => {
            let elapsed = (now - start).num_seconds().max(1) as f64;
            let remaining = (c.total - f) as f64 * elapsed / f as f64;
            format!(
                "  ETA {}",
                charon_core::retry::human(chrono::Duration::seconds(remaining as i64))
            )
        }
        _ => String::new(),
    };
    format!(
        "[{bar}] {finished}/{} {percent}%  active {}  {:?}{eta}",
        c.total, c.active, s.state
    )
}

pub(super) fn write_table(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}   ", w = *w));
            }
        }
        text.trim_end().to_string()
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    )?;
    for row in rows {
        writeln!(out, "{}", line(row.clone()))?;
    }
    if rows.is_empty() {
        // kubectl prints this on stderr; so do we, keeping stdout a table.
        eprintln!("No resources found.");
    }
    Ok(())
}
