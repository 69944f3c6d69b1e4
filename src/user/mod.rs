//! The user commands (`trigger`, `backfill`, `halt`, `retry`, `logs`, `status`, `suspend`,
//! `resume`), following kubectl's conventions. The same binary works as a kubectl plugin
//! when installed as `kubectl-charon`.

mod connect;
mod pods;
mod render;

use connect::*;
use pods::*;
use render::*;

pub(crate) use connect::connect as connect_target;
pub(crate) use render::current_message;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail};
use chrono::{DateTime, Utc};
use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use kube::api::{ListParams, LogParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::actions;
use crate::controller::error::{ApiErrorExt, ApiFailure};
use crate::logstore::LogStore;
use charon_core::resources::{
    Backfill, BackfillSpec, BackfillState, InstanceState, Pool, Quota, Reprocess, Workflow,
    WorkflowInstance,
};
use charon_core::validate::FieldError;

/// Flags every user command takes, as kubectl spells them.
#[derive(Clone, Debug, clap::Args)]
pub struct Target {
    /// Path to the kubeconfig file.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Human-readable.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// A user command.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Trigger one partition of a workflow now (or re-run it if it finished).
    Trigger {
        #[command(flatten)]
        target: Target,
        /// The workflow.
        workflow: String,
        /// The partition, parsed leniently (`2024-01-02T05:30` means the 05:00 partition of an
        /// hourly workflow).
        parameter: String,
        /// Extra environment for this instance only (repeatable).
        #[arg(short = 'e', long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Allow a partition that is not due yet.
        #[arg(long)]
        allow_future: bool,
    },
    /// Create, list, show, halt or edit backfills.
    Backfill {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: BackfillCommand,
    },
    /// Halt an instance: no further attempts; its running Job is deleted.
    Halt {
        #[command(flatten)]
        target: Target,
        /// The instance.
        instance: String,
    },
    /// Skip the remaining retry delay of a queued instance.
    Retry {
        #[command(flatten)]
        target: Target,
        /// The instance.
        instance: String,
    },
    /// Suspend a workflow (no new partitions are triggered; backfills still run) or an
    /// instance (its Job is suspended, its pods stopped; resumed, the same execution goes on).
    Suspend {
        #[command(flatten)]
        target: Target,
        /// NAME (a Workflow of that name, else an instance), cwf/NAME or cwfi/NAME.
        name: String,
    },
    /// Resume a suspended workflow (partitions that fell due meanwhile are skipped) or
    /// instance (the same execution goes on, at no cost).
    Resume {
        #[command(flatten)]
        target: Target,
        /// NAME (a Workflow of that name, else an instance), cwf/NAME or cwfi/NAME.
        name: String,
    },
    /// Print the log of an instance's Job.
    Logs {
        #[command(flatten)]
        target: Target,
        /// The instance.
        instance: String,
        /// Follow the log.
        #[arg(short = 'f', long)]
        follow: bool,
        /// The execution number (default: the latest).
        #[arg(long, conflicts_with = "all")]
        attempt: Option<u32>,
        /// Every attempt of `status.attempts`, each after a header line.
        #[arg(long, conflicts_with = "follow")]
        all: bool,
        /// Only this step of a pipeline (default: every step, each after a header line).
        #[arg(long, value_name = "STEP")]
        step: Option<String>,
        /// The log store the operator archives into (`file:///dir` or `s3://bucket/prefix`,
        /// with the standard `AWS_*` variables): where the logs of finished attempts are
        /// read once their pods are gone.
        #[arg(long, value_name = "URL", env = "CHARON_LOG_STORE")]
        log_store: Option<String>,
    },
    /// Show workflows: next trigger, active instances, recent partitions, backfills.
    Status {
        #[command(flatten)]
        target: Target,
        /// One workflow (default: all in the namespace).
        workflow: Option<String>,
    },
    /// Show a partition's upstream partitions (spec.dependsOn) and the downstream partitions
    /// that wait for it, with their states.
    Deps {
        #[command(flatten)]
        target: Target,
        /// The workflow.
        workflow: String,
        /// The partition, parsed leniently (default: the last one triggered).
        parameter: Option<String>,
    },
}

/// Backfill subcommands.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum BackfillCommand {
    /// Create a backfill of [start, end).
    Create {
        /// The workflow.
        workflow: String,
        /// First partition (inclusive).
        #[arg(long)]
        start: String,
        /// End of the range (exclusive).
        #[arg(long)]
        end: String,
        /// How many of its instances may be active at once.
        #[arg(long, default_value_t = 1)]
        concurrency: u32,
        /// Newest partitions first.
        #[arg(long)]
        reverse: bool,
        /// Which finished partitions to run again (any case: All, all).
        #[arg(long, value_enum, ignore_case = true, default_value_t = ReprocessArg::All)]
        reprocess: ReprocessArg,
        /// A note for people.
        #[arg(long)]
        description: Option<String>,
        /// Allow partitions that are not due yet.
        #[arg(long)]
        allow_future: bool,
        /// Name of the Backfill (default: derived from the workflow and range).
        #[arg(long)]
        name: Option<String>,
    },
    /// List backfills.
    List,
    /// Show one backfill with its partitions.
    Show {
        /// The backfill (or a prefix of its name that only it has).
        name: String,
    },
    /// Stop a backfill; unless graceful, its active instances are halted too.
    Halt {
        /// The backfill (or a prefix of its name that only it has).
        name: String,
        /// Let active instances finish.
        #[arg(long)]
        graceful: bool,
    },
    /// Change a running backfill.
    Edit {
        /// The backfill (or a prefix of its name that only it has).
        name: String,
        /// New concurrency.
        #[arg(long)]
        concurrency: u32,
    },
    /// Resume a halted backfill: it triggers its pending partitions again (partitions whose
    /// instances the halt stopped stay Failed).
    Resume {
        /// The backfill (or a prefix of its name that only it has).
        name: String,
    },
}

/// `--reprocess` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReprocessArg {
    /// Re-run every finished partition.
    All,
    /// Re-run partitions that ended in Error or Halted.
    Failed,
    /// Only partitions with no instance.
    Missing,
}

impl From<ReprocessArg> for Reprocess {
    fn from(r: ReprocessArg) -> Reprocess {
        match r {
            ReprocessArg::All => Reprocess::All,
            ReprocessArg::Failed => Reprocess::Failed,
            ReprocessArg::Missing => Reprocess::Missing,
        }
    }
}

/// Runs a user command, writing to `out`.
pub async fn run(command: UserCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let target = match &command {
        UserCommand::Trigger { target, .. }
        | UserCommand::Backfill { target, .. }
        | UserCommand::Halt { target, .. }
        | UserCommand::Retry { target, .. }
        | UserCommand::Logs { target, .. }
        | UserCommand::Status { target, .. }
        | UserCommand::Deps { target, .. }
        | UserCommand::Suspend { target, .. }
        | UserCommand::Resume { target, .. } => target.clone(),
    };
    let (client, server) = connect(&target).await?;
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let ctx = Ctx {
        client,
        namespace,
        output: target.output,
    };
    ctx.command(command, out)
        .await
        .map_err(|err| connection_error(err, &server))
}

impl Ctx {
    async fn command(&self, command: UserCommand, out: &mut dyn Write) -> anyhow::Result<()> {
        match command {
            UserCommand::Trigger {
                workflow,
                parameter,
                env,
                allow_future,
                ..
            } => {
                self.trigger(&workflow, &parameter, &env, allow_future, out)
                    .await
            }
            UserCommand::Backfill { command, .. } => self.backfill(command, out).await,
            UserCommand::Halt { instance, .. } => {
                actions::halt(&self.client, &self.namespace, &instance).await?;
                writeln!(out, "workflowinstance/{instance} halted")?;
                Ok(())
            }
            UserCommand::Retry { instance, .. } => {
                actions::retry(&self.client, &self.namespace, &instance, Utc::now()).await?;
                writeln!(out, "workflowinstance/{instance} will retry now")?;
                Ok(())
            }
            UserCommand::Logs {
                instance,
                follow,
                attempt,
                all,
                step,
                log_store,
                ..
            } => {
                let store = log_store
                    .as_deref()
                    .map(crate::logstore::LogStore::open)
                    .transpose()?;
                if all {
                    self.all_logs(&instance, step.as_deref(), store.as_ref(), out)
                        .await
                } else {
                    self.logs(
                        &instance,
                        follow,
                        attempt,
                        step.as_deref(),
                        store.as_ref(),
                        out,
                    )
                    .await
                }
            }
            UserCommand::Status { workflow, .. } => self.status(workflow.as_deref(), out).await,
            UserCommand::Deps {
                workflow,
                parameter,
                ..
            } => self.deps(&workflow, parameter.as_deref(), out).await,
            UserCommand::Suspend { name, .. } => self.suspend(&name, true, out).await,
            UserCommand::Resume { name, .. } => self.suspend(&name, false, out).await,
        }
    }
}

struct Ctx {
    client: Client,
    namespace: String,
    output: Output,
}

fn not_found(kind: &str, name: &str, namespace: &str, err: kube::Error) -> anyhow::Error {
    match err.failure() {
        ApiFailure::NotFound => anyhow!("{kind} {name:?} not found in namespace {namespace}"),
        _ => err.into(),
    }
}

impl Ctx {
    fn instances(&self) -> Api<WorkflowInstance> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn backfills(&self) -> Api<Backfill> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn workflows(&self) -> Api<Workflow> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn instance(&self, name: &str) -> anyhow::Result<WorkflowInstance> {
        self.instances()
            .get(name)
            .await
            .map_err(|e| not_found("workflowinstance", name, &self.namespace, e))
    }

    async fn workflow(&self, name: &str) -> anyhow::Result<Workflow> {
        self.workflows()
            .get(name)
            .await
            .map_err(|e| not_found("workflow", name, &self.namespace, e))
    }

    /// Prints `value` as JSON or YAML. Callers leave out managedFields first
    /// ([`without_managed_fields`]), as `kubectl get -o json` does unless asked.
    fn print<T: Serialize>(&self, value: &T, out: &mut dyn Write) -> anyhow::Result<()> {
        match self.output {
            Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
            _ => write!(out, "{}", serde_yaml::to_string(value)?)?,
        }
        Ok(())
    }

    async fn trigger(
        &self,
        workflow: &str,
        parameter: &str,
        env: &[String],
        allow_future: bool,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let env = parse_env(env)?;
        let triggered = actions::trigger(
            &self.client,
            &self.namespace,
            workflow,
            parameter,
            env,
            allow_future,
            Utc::now(),
        )
        .await?;
        match self.output {
            Output::Table => writeln!(
                out,
                "workflowinstance/{} {} (partition {}, trigger {})",
                triggered.instance,
                if triggered.reopened {
                    "re-opened"
                } else {
                    "created"
                },
                triggered.parameter,
                triggered.trigger_id
            )?,
            _ => {
                let instance = self.instance(&triggered.instance).await?;
                self.print(&without_managed_fields(instance), out)?;
            }
        }
        Ok(())
    }

    async fn backfill(&self, command: BackfillCommand, out: &mut dyn Write) -> anyhow::Result<()> {
        match command {
            BackfillCommand::Create {
                workflow,
                start,
                end,
                concurrency,
                reverse,
                reprocess,
                description,
                allow_future,
                name,
            } => {
                if concurrency == 0 {
                    bail!("--concurrency must be at least 1");
                }
                let request = actions::NewBackfill {
                    spec: BackfillSpec {
                        workflow: workflow.clone(),
                        start,
                        end,
                        concurrency,
                        reverse,
                        reprocess: reprocess.into(),
                        halted: false,
                        graceful_halt: false,
                        allow_future,
                        description,
                        priority: None,
                        env: Vec::new(),
                    },
                    name,
                };
                let planned = actions::create_backfill(
                    &self.client,
                    &self.namespace,
                    request,
                    Utc::now(),
                    false,
                )
                .await
                .map_err(|e| match e {
                    actions::ActionError::Field(e) => anyhow!("{}", in_flags(&e)),
                    actions::ActionError::Conflict(m) => {
                        anyhow!(
                            "{}",
                            m.replace("choose another name", "pass --name to choose another")
                        )
                    }
                    e => e.into(),
                })?;
                let (created, partitions) = (planned.backfill, planned.partitions);
                match self.output {
                    Output::Table => writeln!(
                        out,
                        "backfill/{} created: {} partitions of {workflow}, at most {concurrency} at a time",
                        created.name_any(),
                        partitions.len()
                    )?,
                    _ => self.print(&without_managed_fields(created), out)?,
                }
                Ok(())
            }
            BackfillCommand::List => {
                let mut list = self.backfills().list(&ListParams::default()).await?.items;
                list.sort_by_key(|b| b.name_any());
                if self.output != Output::Table {
                    let list: Vec<Backfill> =
                        list.into_iter().map(without_managed_fields).collect();
                    return self.print(&list, out);
                }
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|b| {
                        let s = b.status.clone().unwrap_or_default();
                        vec![
                            b.name_any(),
                            b.spec.workflow.clone(),
                            format!("{}/{}", b.spec.start, b.spec.end),
                            b.spec.concurrency.to_string(),
                            format!("{:?}", s.state),
                            s.progress.unwrap_or_default(),
                            s.counts.active.to_string(),
                        ]
                    })
                    .collect();
                write_table(
                    out,
                    &[
                        "NAME",
                        "WORKFLOW",
                        "RANGE",
                        "CONCURRENCY",
                        "STATE",
                        "PROGRESS",
                        "ACTIVE",
                    ],
                    &rows,
                )
            }
            BackfillCommand::Show { name } => {
                let backfill = self.backfill_named(&name).await?;
                let name = backfill.name_any();
                if self.output != Output::Table {
                    return self.print(&without_managed_fields(backfill), out);
                }
                let s = backfill.status.clone().unwrap_or_default();
                writeln!(out, "Name:        {name}")?;
                writeln!(out, "Workflow:    {}", backfill.spec.workflow)?;
                writeln!(
                    out,
                    "Range:       [{}, {})",
                    backfill.spec.start, backfill.spec.end
                )?;
                writeln!(out, "Concurrency: {}", backfill.spec.concurrency)?;
                writeln!(out, "State:       {:?}", s.state)?;
                writeln!(out, "Progress:    {}", progress_line(&backfill, Utc::now()))?;
                let c = &s.counts;
                writeln!(
                    out,
                    "Counts:      triggered {} active {} done {} failed {} skipped {}",
                    c.triggered, c.active, c.done, c.failed, c.skipped
                )?;
                if let Some(valid) = charon_core::resources::find_condition(
                    &s.conditions,
                    charon_core::resources::condition_type::VALID,
                ) && valid.status == charon_core::resources::ConditionStatus::False
                {
                    writeln!(out, "Invalid:     {}", valid.message)?;
                }
                let rows: Vec<Vec<String>> = s
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.parameter.clone(),
                            p.state.clone(),
                            p.instance.clone().unwrap_or_default(),
                            p.reason.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                writeln!(out)?;
                write_table(out, &["PARTITION", "STATE", "INSTANCE", "REASON"], &rows)
            }
            BackfillCommand::Halt { name, graceful } => {
                let name = self.backfill_named(&name).await?.name_any();
                let patch = serde_json::json!({"spec": {"halted": true, "gracefulHalt": graceful}});
                self.backfills()
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| not_found("backfill", &name, &self.namespace, e))?;
                let how = if graceful {
                    "halted; active instances may finish"
                } else {
                    "halted with its active instances"
                };
                writeln!(out, "backfill/{name} {how}")?;
                Ok(())
            }
            BackfillCommand::Edit { name, concurrency } => {
                if concurrency == 0 {
                    bail!("--concurrency must be at least 1");
                }
                let name = self.backfill_named(&name).await?.name_any();
                let patch = serde_json::json!({"spec": {"concurrency": concurrency}});
                self.backfills()
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| not_found("backfill", &name, &self.namespace, e))?;
                writeln!(out, "backfill/{name} concurrency set to {concurrency}")?;
                Ok(())
            }
            BackfillCommand::Resume { name } => {
                let backfill = self.backfill_named(&name).await?;
                let name = backfill.name_any();
                if !backfill.spec.halted {
                    bail!("backfill {name} is not halted");
                }
                let patch = serde_json::json!({"spec": {"halted": false, "gracefulHalt": false}});
                self.backfills()
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| not_found("backfill", &name, &self.namespace, e))?;
                writeln!(
                    out,
                    "backfill/{name} resumed; its pending partitions are triggered again"
                )?;
                Ok(())
            }
        }
    }

    /// The backfill named `name`, or else the only one whose name starts with it (default
    /// names are long: `<workflow>-backfill-<start>-<end>`).
    async fn backfill_named(&self, name: &str) -> anyhow::Result<Backfill> {
        if let Some(backfill) = self.backfills().get_opt(name).await? {
            return Ok(backfill);
        }
        let mut matching: Vec<Backfill> = self
            .backfills()
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|b| !name.is_empty() && b.name_any().starts_with(name))
            .collect();
        match matching.len() {
            0 => bail!(
                "backfill {name:?} not found in namespace {}",
                self.namespace
            ),
            1 => Ok(matching.remove(0)),
            n => {
                let mut names: Vec<String> = matching.iter().map(|b| b.name_any()).collect();
                names.sort();
                bail!(
                    "{n} backfills start with {name:?} ({}); give more of the name",
                    names.join(", ")
                )
            }
        }
    }

    /// `charon suspend|resume NAME`: a Workflow of that name, else an instance; `cwf/NAME`
    /// and `cwfi/NAME` name the kind.
    async fn suspend(&self, name: &str, suspend: bool, out: &mut dyn Write) -> anyhow::Result<()> {
        let (kind, bare) = match name.split_once('/') {
            Some((kind, bare)) => (Some(kind.to_ascii_lowercase()), bare),
            None => (None, name),
        };
        let workflow = match kind.as_deref() {
            None => match self.workflows().get_opt(bare).await? {
                Some(workflow) => Some(workflow),
                None if self.instances().get_opt(bare).await?.is_some() => None,
                None => bail!(
                    "no workflow or workflowinstance {bare:?} in namespace {}",
                    self.namespace
                ),
            },
            Some(
                "cwf" | "workflow" | "workflows" | "workflow.charon.dev" | "workflows.charon.dev",
            ) => Some(self.workflow(bare).await?),
            Some(
                "cwfi"
                | "workflowinstance"
                | "workflowinstances"
                | "workflowinstance.charon.dev"
                | "workflowinstances.charon.dev",
            ) => None,
            Some(other) => bail!(
                "{name:?}: unknown kind {other:?}; name a workflow as cwf/NAME (or an instance as cwfi/NAME)"
            ),
        };
        let Some(workflow) = workflow else {
            return self.suspend_instance(bare, suspend, out).await;
        };
        let unchanged = workflow.spec.suspend == suspend;
        let flag = ("workflow", "suspend", suspend);
        if !self
            .set_flag(self.workflows(), workflow, flag, unchanged, out)
            .await?
        {
            return Ok(());
        }
        let what = match (suspend, unchanged) {
            (true, true) => "is suspended already",
            (false, true) => "is not suspended",
            (true, false) => "suspended: no new partitions are triggered (backfills still run)",
            (false, false) => {
                "resumed; partitions that fell due while it was suspended are skipped"
            }
        };
        writeln!(out, "workflow/{bare} {what}")?;
        Ok(())
    }

    /// `charon deps WORKFLOW [PARAMETER]`: the partition's upstream and downstream
    /// partitions (SPEC §15), with the states of their instances.
    async fn deps(
        &self,
        name: &str,
        parameter: Option<&str>,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        use charon_core::dependency;
        let workflows = self.workflows().list(&ListParams::default()).await?.items;
        let instances = self.instances().list(&ListParams::default()).await?.items;
        let Some(workflow) = workflows.iter().find(|w| w.name_any() == name) else {
            bail!(
                "workflow {name:?} not found in namespace {}",
                self.namespace
            );
        };
        let schedule_of = |w: &Workflow| {
            charon_core::validate::workflow(&w.spec, charon_core::validate::Policy::PERMISSIVE)
                .map(|v| v.schedule)
                .map_err(|e| charon_core::validate::message(&e))
        };
        let schedule = schedule_of(workflow)
            .map_err(|e| anyhow!("workflow {name} has an invalid spec: {e}"))?;
        let parameter = match parameter {
            Some(text) => text.to_string(),
            None => workflow
                .status
                .as_ref()
                .and_then(|s| s.last_triggered.as_ref())
                .map(|t| t.parameter.clone())
                .ok_or_else(|| {
                    anyhow!("workflow {name} has triggered no partition yet; name one: charon deps {name} PARAMETER")
                })?,
        };
        let logical = schedule
            .parse_parameter(&parameter)
            .map_err(|e| anyhow!("{parameter:?}: {e}"))?;
        let state_of = |instance: &str| {
            instances
                .iter()
                .find(|i| i.name_any() == instance)
                .map(|i| i.status.clone().unwrap_or_default().state)
        };
        #[derive(Serialize)]
        struct Row {
            workflow: String,
            partitions: &'static str,
            parameter: String,
            instance: String,
            state: Option<InstanceState>,
        }
        #[derive(Serialize)]
        struct Report {
            workflow: String,
            parameter: String,
            upstream: Vec<Row>,
            downstream: Vec<Row>,
            problems: Vec<String>,
        }
        let mut report = Report {
            workflow: name.to_string(),
            parameter: schedule.parameter(logical),
            upstream: Vec::new(),
            downstream: Vec::new(),
            problems: Vec::new(),
        };
        let find = |n: &str| workflows.iter().find(|w| w.name_any() == n);
        for dep in &workflow.spec.depends_on {
            let Some(up) = find(&dep.workflow) else {
                report
                    .problems
                    .push(format!("upstream workflow {} does not exist", dep.workflow));
                continue;
            };
            let up_schedule = match schedule_of(up) {
                Ok(s) => s,
                Err(e) => {
                    report.problems.push(format!(
                        "upstream workflow {} is invalid: {e}",
                        dep.workflow
                    ));
                    continue;
                }
            };
            match dependency::needs(
                &schedule,
                &dep.workflow,
                &up_schedule,
                dep.partitions,
                logical,
            ) {
                Ok(needs) => report.upstream.extend(needs.into_iter().map(|n| Row {
                    state: state_of(&n.instance),
                    workflow: n.workflow,
                    partitions: dep.partitions.as_str(),
                    parameter: n.parameter,
                    instance: n.instance,
                })),
                Err(why) => report.problems.push(why),
            }
        }
        for down in &workflows {
            let Some(dep) = down.spec.depends_on.iter().find(|d| d.workflow == name) else {
                continue;
            };
            let Ok(down_schedule) = schedule_of(down) else {
                continue;
            };
            let down_name = down.name_any();
            for q in
                dependency::dependent_partitions(&down_schedule, &schedule, dep.partitions, logical)
            {
                let parameter = down_schedule.parameter(q);
                let instance = charon_core::names::instance_name(&down_name, &parameter);
                report.downstream.push(Row {
                    state: state_of(&instance),
                    workflow: down_name.clone(),
                    partitions: dep.partitions.as_str(),
                    parameter,
                    instance,
                });
            }
        }
        if self.output != Output::Table {
            return self.print(&report, out);
        }
        let state_of_self = state_of(&charon_core::names::instance_name(name, &report.parameter));
        writeln!(
            out,
            "Workflow {name}  partition {}  {}",
            report.parameter,
            state_of_self.map_or("not triggered", InstanceState::as_str)
        )?;
        for (title, rows) in [
            ("Upstream", &report.upstream),
            ("Downstream", &report.downstream),
        ] {
            let done = rows
                .iter()
                .filter(|r| r.state == Some(InstanceState::Done))
                .count();
            writeln!(out, "{title}: {} partitions, {done} Done", rows.len())?;
            for r in rows {
                writeln!(
                    out,
                    "  {:<24} {:<9} {:<26} {}",
                    r.workflow,
                    r.partitions,
                    r.parameter,
                    r.state.map_or("not triggered", InstanceState::as_str)
                )?;
            }
        }
        for problem in &report.problems {
            writeln!(out, "Problem: {problem}")?;
        }
        Ok(())
    }

    /// Sets `spec.<field>` of `object` (a `kind`) to `value` unless `unchanged`; with `-o
    /// json|yaml` prints the object and returns false (the caller prints its table line only
    /// when true).
    async fn set_flag<K>(
        &self,
        api: Api<K>,
        object: K,
        (kind, field, value): (&str, &str, bool),
        unchanged: bool,
        out: &mut dyn Write,
    ) -> anyhow::Result<bool>
    where
        K: kube::Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let patched = if unchanged {
            object
        } else {
            let patch = serde_json::json!({"spec": {field: value}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| not_found(kind, &name, &self.namespace, e))?
        };
        if self.output != Output::Table {
            self.print(&without_managed_fields(patched), out)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// `charon suspend|resume cwfi/NAME`: sets the instance's `spec.suspended` (SPEC §15).
    async fn suspend_instance(
        &self,
        name: &str,
        suspend: bool,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let (instance, changed) =
            actions::suspend_instance(&self.client, &self.namespace, name, suspend).await?;
        let unchanged = !changed;
        if self.output != Output::Table {
            self.print(&without_managed_fields(instance), out)?;
            return Ok(());
        }
        let what = match (suspend, unchanged) {
            (true, true) => "is suspended already",
            (false, true) => "is not suspended",
            (true, false) => {
                "suspended: its Job is suspended and its pods stopped (a queued instance does not start)"
            }
            (false, false) => "resumed: the same execution goes on, at no cost",
        };
        writeln!(out, "workflowinstance/{name} {what}")?;
        Ok(())
    }

    async fn logs(
        &self,
        instance: &str,
        follow: bool,
        attempt: Option<u32>,
        step: Option<&str>,
        store: Option<&LogStore>,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let current = self.instance(instance).await?;
        let parts = log_parts(&current, step)?;
        let attempts = current
            .status
            .as_ref()
            .map(|s| s.attempts.as_slice())
            .unwrap_or_default();
        let wanted = match attempt {
            Some(n) => attempts.iter().find(|a| a.execution == n),
            None => attempts.iter().max_by_key(|a| a.execution),
        };
        if array_of(&current).is_some() {
            if follow {
                bail!(
                    "instance {instance} is a job array, one pod per task: -f follows one container; use kubectl logs -f --prefix -l {}={}",
                    charon_core::job::LABEL_INSTANCE,
                    charon_core::names::label_value(instance)
                );
            }
            let execution = match (wanted, attempt) {
                (Some(record), _) => record.execution,
                (None, Some(n)) => n,
                (None, None) => self.job_of(&current, None).await?.1,
            };
            if !self.array_logs(&current, execution, store, out).await? {
                bail!(
                    "attempt {execution} of instance {instance} has no task log left (neither a pod nor an archived copy)"
                );
            }
            return Ok(());
        }
        // A finished attempt whose log is in the store is read from there: its pod may be
        // gone, and what the store holds is the whole log.
        if let Some(record) = wanted.filter(|a| a.archived) {
            let key = archive_key(&current, record.execution);
            match store {
                Some(store) if archived_parts(store, &key, &parts, out).await? => return Ok(()),
                Some(_) => {}
                None if self.job_of(&current, Some(record.execution)).await.is_err() => {
                    bail!(
                        "attempt {} of instance {instance} is archived and its Job is gone: pass --log-store URL (or set CHARON_LOG_STORE) to read it from the log store",
                        record.execution
                    )
                }
                None => {}
            }
        }
        let (job, execution) = match self.job_of(&current, attempt).await {
            Ok(found) => found,
            Err(err) => match wanted {
                Some(record) if record.finished_at.is_some() => {
                    bail!("{err}; {}", not_kept(record, store.is_some()))
                }
                _ => return Err(err),
            },
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = format!(
            "{}={},{}={execution}",
            charon_core::job::LABEL_INSTANCE,
            charon_core::names::label_value(instance),
            charon_core::job::LABEL_EXECUTION,
        );
        let pod = started_pod(&pods, &selector, &job).await?;
        // One container's log is printed as it is; several end each on a line of its own.
        pod_parts(&pods, &pod, &parts, follow, parts.len() > 1, out).await
    }

    /// Every attempt's log (SPEC §11), oldest first, each after `== attempt N (exit E, reason
    /// R) ==`; an attempt whose Job is gone says its log is not kept.
    async fn all_logs(
        &self,
        instance: &str,
        step: Option<&str>,
        store: Option<&LogStore>,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let current = self.instance(instance).await?;
        let parts = log_parts(&current, step)?;
        let attempts = current
            .status
            .as_ref()
            .map(|s| s.attempts.clone())
            .unwrap_or_default();
        if attempts.is_empty() {
            bail!("instance {instance} has no attempt on record yet");
        }
        for attempt in attempts {
            let exit = attempt
                .exit_code
                .map_or_else(|| "none".to_string(), |c| c.to_string());
            let reason = match (attempt.outcome, attempt.reason.as_str()) {
                (None, _) => "running".to_string(),
                (_, "") => "none".to_string(),
                (_, reason) => reason.to_string(),
            };
            writeln!(
                out,
                "== attempt {} (exit {exit}, reason {reason}) ==",
                attempt.execution
            )?;
            self.attempt_log(&current, &parts, &attempt, store, out)
                .await?;
        }
        Ok(())
    }

    /// One attempt's log: from the archive when it has it, else from the attempt's pod (or
    /// an array's task pods), else a line saying why it is not kept.
    async fn attempt_log(
        &self,
        current: &WorkflowInstance,
        parts: &[LogPart],
        attempt: &charon_core::resources::AttemptRecord,
        store: Option<&LogStore>,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let instance = current.name_any();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        if attempt.archived
            && let Some(store) = store
            && archived_parts(store, &archive_key(current, attempt.execution), parts, out).await?
        {
            return Ok(());
        }
        if array_of(current).is_some() {
            if !self
                .array_logs(current, attempt.execution, store, out)
                .await?
            {
                writeln!(
                    out,
                    "(log not kept: {})",
                    not_kept(attempt, store.is_some())
                )?;
            }
            return Ok(());
        }
        let pod = match self.job_of(current, Some(attempt.execution)).await {
            Ok((job, execution)) => {
                let selector = format!(
                    "{}={},{}={execution}",
                    charon_core::job::LABEL_INSTANCE,
                    charon_core::names::label_value(&instance),
                    charon_core::job::LABEL_EXECUTION,
                );
                match existing_pod(&pods, &selector).await? {
                    Some(pod) => Ok(pod),
                    None => Err(format!("no pod of Job {} exists any more", job.name_any())),
                }
            }
            Err(_) => Err(format!("its Job {} was deleted", attempt.job)),
        };
        let pod = match pod {
            Ok(pod) => pod,
            Err(why) => {
                writeln!(
                    out,
                    "(log not kept: {why}; {})",
                    not_kept(attempt, store.is_some())
                )?;
                return Ok(());
            }
        };
        pod_parts(&pods, &pod, parts, false, true, out).await?;
        Ok(())
    }

    /// The logs of an array's tasks in one attempt, by task id, each after `== task ID ==`:
    /// from the archive where it has them, else from the task pods left. False: none found.
    async fn array_logs(
        &self,
        instance: &WorkflowInstance,
        execution: u32,
        store: Option<&LogStore>,
        out: &mut dyn Write,
    ) -> anyhow::Result<bool> {
        let Some(array) = array_of(instance) else {
            return Ok(false);
        };
        if let Some(store) = store {
            let key = archive_key(instance, execution);
            let mut found = false;
            for position in 0..array.count() {
                let id = array.id(position);
                let part = charon_core::archive::part_key(&key, &format!("task-{id}"));
                let mut log = Vec::new();
                if archived_log(store, &part, &mut log).await? {
                    writeln!(out, "== task {id} ==")?;
                    out.write_all(&log)?;
                    found = true;
                }
            }
            if found {
                return Ok(true);
            }
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = format!(
            "{}={},{}={execution}",
            charon_core::job::LABEL_INSTANCE,
            charon_core::names::label_value(&instance.name_any()),
            charon_core::job::LABEL_EXECUTION,
        );
        let mut listed = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        // The newest pod of each task (a task's failed pod is not replaced, but be sure).
        listed.sort_by_key(|p| {
            std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        });
        let mut tasks: Vec<(i64, String)> = listed
            .iter()
            .filter(|p| not_started(p).is_none())
            .filter_map(|p| Some((charon_core::pipeline::pod_task_id(p)?, p.name_any())))
            .collect();
        tasks.sort_by_key(|(id, _)| *id);
        tasks.dedup_by_key(|(id, _)| *id);
        for (id, pod) in &tasks {
            writeln!(out, "== task {id} ==")?;
            let params = LogParams {
                container: Some(charon_core::job::MAIN_CONTAINER.to_string()),
                ..Default::default()
            };
            write_ended(out, &pods.logs(pod, &params).await?)?;
        }
        Ok(!tasks.is_empty())
    }

    /// The Job of an instance's attempt (the latest by default) and its execution number.
    /// Jobs are found by their labels, so a Job the controller has created but not recorded
    /// in the status yet (it records an attempt up to 5 s later) is found too.
    async fn job_of(
        &self,
        instance: &WorkflowInstance,
        attempt: Option<u32>,
    ) -> anyhow::Result<(Job, u32)> {
        let name = instance.name_any();
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut selector = format!(
            "{}={}",
            charon_core::job::LABEL_INSTANCE,
            charon_core::names::label_value(&name)
        );
        if let Some(n) = attempt {
            selector.push_str(&format!(",{}={n}", charon_core::job::LABEL_EXECUTION));
        }
        let uid = instance.metadata.uid.as_deref();
        let latest = jobs
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            // Only this instance's Jobs (not those of an earlier instance of the same name).
            .filter(|j| {
                j.owner_references()
                    .iter()
                    .any(|o| Some(o.uid.as_str()) == uid)
            })
            .filter_map(|j| {
                let execution = j
                    .labels()
                    .get(charon_core::job::LABEL_EXECUTION)?
                    .parse()
                    .ok()?;
                Some((j, execution))
            })
            .max_by_key(|(_, execution)| *execution);
        match (latest, attempt) {
            (Some(found), _) => Ok(found),
            (None, Some(n)) => bail!(
                "attempt {n} of instance {name} has no Job (earlier attempts' Jobs are deleted)"
            ),
            (None, None) => bail!("instance {name} has not started a Job yet"),
        }
    }

    async fn status(&self, workflow: Option<&str>, out: &mut dyn Write) -> anyhow::Result<()> {
        let workflows = match workflow {
            Some(name) => vec![self.workflow(name).await?],
            None => {
                let mut list = self.workflows().list(&ListParams::default()).await?.items;
                list.sort_by_key(|w| w.name_any());
                list
            }
        };
        let instances = self.instances().list(&ListParams::default()).await?.items;
        let backfills = self.backfills().list(&ListParams::default()).await?.items;
        // Pools and Quotas show only where their kinds are installed and readable.
        let named: std::collections::BTreeSet<&str> = workflows
            .iter()
            .flat_map(|w| w.spec.pools.iter().map(|p| p.name.as_str()))
            .collect();
        let pools: Vec<Pool> = match Api::<Pool>::all(self.client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(list) => list
                .items
                .into_iter()
                .filter(|p| named.contains(p.name_any().as_str()))
                .map(without_managed_fields)
                .collect(),
            Err(_) => Vec::new(),
        };
        let quotas: Vec<Quota> =
            match Api::<Quota>::namespaced(self.client.clone(), &self.namespace)
                .list(&ListParams::default())
                .await
            {
                Ok(list) => list.items.into_iter().map(without_managed_fields).collect(),
                Err(_) => Vec::new(),
            };
        if self.output != Output::Table {
            let workflows: Vec<Workflow> =
                workflows.into_iter().map(without_managed_fields).collect();
            let instances: Vec<WorkflowInstance> =
                instances.into_iter().map(without_managed_fields).collect();
            let backfills: Vec<Backfill> =
                backfills.into_iter().map(without_managed_fields).collect();
            #[derive(Serialize)]
            struct Report<'a> {
                workflows: &'a [Workflow],
                instances: Vec<&'a WorkflowInstance>,
                backfills: Vec<&'a Backfill>,
                pools: &'a [Pool],
                quotas: &'a [Quota],
            }
            let names: Vec<String> = workflows.iter().map(|w| w.name_any()).collect();
            let report = Report {
                workflows: &workflows,
                instances: instances
                    .iter()
                    .filter(|i| names.contains(&i.spec.workflow))
                    .collect(),
                backfills: backfills
                    .iter()
                    .filter(|b| names.contains(&b.spec.workflow))
                    .collect(),
                pools: &pools,
                quotas: &quotas,
            };
            return self.print(&report, out);
        }
        if workflows.is_empty() {
            writeln!(out, "No workflows in namespace {}.", self.namespace)?;
            return Ok(());
        }
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let now = Utc::now();
        let mut grid = false;
        for wf in &workflows {
            let name = wf.name_any();
            let status = wf.status.clone().unwrap_or_default();
            writeln!(out, "Workflow {name}  ({})", wf.spec.schedule)?;
            if let Some(c) = charon_core::resources::find_condition(
                &status.conditions,
                charon_core::resources::condition_type::VALID,
            ) && c.status == charon_core::resources::ConditionStatus::False
            {
                writeln!(out, "  Invalid:  {}", c.message)?;
            }
            if wf.spec.suspend {
                writeln!(out, "  Suspended")?;
            }
            if !wf.spec.depends_on.is_empty() {
                let deps: Vec<String> = wf
                    .spec
                    .depends_on
                    .iter()
                    .map(|d| format!("{} ({})", d.workflow, d.partitions.as_str()))
                    .collect();
                writeln!(out, "  Depends:  {}", deps.join(", "))?;
            }
            if !wf.spec.pools.is_empty() {
                let claims: Vec<String> = wf
                    .spec
                    .pools
                    .iter()
                    .map(|p| {
                        format!(
                            "{} ({} slot{})",
                            p.name,
                            p.slots,
                            if p.slots == 1 { "" } else { "s" }
                        )
                    })
                    .collect();
                writeln!(
                    out,
                    "  Pools:    {}, priority {}",
                    claims.join(", "),
                    wf.spec.priority
                )?;
            }
            match &status.next_trigger {
                Some(next) => writeln!(
                    out,
                    "  Next:     {} at {}",
                    next.parameter,
                    next.trigger_at.format("%Y-%m-%d %H:%M:%SZ")
                )?,
                None => writeln!(out, "  Next:     -")?,
            }
            let mut mine: Vec<&WorkflowInstance> = instances
                .iter()
                .filter(|i| i.spec.workflow == name)
                .collect();
            mine.sort_by_key(|i| i.spec.logical_time);
            let active: Vec<&&WorkflowInstance> = mine
                .iter()
                .filter(|i| i.status.as_ref().is_some_and(|s| !s.state.is_terminal()))
                .collect();
            writeln!(out, "  Active:   {}", active.len())?;
            for i in active.iter().take(10) {
                let s = i.status.clone().unwrap_or_default();
                writeln!(
                    out,
                    "    {:<24} {:<10} {}",
                    i.spec.parameter,
                    s.state.as_str(),
                    current_message(&s, now)
                )?;
            }
            let schedule = charon_core::validate::workflow(
                &wf.spec,
                charon_core::validate::Policy::PERMISSIVE,
            )
            .ok()
            .map(|v| v.schedule);
            if let Some((cells, first, last)) = recent_grid(&mine, schedule.as_ref(), colour) {
                writeln!(out, "  Recent:   {cells}  ({first} … {last})")?;
                grid = true;
            }
            // The latest partitions that took more than one attempt, from the run history.
            let retried: Vec<&&WorkflowInstance> = mine
                .iter()
                .filter(|i| i.status.as_ref().is_some_and(|s| s.attempts.len() > 1))
                .collect();
            if !retried.is_empty() {
                writeln!(out, "  Retried:")?;
            }
            for i in retried.iter().rev().take(5).rev() {
                let attempts = i
                    .status
                    .as_ref()
                    .map(|s| s.attempts.as_slice())
                    .unwrap_or_default();
                writeln!(
                    out,
                    "    {:<24} {} attempts: {}",
                    i.spec.parameter,
                    attempts.len(),
                    attempts_line(attempts)
                )?;
            }
            for b in backfills.iter().filter(|b| b.spec.workflow == name) {
                writeln!(
                    out,
                    "  Backfill {}: {}",
                    b.name_any(),
                    progress_line(b, now)
                )?;
            }
            writeln!(out)?;
        }
        for pool in &pools {
            pool_lines(pool, &workflows, &instances, out)?;
        }
        for quota in &quotas {
            let status = quota.status.clone().unwrap_or_default();
            let limit = |v: Option<u32>| v.map_or("no limit".to_string(), |v| v.to_string());
            writeln!(
                out,
                "Quota {}: {} active (max {}), {} queued (max {}{})",
                quota.name_any(),
                status.active,
                limit(quota.spec.max_active),
                status.queued,
                limit(quota.spec.max_queued),
                if status.excess > 0 {
                    format!(", {} over it from natural triggers", status.excess)
                } else {
                    String::new()
                }
            )?;
            if let Some(requests) = &status.requests {
                let show = |q: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
                    q.as_ref().map_or("0".to_string(), |q| q.0.clone())
                };
                writeln!(
                    out,
                    "  Requests: cpu {}, memory {}",
                    show(&requests.cpu),
                    show(&requests.memory)
                )?;
            }
        }
        if grid {
            writeln!(
                out,
                "Recent: D done, E error, H halted, R running, Q queued, - no instance, . other"
            )?;
        }
        Ok(())
    }
}

/// A pool in `charon status`: its use, then this namespace's instances holding its slots and
/// those waiting for them, with why.
fn pool_lines(
    pool: &Pool,
    workflows: &[Workflow],
    instances: &[WorkflowInstance],
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let name = pool.name_any();
    let status = pool.status.clone().unwrap_or_default();
    writeln!(
        out,
        "Pool {name}: {} of {} slots used, {} queued",
        status.used, pool.spec.slots, status.queued
    )?;
    for ns in &status.namespaces {
        writeln!(
            out,
            "  {:<20} used {:<4} queued {:<4} usage {:.0} slot-s",
            ns.namespace, ns.used, ns.queued, ns.usage
        )?;
    }
    let members: Vec<String> = workflows
        .iter()
        .filter(|w| w.spec.pools.iter().any(|p| p.name == name))
        .map(|w| w.name_any())
        .collect();
    let mut ours: Vec<&WorkflowInstance> = instances
        .iter()
        .filter(|i| members.contains(&i.spec.workflow))
        .collect();
    ours.sort_by_key(|i| i.spec.logical_time);
    for i in &ours {
        let s = i.status.clone().unwrap_or_default();
        if s.state.is_active() {
            writeln!(out, "  holds:   {:<40} {}", i.name_any(), s.state.as_str())?;
        }
    }
    for i in &ours {
        let s = i.status.clone().unwrap_or_default();
        if s.state == InstanceState::Queued
            && s.reason.as_deref() == Some(charon_core::instance::waiting::SLOT)
        {
            writeln!(out, "  waits:   {:<40} {}", i.name_any(), s.message)?;
        }
    }
    Ok(())
}

/// How many partitions the `Recent` grid of `charon status` shows.
const GRID_WIDTH: usize = 24;

/// Parses `K=V` pairs for `--env`.
pub fn parse_env(pairs: &[String]) -> anyhow::Result<Vec<EnvVar>> {
    let mut seen = BTreeMap::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("--env {pair:?}: expected NAME=VALUE"))?;
        if k.is_empty() {
            bail!("--env {pair:?}: the name must not be empty");
        }
        seen.insert(k.to_string(), v.to_string());
    }
    Ok(seen
        .into_iter()
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            value_from: None,
        })
        .collect())
}

/// How long `charon logs` waits for the pod of a new attempt to start its container, as
/// `kubectl logs --pod-running-timeout` does by default.
const POD_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// `object` without `metadata.managedFields`: bookkeeping of the API server that `kubectl get
/// -o json|yaml` hides unless asked, and so does Charon's output.
/// The newest Job of `instance` and its execution, found by its labels: an attempt under way
/// has one before the operator records the attempt (for the web UI).
pub(crate) async fn newest_job(
    client: &Client,
    instance: &WorkflowInstance,
) -> anyhow::Result<(String, u32)> {
    let ctx = Ctx {
        client: client.clone(),
        namespace: instance.namespace().unwrap_or_default(),
        output: Output::Table,
    };
    let (job, execution) = ctx.job_of(instance, None).await?;
    Ok((job.name_any(), execution))
}

/// The log of `attempt` of `instance`, as `charon logs --all` prints it without its header:
/// for the web UI.
pub(crate) async fn attempt_text(
    client: &Client,
    instance: &WorkflowInstance,
    attempt: &charon_core::resources::AttemptRecord,
    store: Option<&LogStore>,
) -> anyhow::Result<String> {
    let ctx = Ctx {
        client: client.clone(),
        namespace: instance.namespace().unwrap_or_default(),
        output: Output::Table,
    };
    let parts = log_parts(instance, None)?;
    let mut text = Vec::new();
    ctx.attempt_log(instance, &parts, attempt, store, &mut text)
        .await?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn without_managed_fields<K: kube::Resource>(mut object: K) -> K {
    object.meta_mut().managed_fields = None;
    object
}

/// An instance's attempts in one line: each one's exit code or how it ended, oldest first
/// (`exit 1, exit 1, exit 0`; `timed out`, `halted`, `running`).
fn attempts_line(attempts: &[charon_core::resources::AttemptRecord]) -> String {
    use charon_core::resources::AttemptOutcomeKind;
    attempts
        .iter()
        .map(|a| match (a.exit_code, a.outcome) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(AttemptOutcomeKind::TimedOut)) => "timed out".to_string(),
            (None, Some(AttemptOutcomeKind::Halted)) => "halted".to_string(),
            (None, Some(_)) => "no exit code".to_string(),
            (None, None) => "running".to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The store key of an instance's attempt (SPEC §11).
fn archive_key(instance: &WorkflowInstance, execution: u32) -> String {
    charon_core::archive::log_key(
        &instance.namespace().unwrap_or_default(),
        instance.metadata.uid.as_deref().unwrap_or_default(),
        execution,
        None,
    )
}

/// The array an instance's current run executes, if it is a job array's.
fn array_of(instance: &WorkflowInstance) -> Option<charon_core::resources::ArraySpec> {
    instance.status.as_ref()?.snapshot.as_ref()?.array.clone()
}

/// One part of an attempt's log that `charon logs` prints: a container of the pod, with the
/// header printed before it when there are several.
struct LogPart {
    container: String,
    /// The step, whose log is archived under its own key.
    step: Option<String>,
    header: Option<String>,
}

/// What `charon logs` prints of each attempt: the main container's log, or a pipeline's
/// steps (every one, each after `== step NAME ==`, or the one `step` names).
fn log_parts(instance: &WorkflowInstance, step: Option<&str>) -> anyhow::Result<Vec<LogPart>> {
    let name = instance.name_any();
    let steps: Vec<String> = instance
        .status
        .as_ref()
        .and_then(|s| s.snapshot.as_ref())
        .map(|s| s.steps.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default();
    match step {
        Some(_) if steps.is_empty() => {
            bail!("instance {name} runs no pipeline: --step needs spec.template.steps")
        }
        Some(step) if !steps.iter().any(|s| s == step) => bail!(
            "instance {name} has no step {step:?} (its steps: {})",
            steps.join(", ")
        ),
        Some(step) => Ok(vec![LogPart {
            container: step.to_string(),
            step: Some(step.to_string()),
            header: None,
        }]),
        None if steps.is_empty() => Ok(vec![LogPart {
            container: charon_core::job::MAIN_CONTAINER.to_string(),
            step: None,
            header: None,
        }]),
        None => Ok(steps
            .into_iter()
            .map(|step| LogPart {
                container: step.clone(),
                header: Some(format!("== step {step} ==")),
                step: Some(step),
            })
            .collect()),
    }
}

/// Prints the parts of a pod's log, each after its header; a step that never ran says so.
/// With `follow`, each is followed until its container ends; with `end_lines`, each ends on
/// a line of its own.
async fn pod_parts(
    pods: &Api<Pod>,
    pod: &str,
    parts: &[LogPart],
    follow: bool,
    end_lines: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    for part in parts {
        if let Some(header) = &part.header {
            writeln!(out, "{header}")?;
        }
        if part.step.is_some() && !container_started(pods, pod, &part.container, follow).await? {
            writeln!(out, "(step {} did not run in this attempt)", part.container)?;
            continue;
        }
        let params = LogParams {
            follow,
            container: Some(part.container.clone()),
            ..Default::default()
        };
        if follow {
            let mut lines = pods.log_stream(pod, &params).await?.lines();
            while let Some(line) = lines.try_next().await? {
                writeln!(out, "{line}")?;
                out.flush()?;
            }
        } else if end_lines {
            write_ended(out, &pods.logs(pod, &params).await?)?;
        } else {
            write!(out, "{}", pods.logs(pod, &params).await?)?;
        }
    }
    Ok(())
}

/// Writes `text`, ending it with a newline if it has text and none, so what follows starts a
/// line.
fn write_ended(out: &mut dyn Write, text: &str) -> std::io::Result<()> {
    write!(out, "{text}")?;
    if !text.is_empty() && !text.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}

/// Copies the archived parts of an attempt's log to `out`; false when the store has none of
/// them.
async fn archived_parts(
    store: &LogStore,
    key: &str,
    parts: &[LogPart],
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    if let [LogPart { step: None, .. }] = parts {
        return archived_log(store, key, out).await;
    }
    let mut buffer: Vec<u8> = Vec::new();
    let mut found = false;
    for part in parts {
        if let Some(header) = &part.header {
            writeln!(buffer, "{header}")?;
        }
        let step = part.step.as_deref().unwrap_or_default();
        let part_key = charon_core::archive::part_key(key, step);
        if archived_log(store, &part_key, &mut buffer).await? {
            found = true;
        } else {
            writeln!(buffer, "(step {step} did not run in this attempt)")?;
        }
        // Stream what there is so far rather than holding every step.
        if found {
            out.write_all(&buffer)?;
            buffer.clear();
        }
    }
    Ok(found)
}

/// Copies an archived log to `out`; false when the store has none under `key`.
async fn archived_log(store: &LogStore, key: &str, out: &mut dyn Write) -> anyhow::Result<bool> {
    let Some(mut chunks) = store.get(key).await? else {
        return Ok(false);
    };
    let mut last = b'\n';
    while let Some(chunk) = chunks.try_next().await? {
        out.write_all(&chunk)?;
        last = chunk.last().copied().unwrap_or(last);
    }
    if last != b'\n' {
        writeln!(out)?;
    }
    out.flush()?;
    Ok(true)
}

/// Why a finished attempt's log cannot be shown once its pod is gone.
fn not_kept(attempt: &charon_core::resources::AttemptRecord, have_store: bool) -> String {
    match (attempt.archived, have_store) {
        (true, false) => "it is archived: pass --log-store URL (or set CHARON_LOG_STORE) to read it".to_string(),
        (true, true) => "it is marked archived but the log store has no copy (deleted from the store?)".to_string(),
        (false, _) => "it was never archived (no log store was configured when it ran, or archiving failed: see the instance's LogNotArchived Events)".to_string(),
    }
}
