//! Retry policy (SPEC §4): what an attempt's outcome means for the instance, with Styx's
//! exit-code semantics, cost budget and randomised back-off.
//!
//! Pure: randomness is injected so tests and simulations are reproducible.

use chrono::Duration;

/// The numbers of `spec.retry`, with Styx's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Give up once the accumulated cost reaches this.
    pub max_cost: f64,
    /// Exit code meaning "inputs not there yet": retried after a fixed delay at a small cost.
    pub missing_dependency_exit_code: i32,
    /// Exit codes that end the instance in `Error` at once.
    pub fatal_exit_codes: Vec<i32>,
    /// Infrastructure failures (before the container ran) retried without cost, at most this many.
    pub infrastructure_attempts: u32,
}

impl RetryPolicy {
    /// The Styx policy with a workflow's numbers (`spec.retry`).
    pub fn of(spec: &crate::resources::RetryPolicySpec) -> Self {
        RetryPolicy {
            max_cost: spec.max_cost,
            missing_dependency_exit_code: spec.missing_dependency_exit_code,
            fatal_exit_codes: spec.fatal_exit_codes.clone(),
            infrastructure_attempts: spec.infrastructure_attempts,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_cost: 50.0,
            missing_dependency_exit_code: 20,
            fatal_exit_codes: vec![50],
            infrastructure_attempts: 10,
        }
    }
}

/// Delay before retrying a missing-dependency exit.
pub const MISSING_DEPENDENCY_DELAY: Duration = Duration::minutes(10);
/// Cost of a missing-dependency exit.
pub const MISSING_DEPENDENCY_COST: f64 = 0.1;
/// Cost of any other failure.
pub const FAILURE_COST: f64 = 1.0;
/// Unit of the randomised back-off.
pub const BACKOFF_UNIT: Duration = Duration::minutes(3);

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The main container exited with this code.
    Exited(i32),
    /// The attempt ran longer than `spec.runningTimeout`.
    TimedOut,
    /// The attempt broke after the container started, without an exit code (pod lost, evicted).
    NoExitCode(String),
    /// The container never ran: image pull back-off, eviction before start, node lost,
    /// unschedulable past a deadline. Retried without cost.
    Infrastructure(String),
    /// The attempt can never succeed as specified: invalid image reference or a Job the API
    /// server refused. Ends the instance at once.
    Invalid(String),
}

/// What the instance counts across attempts of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RetryCounters {
    /// Accumulated cost of failures.
    pub cost: f64,
    /// Failures in a row (reset by nothing within a run: success ends the run).
    pub consecutive_failures: u32,
    /// Infrastructure failures so far.
    pub infrastructure_failures: u32,
}

/// The verdict on an attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Exit 0: the instance is done.
    Done,
    /// Give up: the instance ends in `Error`.
    GiveUp {
        /// Machine-readable reason (`Fatal`, `BudgetExhausted`, …).
        reason: &'static str,
        /// What a person reads.
        message: String,
    },
    /// Try again after `delay`.
    Retry {
        /// How long to wait before the next attempt.
        delay: Duration,
        /// Machine-readable reason (`MissingDependencies`, `Failed`, `Infrastructure`, …).
        reason: &'static str,
        /// What a person reads.
        message: String,
    },
}

impl RetryPolicy {
    /// Judges an attempt's outcome given the counters before it, returning the verdict and the
    /// counters after it. `random_below(n)` must return a uniform integer in `0..n`.
    pub fn judge(
        &self,
        before: RetryCounters,
        outcome: &AttemptOutcome,
        random_below: &mut dyn FnMut(u32) -> u32,
    ) -> (Verdict, RetryCounters) {
        let mut after = before;
        let (cost, failure) = match outcome {
            AttemptOutcome::Exited(0) => {
                return (Verdict::Done, after);
            }
            AttemptOutcome::Invalid(message) => {
                return (
                    Verdict::GiveUp {
                        reason: "Invalid",
                        message: message.clone(),
                    },
                    after,
                );
            }
            AttemptOutcome::Infrastructure(what) => {
                after.infrastructure_failures += 1;
                if after.infrastructure_failures > self.infrastructure_attempts {
                    return (
                        Verdict::GiveUp {
                            reason: "InfrastructureAttemptsExhausted",
                            message: format!(
                                "{what}; gave up after {} infrastructure failures",
                                after.infrastructure_failures
                            ),
                        },
                        after,
                    );
                }
                let delay = backoff(after.infrastructure_failures, random_below);
                return (
                    Verdict::Retry {
                        delay,
                        reason: "Infrastructure",
                        message: format!(
                            "{what}; retrying without cost in {} (infrastructure failure {} of {})",
                            human(delay),
                            after.infrastructure_failures,
                            self.infrastructure_attempts
                        ),
                    },
                    after,
                );
            }
            AttemptOutcome::Exited(code) if *code == self.missing_dependency_exit_code => (
                MISSING_DEPENDENCY_COST,
                format!("exit code {code} (missing dependencies)"),
            ),
            AttemptOutcome::Exited(code) => (FAILURE_COST, format!("exit code {code}")),
            AttemptOutcome::TimedOut => (FAILURE_COST, "running timeout exceeded".to_string()),
            AttemptOutcome::NoExitCode(what) => (FAILURE_COST, what.clone()),
        };
        after.cost = round_cost(after.cost + cost);
        after.consecutive_failures += 1;

        if after.cost >= self.max_cost {
            return (
                Verdict::GiveUp {
                    reason: "RetryBudgetExhausted",
                    message: format!(
                        "{failure}; retry cost {} reached the budget of {}",
                        after.cost, self.max_cost
                    ),
                },
                after,
            );
        }
        if let AttemptOutcome::Exited(code) = outcome {
            if self.fatal_exit_codes.contains(code) {
                return (
                    Verdict::GiveUp {
                        reason: "FatalExitCode",
                        message: format!("{failure} is fatal; not retrying"),
                    },
                    after,
                );
            }
            if *code == self.missing_dependency_exit_code {
                return (
                    Verdict::Retry {
                        delay: MISSING_DEPENDENCY_DELAY,
                        reason: "MissingDependencies",
                        message: format!(
                            "{failure}; retrying in 10m at cost {MISSING_DEPENDENCY_COST}"
                        ),
                    },
                    after,
                );
            }
        }
        let delay = backoff(after.consecutive_failures, random_below);
        (
            Verdict::Retry {
                delay,
                reason: "Failed",
                message: format!("{failure}; retrying in {}", human(delay)),
            },
            after,
        )
    }
}

/// Styx's back-off: `3 min × max(1, U{0 … 2^min(failures, 4) − 1})`, where `failures` counts
/// consecutive failures including this one.
pub fn backoff(failures: u32, random_below: &mut dyn FnMut(u32) -> u32) -> Duration {
    let span = 1u32 << failures.min(4);
    let draw = random_below(span).min(span - 1);
    BACKOFF_UNIT * i32::try_from(draw.max(1)).unwrap_or(1)
}

/// Keeps sums of 0.1 exact enough to print and compare (0.1 + 0.2 = 0.3, not 0.30000000000000004).
fn round_cost(cost: f64) -> f64 {
    (cost * 1000.0).round() / 1000.0
}

/// `10m`, `1h30m`: how delays are written in messages.
pub fn human(d: Duration) -> String {
    let secs = d.num_seconds();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn always(n: u32) -> impl FnMut(u32) -> u32 {
        move |bound| n.min(bound.saturating_sub(1))
    }

    #[test]
    fn exit_code_table() {
        let policy = RetryPolicy::default();
        let fresh = RetryCounters::default();
        let mut zero = always(0);

        let (v, c) = policy.judge(fresh, &AttemptOutcome::Exited(0), &mut zero);
        assert_eq!(v, Verdict::Done);
        assert_eq!(c, fresh);

        let (v, c) = policy.judge(fresh, &AttemptOutcome::Exited(50), &mut zero);
        assert!(
            matches!(
                v,
                Verdict::GiveUp {
                    reason: "FatalExitCode",
                    ..
                }
            ),
            "{v:?}"
        );
        assert_eq!(c.cost, 1.0);

        let (v, c) = policy.judge(fresh, &AttemptOutcome::Exited(20), &mut zero);
        assert!(
            matches!(v, Verdict::Retry { delay, reason: "MissingDependencies", .. } if delay == Duration::minutes(10)),
            "{v:?}"
        );
        assert_eq!(c.cost, 0.1);

        let (v, c) = policy.judge(fresh, &AttemptOutcome::Exited(1), &mut zero);
        assert!(
            matches!(v, Verdict::Retry { delay, reason: "Failed", .. } if delay == Duration::minutes(3))
        );
        assert_eq!((c.cost, c.consecutive_failures), (1.0, 1));

        let (v, c) = policy.judge(
            fresh,
            &AttemptOutcome::Infrastructure("ImagePullBackOff".into()),
            &mut zero,
        );
        assert!(matches!(
            v,
            Verdict::Retry {
                reason: "Infrastructure",
                ..
            }
        ));
        assert_eq!((c.cost, c.infrastructure_failures), (0.0, 1));

        let (v, _) = policy.judge(
            fresh,
            &AttemptOutcome::Invalid("bad image".into()),
            &mut zero,
        );
        assert!(matches!(
            v,
            Verdict::GiveUp {
                reason: "Invalid",
                ..
            }
        ));
    }

    #[test]
    fn budget_is_checked_before_fatal_and_missing_dependencies() {
        let policy = RetryPolicy::default();
        let nearly = RetryCounters {
            cost: 49.95,
            ..Default::default()
        };
        let (v, c) = policy.judge(nearly, &AttemptOutcome::Exited(20), &mut always(0));
        assert!(
            matches!(
                v,
                Verdict::GiveUp {
                    reason: "RetryBudgetExhausted",
                    ..
                }
            ),
            "{v:?}"
        );
        assert_eq!(c.cost, 50.05);
        let (v, _) = policy.judge(
            RetryCounters {
                cost: 48.0,
                ..Default::default()
            },
            &AttemptOutcome::Exited(3),
            &mut always(0),
        );
        assert!(matches!(v, Verdict::Retry { .. }));
    }

    #[test]
    fn five_hundred_missing_dependency_exits_exhaust_the_budget() {
        let policy = RetryPolicy::default();
        let mut counters = RetryCounters::default();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (v, c) = policy.judge(counters, &AttemptOutcome::Exited(20), &mut always(0));
            counters = c;
            if matches!(v, Verdict::GiveUp { .. }) {
                break;
            }
        }
        assert_eq!(attempts, 500);
    }

    #[test]
    fn infrastructure_failures_are_bounded() {
        let policy = RetryPolicy {
            infrastructure_attempts: 2,
            ..Default::default()
        };
        let outcome = AttemptOutcome::Infrastructure("Evicted".into());
        let (v1, c1) = policy.judge(RetryCounters::default(), &outcome, &mut always(0));
        let (v2, c2) = policy.judge(c1, &outcome, &mut always(0));
        let (v3, c3) = policy.judge(c2, &outcome, &mut always(0));
        assert!(matches!(v1, Verdict::Retry { .. }));
        assert!(matches!(v2, Verdict::Retry { .. }));
        assert!(matches!(
            v3,
            Verdict::GiveUp {
                reason: "InfrastructureAttemptsExhausted",
                ..
            }
        ));
        assert_eq!(c3.cost, 0.0);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::minutes(10)), "10m");
        assert_eq!(human(Duration::minutes(90)), "1h30m");
        assert_eq!(human(Duration::zero()), "0s");
    }

    proptest! {
        #[test]
        fn backoff_stays_within_styx_bounds(failures in 1u32..40, draw in any::<u32>()) {
            let delay = backoff(failures, &mut |bound| draw % bound);
            let max = 3 * ((1i64 << failures.min(4)) - 1).max(1);
            prop_assert!(delay >= Duration::minutes(3));
            prop_assert!(delay <= Duration::minutes(max));
            prop_assert_eq!(delay.num_seconds() % 180, 0);
        }
    }
}
