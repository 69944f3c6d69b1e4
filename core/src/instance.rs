//! The instance state machine (SPEC §4) as a pure function:
//! state × observation × now → new state + actions + transitions.
//!
//! The adapter around it reads the instance, its current Job and the workflow, calls
//! [`step`], applies the actions (create or delete Jobs), records each transition in
//! `status.history` and as an Event, and writes the status. Job names are derived from the
//! instance and the execution number, so whoever plans an execution plans the same name and a
//! restarted controller finds the Job instead of creating a second one. A Job that disappears
//! is an attempt that broke, never a reason to run the same execution again.

use chrono::{DateTime, Duration, Utc};

use crate::names;
use crate::retry::{AttemptOutcome, RetryCounters, RetryPolicy, Verdict};

/// `status.state` of a WorkflowInstance (the resource's enum: one definition for both).
pub use crate::resources::InstanceState as State;

/// Why a Queued instance waits (`status.reason`): the machine writes them, the controller
/// reads them back to decide whom to wake and whom to admit.
pub mod waiting {
    /// Its upstream partitions (`spec.dependsOn`) are not all Done.
    pub const DEPENDENCIES: &str = "WaitingForDependencies";
    /// No concurrency slot is free.
    pub const SLOT: &str = "WaitingForSlot";
    /// It is suspended (`spec.suspended`).
    pub const SUSPENDED: &str = "Suspended";
    /// Its Job waits for Kueue to admit it (`spec.template.queueName`).
    pub const KUEUE: &str = "WaitingForKueue";
}

/// The part of an instance's status the state machine owns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Instance {
    /// The instance's name (for Job names).
    pub name: String,
    /// Current state.
    pub state: State,
    /// Executions started in the current run.
    pub tries: u32,
    /// Number of the latest execution, counted across runs so Job names never repeat.
    pub execution: u32,
    /// Cost and failure counters of the current run.
    pub counters: RetryCounters,
    /// Earliest time of the next attempt while `Queued`.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The current or last Job.
    pub job: Option<String>,
    /// Exit code of the last attempt that had one.
    pub last_exit_code: Option<i32>,
    /// When the current attempt's container started running.
    pub running_since: Option<DateTime<Utc>>,
    /// What a person reads about the current state.
    pub message: String,
    /// Why a Queued instance waits (`WaitingForDependencies`, `WaitingForSlot`, `Suspended`).
    pub reason: Option<String>,
    /// When the current execution was suspended, while it is.
    pub suspended_at: Option<DateTime<Utc>>,
}

/// What the current Job says about the attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// No Job of the current execution exists.
    Missing,
    /// The Job exists; the container has not started.
    Pending,
    /// The container runs (since the given time, if known).
    Running(Option<DateTime<Utc>>),
    /// The Job is suspended (`spec.suspend`): its pods are stopped, nothing runs.
    Suspended,
    /// The attempt ended.
    Finished(AttemptOutcome),
}

/// Everything the machine needs to know about the world at `now`.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// `spec.halted` (or the CLI's halt).
    pub halted: bool,
    /// The retry-now annotation is present: skip the remaining delay.
    pub retry_now: bool,
    /// A concurrency slot is free for this instance; `Err` carries the waiting message.
    pub slot: Result<(), String>,
    /// The current execution's Job.
    pub job: JobStatus,
    /// `spec.runningTimeout`, enforced by the controller as well as by the Job's deadline.
    pub running_timeout: Option<Duration>,
    /// `spec.suspended` of the instance.
    pub suspended: bool,
    /// Whether the upstream partitions of `spec.dependsOn` are all Done; `Err` carries the
    /// waiting message.
    pub dependencies: Result<(), String>,
    /// When a wait for dependencies ends in Error (trigger + `spec.dependencyTimeout`).
    pub dependency_deadline: Option<DateTime<Utc>>,
    /// The Kueue LocalQueue the current Job was submitted to: while that Job is suspended
    /// and the instance is not, Kueue has not admitted it yet (SPEC §13).
    pub kueue_queue: Option<String>,
}

/// Something the adapter must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the Job of execution `execution` named `name` (AlreadyExists means done).
    CreateJob {
        /// Deterministic Job name.
        name: String,
        /// Execution number.
        execution: u32,
    },
    /// Delete a Job with background propagation (NotFound means done).
    DeleteJob {
        /// The Job's name.
        name: String,
    },
    /// Set the Job's `spec.suspend` (a Job already so is left alone).
    SuspendJob {
        /// The Job's name.
        name: String,
        /// Suspend (true) or resume (false).
        suspend: bool,
    },
}

/// One state change, recorded in `status.history` and as an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// CamelCase reason, as Events use.
    pub reason: String,
    /// What a person reads.
    pub message: String,
}

/// The result of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The instance after the step.
    pub instance: Instance,
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// State changes, in order.
    pub transitions: Vec<Transition>,
    /// When to look again even if nothing changes (retry delays, timeouts).
    pub requeue_after: Option<Duration>,
}

struct Machine<'a> {
    instance: Instance,
    actions: Vec<Action>,
    transitions: Vec<Transition>,
    requeue_after: Option<Duration>,
    policy: &'a RetryPolicy,
}

impl Machine<'_> {
    fn go(&mut self, to: State, reason: &str, message: String) {
        self.transitions.push(Transition {
            from: self.instance.state,
            to,
            reason: reason.to_string(),
            message: message.clone(),
        });
        self.instance.state = to;
        self.instance.message = message;
        self.instance.reason = None;
    }

    /// Stays in the current state, waiting: says why.
    fn wait(&mut self, reason: &str, message: &str) {
        if self.instance.message != message {
            self.instance.message = message.to_string();
        }
        if self.instance.reason.as_deref() != Some(reason) {
            self.instance.reason = Some(reason.to_string());
        }
    }

    fn suspend_job(&mut self, suspend: bool) {
        if let Some(job) = &self.instance.job {
            self.actions.push(Action::SuspendJob {
                name: job.clone(),
                suspend,
            });
        }
    }

    fn requeue(&mut self, after: Duration) {
        let after = after.max(Duration::zero());
        self.requeue_after = Some(self.requeue_after.map_or(after, |r| r.min(after)));
    }

    fn delete_current_job(&mut self) {
        if let Some(job) = &self.instance.job {
            self.actions.push(Action::DeleteJob { name: job.clone() });
        }
    }

    /// Judges a finished attempt and moves on to Done, Error or Queued.
    fn judge(
        &mut self,
        outcome: AttemptOutcome,
        now: DateTime<Utc>,
        random: &mut dyn FnMut(u32) -> u32,
    ) {
        self.instance.running_since = None;
        self.instance.suspended_at = None;
        match &outcome {
            AttemptOutcome::Exited(code) => {
                self.instance.last_exit_code = Some(*code);
                let message = format!("attempt {} exited with code {code}", self.instance.tries);
                self.go(State::Terminated, "Terminated", message);
            }
            AttemptOutcome::TimedOut => {
                let message = format!(
                    "attempt {} exceeded the running timeout",
                    self.instance.tries
                );
                self.go(State::Failed, "TimedOut", message);
            }
            AttemptOutcome::NoExitCode(what)
            | AttemptOutcome::Infrastructure(what)
            | AttemptOutcome::Invalid(what) => {
                let message = format!("attempt {} failed: {what}", self.instance.tries);
                self.go(State::Failed, "AttemptFailed", message);
            }
        }
        let (verdict, counters) = self.policy.judge(self.instance.counters, &outcome, random);
        self.instance.counters = counters;
        match verdict {
            Verdict::Done => {
                let message = format!("succeeded on attempt {}", self.instance.tries);
                self.go(State::Done, "Succeeded", message);
            }
            Verdict::GiveUp { reason, message } => self.go(State::Error, reason, message),
            Verdict::Retry {
                delay,
                reason,
                message,
            } => {
                self.instance.next_attempt_at = Some(now + delay);
                self.go(State::Queued, reason, message);
                self.requeue(delay);
            }
        }
    }
}

/// Advances the instance as far as the observation allows.
pub fn step(
    current: &Instance,
    observation: &Observation,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
    random: &mut dyn FnMut(u32) -> u32,
) -> Step {
    let mut m = Machine {
        instance: current.clone(),
        actions: Vec::new(),
        transitions: Vec::new(),
        requeue_after: None,
        policy,
    };
    if m.instance.state.is_terminal() {
        return finish(m);
    }
    if observation.halted {
        if matches!(
            observation.job,
            JobStatus::Pending | JobStatus::Running(_) | JobStatus::Suspended
        ) {
            m.delete_current_job();
        }
        m.instance.next_attempt_at = None;
        m.instance.running_since = None;
        m.instance.suspended_at = None;
        m.go(
            State::Halted,
            "Halted",
            "halted on request; no further attempts".to_string(),
        );
        return finish(m);
    }

    // Each pass may move one or more states; loop until the state is stable for this
    // observation (bounded: every arm either returns or moves strictly forward).
    for _ in 0..8 {
        match m.instance.state {
            State::Queued => {
                if observation.suspended {
                    let message = "suspended (spec.suspended): not started until resumed";
                    m.wait(waiting::SUSPENDED, message);
                    break;
                }
                if let Some(at) = m.instance.next_attempt_at
                    && at > now
                    && !observation.retry_now
                {
                    m.requeue(at - now);
                    break;
                }
                if let Err(waiting) = &observation.dependencies {
                    match observation.dependency_deadline {
                        Some(deadline) if now >= deadline => {
                            let message = format!("gave up at spec.dependencyTimeout: {waiting}");
                            m.go(State::Error, "DependencyTimeout", message);
                            break;
                        }
                        Some(deadline) => m.requeue(deadline - now),
                        None => {}
                    }
                    m.wait(waiting::DEPENDENCIES, waiting);
                    break;
                }
                if let Err(waiting) = &observation.slot {
                    m.wait(waiting::SLOT, waiting);
                    break;
                }
                m.instance.next_attempt_at = None;
                let reason = if observation.retry_now {
                    "RetryNow"
                } else {
                    "Dequeued"
                };
                let message = format!("preparing attempt {}", m.instance.tries + 1);
                m.go(State::Prepare, reason, message);
            }
            State::Prepare => {
                // Earlier attempts' Jobs are deleted; only the latest one is kept for logs.
                m.delete_current_job();
                m.instance.tries += 1;
                m.instance.execution += 1;
                let job = names::job_name(&m.instance.name, m.instance.execution);
                m.instance.job = Some(job.clone());
                let message = format!("creating Job {job} for attempt {}", m.instance.tries);
                m.go(State::Submitting, "Submitting", message);
                m.actions.push(Action::CreateJob {
                    name: job,
                    execution: m.instance.execution,
                });
                break;
            }
            State::Submitting => match &observation.job {
                JobStatus::Missing => {
                    // Recorded but not yet created (or the controller stopped in between):
                    // create it under the same name.
                    if let Some(job) = m.instance.job.clone() {
                        m.actions.push(Action::CreateJob {
                            name: job,
                            execution: m.instance.execution,
                        });
                    }
                    break;
                }
                _ => {
                    let message = format!(
                        "Job {} submitted for attempt {}",
                        m.instance.job.as_deref().unwrap_or_default(),
                        m.instance.tries
                    );
                    m.go(State::Submitted, "Submitted", message);
                }
            },
            State::Submitted | State::Running => match &observation.job {
                JobStatus::Pending | JobStatus::Running(_) | JobStatus::Suspended
                    if observation.suspended =>
                {
                    m.instance.suspended_at = Some(now);
                    m.suspend_job(true);
                    let message = format!(
                        "attempt {} suspended: its pods are stopped until it is resumed",
                        m.instance.tries
                    );
                    m.go(State::Suspended, "Suspended", message);
                    break;
                }
                JobStatus::Suspended if observation.kueue_queue.is_some() => {
                    // Kueue admits the Job by unsuspending it: until then the attempt costs
                    // nothing and its running time does not start (or, preempted, stops).
                    let queue = observation.kueue_queue.as_deref().unwrap_or_default();
                    let message = format!("waiting for Kueue admission in queue {queue}");
                    if m.instance.state == State::Running {
                        m.instance.suspended_at = Some(now);
                        m.go(State::Submitted, waiting::KUEUE, message);
                    } else {
                        m.wait(waiting::KUEUE, &message);
                    }
                    break;
                }
                JobStatus::Suspended => {
                    // Resumed on record, the Job not yet: resume it (again).
                    m.suspend_job(false);
                    break;
                }
                JobStatus::Pending => break,
                JobStatus::Running(since) => {
                    if m.instance.state == State::Submitted {
                        // A resumed attempt keeps the running time it had; time preempted by
                        // Kueue does not count.
                        if let (Some(running), Some(at)) =
                            (m.instance.running_since, m.instance.suspended_at.take())
                        {
                            m.instance.running_since =
                                Some(running + (now - at).max(Duration::zero()));
                        }
                        let since = m.instance.running_since.unwrap_or(since.unwrap_or(now));
                        m.instance.running_since = Some(since);
                        let message = format!("running on attempt {}", m.instance.tries);
                        m.go(State::Running, "Running", message);
                    }
                    if let (Some(timeout), Some(since)) =
                        (observation.running_timeout, m.instance.running_since)
                    {
                        let deadline = since + timeout;
                        if now >= deadline {
                            m.delete_current_job();
                            m.judge(AttemptOutcome::TimedOut, now, random);
                            continue;
                        }
                        m.requeue(deadline - now);
                    }
                    break;
                }
                JobStatus::Finished(outcome) => {
                    let outcome = outcome.clone();
                    m.judge(outcome, now, random);
                }
                JobStatus::Missing => {
                    let what = format!(
                        "Job {} disappeared before it finished",
                        m.instance.job.as_deref().unwrap_or_default()
                    );
                    m.judge(AttemptOutcome::NoExitCode(what), now, random);
                }
            },
            State::Suspended => match &observation.job {
                JobStatus::Finished(outcome) => {
                    // It ended before the suspension stopped it.
                    let outcome = outcome.clone();
                    m.judge(outcome, now, random);
                }
                JobStatus::Missing => {
                    let what = format!(
                        "Job {} disappeared while suspended",
                        m.instance.job.as_deref().unwrap_or_default()
                    );
                    m.judge(AttemptOutcome::NoExitCode(what), now, random);
                }
                JobStatus::Suspended if observation.suspended => break,
                _ if observation.suspended => {
                    // Suspended on record, the Job not yet: suspend it (again).
                    m.suspend_job(true);
                    break;
                }
                _ => {
                    // Time spent suspended does not count toward runningTimeout.
                    if let (Some(since), Some(at)) =
                        (m.instance.running_since, m.instance.suspended_at)
                    {
                        m.instance.running_since = Some(since + (now - at).max(Duration::zero()));
                    }
                    m.instance.suspended_at = None;
                    m.suspend_job(false);
                    let message = format!(
                        "attempt {} resumed: the same execution goes on",
                        m.instance.tries
                    );
                    m.go(State::Submitted, "Resumed", message);
                    break;
                }
            },
            // Transient states are left by `judge` within the same step; seeing one here means
            // the controller stopped in between, so decide again from the Job.
            State::Terminated | State::Failed => match &observation.job {
                JobStatus::Finished(outcome) => {
                    let outcome = outcome.clone();
                    m.instance.state = State::Running;
                    m.judge(outcome, now, random);
                }
                _ => {
                    let what = "attempt ended without a recorded outcome".to_string();
                    m.instance.state = State::Running;
                    m.judge(AttemptOutcome::NoExitCode(what), now, random);
                }
            },
            State::Done | State::Error | State::Halted => break,
        }
    }
    finish(m)
}

fn finish(m: Machine<'_>) -> Step {
    Step {
        instance: m.instance,
        actions: m.actions,
        transitions: m.transitions,
        requeue_after: m.requeue_after,
    }
}

/// Re-opens a finished instance for a new run (ad-hoc or backfill trigger, SPEC §3): state
/// `Queued`, tries and cost reset; the execution counter keeps counting so Job names stay
/// unique. The caller keeps the finished run in `status.runs`.
pub fn reopen(finished: &Instance, reason: &str, message: String) -> (Instance, Transition) {
    let instance = Instance {
        name: finished.name.clone(),
        state: State::Queued,
        tries: 0,
        execution: finished.execution,
        counters: RetryCounters::default(),
        next_attempt_at: None,
        job: finished.job.clone(),
        last_exit_code: None,
        running_since: None,
        message: message.clone(),
        reason: None,
        suspended_at: None,
    };
    let transition = Transition {
        from: finished.state,
        to: State::Queued,
        reason: reason.to_string(),
        message,
    };
    (instance, transition)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn fresh() -> Instance {
        Instance {
            name: "hb-2024-01-02t05".into(),
            ..Default::default()
        }
    }

    fn obs(job: JobStatus) -> Observation {
        Observation {
            halted: false,
            retry_now: false,
            slot: Ok(()),
            job,
            running_timeout: None,
            suspended: false,
            dependencies: Ok(()),
            dependency_deadline: None,
            kueue_queue: None,
        }
    }

    #[test]
    fn a_job_waiting_for_kueue_costs_nothing_until_admitted() {
        let kueue = |job| Observation {
            kueue_queue: Some("team".into()),
            running_timeout: Some(Duration::minutes(10)),
            ..obs(job)
        };
        let submitted = Instance {
            state: State::Submitted,
            job: Some("j-1".into()),
            execution: 1,
            tries: 1,
            ..fresh()
        };
        let waiting = run(
            &submitted,
            &kueue(JobStatus::Suspended),
            "2024-01-02T06:00:00Z",
        );
        assert_eq!(waiting.instance.state, State::Submitted);
        assert_eq!(waiting.instance.reason.as_deref(), Some(waiting::KUEUE));
        assert_eq!(
            waiting.instance.message,
            "waiting for Kueue admission in queue team"
        );
        assert!(
            waiting.actions.is_empty(),
            "Charon never unsuspends it: {:?}",
            waiting.actions
        );
        // Admitted an hour later: the running timeout counts from then.
        let running = run(
            &waiting.instance,
            &kueue(JobStatus::Running(None)),
            "2024-01-02T07:00:00Z",
        );
        assert_eq!(running.instance.state, State::Running);
        assert_eq!(
            running.instance.running_since,
            Some(utc("2024-01-02T07:00:00Z"))
        );
        // Preempted: back to Submitted, and the time it waits again does not count either.
        let preempted = run(
            &running.instance,
            &kueue(JobStatus::Suspended),
            "2024-01-02T07:05:00Z",
        );
        assert_eq!(preempted.instance.state, State::Submitted);
        let again = run(
            &preempted.instance,
            &kueue(JobStatus::Running(None)),
            "2024-01-02T08:05:00Z",
        );
        assert_eq!(
            again.instance.running_since,
            Some(utc("2024-01-02T08:00:00Z"))
        );
        assert!(again.actions.is_empty());
    }

    fn run(instance: &Instance, observation: &Observation, now: &str) -> Step {
        step(
            instance,
            observation,
            &RetryPolicy::default(),
            utc(now),
            &mut |_| 0,
        )
    }

    fn path(step: &Step) -> Vec<(State, State)> {
        step.transitions.iter().map(|t| (t.from, t.to)).collect()
    }

    #[test]
    fn a_suspended_run_stops_its_job_and_resumes_the_same_execution() {
        let policy = RetryPolicy::default();
        let step_at =
            |i: &Instance, o: &Observation, now: &str| step(i, o, &policy, utc(now), &mut |_| 0);
        let timeout = Observation {
            running_timeout: Some(Duration::minutes(10)),
            ..obs(JobStatus::Running(Some(utc("2024-01-02T06:00:00Z"))))
        };
        let started = run(&fresh(), &obs(JobStatus::Missing), "2024-01-02T06:00:00Z");
        let running = step_at(&started.instance, &timeout, "2024-01-02T06:01:00Z");
        assert_eq!(running.instance.state, State::Running);
        let job = running.instance.job.clone().unwrap();
        // Suspended after 4 minutes of running.
        let suspend = Observation {
            suspended: true,
            ..timeout.clone()
        };
        let s = step_at(&running.instance, &suspend, "2024-01-02T06:04:00Z");
        assert_eq!(s.instance.state, State::Suspended);
        assert_eq!(
            s.actions,
            [Action::SuspendJob {
                name: job.clone(),
                suspend: true
            }]
        );
        assert_eq!(s.transitions[0].reason, "Suspended");
        // While suspended nothing times out and nothing is created.
        let held = Observation {
            suspended: true,
            ..obs(JobStatus::Suspended)
        };
        let later = step_at(&s.instance, &held, "2024-01-02T09:00:00Z");
        assert_eq!(
            (later.instance.state, later.actions.len()),
            (State::Suspended, 0)
        );
        // A Job the suspension has not reached yet is suspended again.
        let again = step_at(&s.instance, &suspend, "2024-01-02T06:05:00Z");
        assert_eq!(
            again.actions,
            [Action::SuspendJob {
                name: job.clone(),
                suspend: true
            }]
        );
        // Resumed three hours later: the same Job, the same try, no cost.
        let resume = obs(JobStatus::Suspended);
        let r = step_at(&s.instance, &resume, "2024-01-02T09:04:00Z");
        assert_eq!(r.instance.state, State::Submitted);
        assert_eq!(
            r.actions,
            [Action::SuspendJob {
                name: job.clone(),
                suspend: false
            }]
        );
        assert_eq!((r.instance.tries, r.instance.execution), (1, 1));
        assert_eq!(r.instance.counters, started.instance.counters);
        // The 4 minutes it ran count toward the 10-minute timeout, the suspension does not.
        let rerun = Observation {
            running_timeout: Some(Duration::minutes(10)),
            ..obs(JobStatus::Running(Some(utc("2024-01-02T09:04:30Z"))))
        };
        let r2 = step_at(&r.instance, &rerun, "2024-01-02T09:05:00Z");
        assert_eq!(r2.instance.state, State::Running);
        assert_eq!(r2.instance.running_since, Some(utc("2024-01-02T09:00:00Z")));
        let timed_out = step_at(&r2.instance, &rerun, "2024-01-02T09:10:00Z");
        assert_eq!(
            timed_out.instance.state,
            State::Queued,
            "timed out after 4 + 6 minutes"
        );
        // A Job still suspended after the resume is on record is resumed again.
        let fixup = step_at(
            &r.instance,
            &obs(JobStatus::Suspended),
            "2024-01-02T09:04:05Z",
        );
        assert_eq!(
            fixup.actions,
            [Action::SuspendJob {
                name: job.clone(),
                suspend: false
            }]
        );
        // A Job that finished as it was suspended is judged.
        let done = step_at(
            &s.instance,
            &Observation {
                suspended: true,
                ..obs(JobStatus::Finished(AttemptOutcome::Exited(0)))
            },
            "2024-01-02T06:05:00Z",
        );
        assert_eq!(done.instance.state, State::Done);
        // Halting a suspended run deletes its Job.
        let halted = step_at(
            &s.instance,
            &Observation {
                halted: true,
                ..held
            },
            "2024-01-02T07:00:00Z",
        );
        assert_eq!(
            (halted.instance.state, halted.actions),
            (State::Halted, vec![Action::DeleteJob { name: job }])
        );
    }

    #[test]
    fn a_suspended_queued_instance_is_not_started() {
        let o = Observation {
            suspended: true,
            ..obs(JobStatus::Missing)
        };
        let s = run(&fresh(), &o, "2024-01-02T06:00:00Z");
        assert_eq!((s.instance.state, s.actions.len()), (State::Queued, 0));
        assert_eq!(s.instance.reason.as_deref(), Some("Suspended"));
        let resumed = run(
            &s.instance,
            &obs(JobStatus::Missing),
            "2024-01-02T06:00:01Z",
        );
        assert_eq!(resumed.instance.state, State::Submitting);
        assert_eq!(resumed.instance.reason, None);
    }

    #[test]
    fn waiting_for_dependencies_costs_nothing_and_times_out_into_error() {
        let waiting = Observation {
            dependencies: Err("waiting for dependencies: ingest 2024-01-02T05 (Running)".into()),
            dependency_deadline: Some(utc("2024-01-02T08:00:00Z")),
            ..obs(JobStatus::Missing)
        };
        let s = run(&fresh(), &waiting, "2024-01-02T06:00:00Z");
        assert_eq!(
            (s.instance.state, s.actions.len(), s.instance.tries),
            (State::Queued, 0, 0)
        );
        assert_eq!(s.instance.reason.as_deref(), Some("WaitingForDependencies"));
        assert_eq!(
            s.instance.message,
            "waiting for dependencies: ingest 2024-01-02T05 (Running)"
        );
        assert_eq!(
            s.requeue_after,
            Some(Duration::hours(2)),
            "looks again at the deadline"
        );
        assert!(s.transitions.is_empty());
        let met = run(
            &s.instance,
            &obs(JobStatus::Missing),
            "2024-01-02T07:00:00Z",
        );
        assert_eq!(met.instance.state, State::Submitting);
        let late = run(&s.instance, &waiting, "2024-01-02T08:00:00Z");
        assert_eq!(late.instance.state, State::Error);
        assert_eq!(late.transitions[0].reason, "DependencyTimeout");
        assert!(
            late.instance.message.contains("spec.dependencyTimeout"),
            "{}",
            late.instance.message
        );
        let forever = Observation {
            dependency_deadline: None,
            ..waiting
        };
        let s = run(&fresh(), &forever, "2030-01-01T00:00:00Z");
        assert_eq!((s.instance.state, s.requeue_after), (State::Queued, None));
    }

    #[test]
    fn happy_path_creates_one_job_and_ends_done() {
        let s1 = run(&fresh(), &obs(JobStatus::Missing), "2024-01-02T06:00:00Z");
        assert_eq!(
            path(&s1),
            [
                (State::Queued, State::Prepare),
                (State::Prepare, State::Submitting)
            ]
        );
        assert_eq!(
            s1.actions,
            [Action::CreateJob {
                name: "hb-2024-01-02t05-1".into(),
                execution: 1
            }]
        );
        assert_eq!(s1.instance.tries, 1);
        // The controller restarts before it saw the Job: same name, no second execution.
        let again = run(
            &s1.instance,
            &obs(JobStatus::Missing),
            "2024-01-02T06:00:01Z",
        );
        assert_eq!(again.actions, s1.actions);
        assert_eq!(again.instance.execution, 1);
        let s2 = run(
            &s1.instance,
            &obs(JobStatus::Pending),
            "2024-01-02T06:00:02Z",
        );
        assert_eq!(s2.instance.state, State::Submitted);
        let s3 = run(
            &s2.instance,
            &obs(JobStatus::Running(None)),
            "2024-01-02T06:00:05Z",
        );
        assert_eq!(s3.instance.state, State::Running);
        assert_eq!(s3.instance.message, "running on attempt 1");
        let s4 = run(
            &s3.instance,
            &obs(JobStatus::Finished(AttemptOutcome::Exited(0))),
            "2024-01-02T06:01:00Z",
        );
        assert_eq!(
            path(&s4),
            [
                (State::Running, State::Terminated),
                (State::Terminated, State::Done)
            ]
        );
        assert!(s4.actions.is_empty());
        assert_eq!(s4.instance.last_exit_code, Some(0));
        // Terminal states never move again.
        let s5 = run(
            &s4.instance,
            &obs(JobStatus::Missing),
            "2024-01-03T00:00:00Z",
        );
        assert!(s5.transitions.is_empty() && s5.actions.is_empty());
    }

    #[test]
    fn exit_20_waits_ten_minutes_then_runs_a_new_job_and_deletes_the_old() {
        let mut i = fresh();
        i.state = State::Running;
        i.tries = 1;
        i.execution = 1;
        i.job = Some("hb-2024-01-02t05-1".into());
        let s = run(
            &i,
            &obs(JobStatus::Finished(AttemptOutcome::Exited(20))),
            "2024-01-02T06:00:00Z",
        );
        assert_eq!(s.instance.state, State::Queued);
        assert_eq!(s.instance.counters.cost, 0.1);
        assert_eq!(
            s.instance.next_attempt_at,
            Some(utc("2024-01-02T06:10:00Z"))
        );
        assert_eq!(s.requeue_after, Some(Duration::minutes(10)));
        let early = run(
            &s.instance,
            &obs(JobStatus::Finished(AttemptOutcome::Exited(20))),
            "2024-01-02T06:05:00Z",
        );
        assert!(early.transitions.is_empty());
        assert_eq!(early.requeue_after, Some(Duration::minutes(5)));
        let due = run(
            &s.instance,
            &obs(JobStatus::Finished(AttemptOutcome::Exited(20))),
            "2024-01-02T06:10:00Z",
        );
        assert_eq!(
            due.actions,
            [
                Action::DeleteJob {
                    name: "hb-2024-01-02t05-1".into()
                },
                Action::CreateJob {
                    name: "hb-2024-01-02t05-2".into(),
                    execution: 2
                },
            ]
        );
        assert_eq!(due.instance.tries, 2);
        assert_eq!(
            due.instance.counters.cost, 0.1,
            "cost is not reset by a retry"
        );
    }

    #[test]
    fn retry_now_skips_the_delay_without_resetting_cost() {
        let mut i = fresh();
        i.next_attempt_at = Some(utc("2024-01-02T07:00:00Z"));
        i.counters.cost = 3.0;
        let mut o = obs(JobStatus::Missing);
        o.retry_now = true;
        let s = run(&i, &o, "2024-01-02T06:00:00Z");
        assert_eq!(s.transitions[0].reason, "RetryNow");
        assert_eq!(s.instance.state, State::Submitting);
        assert_eq!(s.instance.counters.cost, 3.0);
    }

    #[test]
    fn exit_50_is_an_error_without_retry() {
        let mut i = fresh();
        i.state = State::Running;
        i.tries = 1;
        let s = run(
            &i,
            &obs(JobStatus::Finished(AttemptOutcome::Exited(50))),
            "2024-01-02T06:00:00Z",
        );
        assert_eq!(s.instance.state, State::Error);
        assert!(s.actions.is_empty());
        assert_eq!(s.transitions.last().unwrap().reason, "FatalExitCode");
    }

    #[test]
    fn waiting_for_a_slot_names_the_limit() {
        let mut o = obs(JobStatus::Missing);
        o.slot = Err(
            "waiting for a slot: 3 of 3 instances of workflow hb active (spec.concurrency)".into(),
        );
        let s = run(&fresh(), &o, "2024-01-02T06:00:00Z");
        assert_eq!(s.instance.state, State::Queued);
        assert!(s.instance.message.contains("spec.concurrency"));
        assert!(s.actions.is_empty() && s.transitions.is_empty());
    }

    #[test]
    fn halt_deletes_the_running_job() {
        let mut i = fresh();
        i.state = State::Running;
        i.job = Some("hb-2024-01-02t05-1".into());
        let mut o = obs(JobStatus::Running(None));
        o.halted = true;
        let s = run(&i, &o, "2024-01-02T06:00:00Z");
        assert_eq!(s.instance.state, State::Halted);
        assert_eq!(
            s.actions,
            [Action::DeleteJob {
                name: "hb-2024-01-02t05-1".into()
            }]
        );
        // A queued instance halts without touching anything.
        let q = run(&fresh(), &o, "2024-01-02T06:00:00Z");
        assert_eq!(q.instance.state, State::Halted);
        assert!(q.actions.is_empty());
    }

    #[test]
    fn running_timeout_is_enforced_by_the_controller() {
        let mut i = fresh();
        i.state = State::Running;
        i.tries = 1;
        i.job = Some("hb-2024-01-02t05-1".into());
        i.running_since = Some(utc("2024-01-02T06:00:00Z"));
        let mut o = obs(JobStatus::Running(Some(utc("2024-01-02T06:00:00Z"))));
        o.running_timeout = Some(Duration::hours(2));
        let before = run(&i, &o, "2024-01-02T07:00:00Z");
        assert_eq!(before.requeue_after, Some(Duration::hours(1)));
        let after = run(&i, &o, "2024-01-02T08:00:00Z");
        assert_eq!(
            after.actions,
            [Action::DeleteJob {
                name: "hb-2024-01-02t05-1".into()
            }]
        );
        assert_eq!(after.instance.state, State::Queued);
        assert_eq!(after.instance.counters.cost, 1.0);
        assert!(after.transitions.iter().any(|t| t.reason == "TimedOut"));
    }

    #[test]
    fn a_vanished_job_is_a_failed_attempt_not_a_rerun() {
        let mut i = fresh();
        i.state = State::Running;
        i.tries = 1;
        i.execution = 1;
        i.job = Some("hb-2024-01-02t05-1".into());
        let s = run(&i, &obs(JobStatus::Missing), "2024-01-02T06:00:00Z");
        assert_eq!(s.instance.state, State::Queued);
        assert!(
            s.actions.is_empty(),
            "no Job is created for the vanished execution"
        );
        assert_eq!(s.instance.counters.cost, 1.0);
    }

    #[test]
    fn infrastructure_failures_cost_nothing() {
        let mut i = fresh();
        i.state = State::Submitted;
        i.tries = 1;
        let s = run(
            &i,
            &obs(JobStatus::Finished(AttemptOutcome::Infrastructure(
                "ImagePullBackOff".into(),
            ))),
            "2024-01-02T06:00:00Z",
        );
        assert_eq!(s.instance.state, State::Queued);
        assert_eq!(s.instance.counters.cost, 0.0);
        assert_eq!(s.instance.counters.infrastructure_failures, 1);
    }

    #[test]
    fn reopen_resets_the_run_but_not_the_execution_counter() {
        let mut done = fresh();
        done.state = State::Done;
        done.tries = 3;
        done.execution = 3;
        done.counters.cost = 2.0;
        let (i, t) = reopen(&done, "Reopened", "re-opened by adhoc trigger".into());
        assert_eq!(
            (i.state, i.tries, i.execution, i.counters.cost),
            (State::Queued, 0, 3, 0.0)
        );
        assert_eq!((t.from, t.to), (State::Done, State::Queued));
        let s = run(&i, &obs(JobStatus::Missing), "2024-01-02T06:00:00Z");
        assert!(s.actions.contains(&Action::CreateJob {
            name: "hb-2024-01-02t05-4".into(),
            execution: 4
        }));
    }
}
