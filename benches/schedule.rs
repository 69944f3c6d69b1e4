//! Next-partition throughput of the schedule core: `cargo bench --bench schedule`.
//!
//! Prints computations per second for an hourly UTC schedule, a complex cron expression and an
//! hourly schedule in a daylight-saving zone, each walking partitions forward from 2024-01-01.

use std::hint::black_box;
use std::time::{Duration, Instant};

use charon_core::schedule::Schedule;
use chrono::{DateTime, Utc};

fn measure(label: &str, schedule: &Schedule, budget: Duration) {
    let start: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().expect("literal timestamp");
    let mut t = start;
    let mut computed: u64 = 0;
    let began = Instant::now();
    while began.elapsed() < budget {
        for _ in 0..1_000 {
            t = match schedule.next_after(black_box(t)) {
                Some(next) => next,
                None => start,
            };
            computed += 1;
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    println!(
        "{label:<48} {:>12.0} next-partition computations/s ({computed} in {seconds:.2}s, reached {t})",
        computed as f64 / seconds
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a number of seconds per case may follow.
    let seconds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<f64>().ok())
        .unwrap_or(2.0);
    let budget = Duration::from_secs_f64(seconds);
    let cases = [
        ("@hourly, UTC", "@hourly", "UTC"),
        (
            "*/7 3-21/2 1-28 JAN-NOV MON-FRI, UTC",
            "*/7 3-21/2 1-28 JAN-NOV MON-FRI",
            "UTC",
        ),
        ("@hourly, Europe/Stockholm", "@hourly", "Europe/Stockholm"),
        (
            "30 2 * * *, Europe/Stockholm",
            "30 2 * * *",
            "Europe/Stockholm",
        ),
    ];
    for (label, expr, zone) in cases {
        let schedule =
            Schedule::new(expr, Some(zone), None).expect("benchmark schedules are valid");
        measure(label, &schedule, budget);
    }
}
