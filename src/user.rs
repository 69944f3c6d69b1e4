//! The user commands (`trigger`, `backfill`, `halt`, `retry`, `logs`, `status`), following
//! kubectl's conventions. The same binary works as a kubectl plugin when installed as
//! `kubectl-charon`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};
use chrono::{DateTime, Utc};
use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use kube::api::{ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::controller::error::{ApiErrorExt, ApiFailure};
use crate::controller::triggers;
use charon_core::resources::{
    Backfill, BackfillSpec, InstanceState, Reprocess, Workflow, WorkflowInstance,
};

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
    /// Print the log of an instance's Job.
    Logs {
        #[command(flatten)]
        target: Target,
        /// The instance.
        instance: String,
        /// Follow the log.
        #[arg(short = 'f', long)]
        follow: bool,
        /// The execution number (default: the latest; only the latest Job is kept).
        #[arg(long)]
        attempt: Option<u32>,
    },
    /// Show workflows: next trigger, active instances, recent partitions, backfills.
    Status {
        #[command(flatten)]
        target: Target,
        /// One workflow (default: all in the namespace).
        workflow: Option<String>,
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
        /// Which finished partitions to run again.
        #[arg(long, value_enum, default_value_t = ReprocessArg::All)]
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
        /// The backfill.
        name: String,
    },
    /// Stop a backfill; unless graceful, its active instances are halted too.
    Halt {
        /// The backfill.
        name: String,
        /// Let active instances finish.
        #[arg(long)]
        graceful: bool,
    },
    /// Change a running backfill.
    Edit {
        /// The backfill.
        name: String,
        /// New concurrency.
        #[arg(long)]
        concurrency: u32,
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
        | UserCommand::Status { target, .. } => target.clone(),
    };
    let client = crate::operator::client(
        target.kubeconfig.as_ref(),
        target.context.as_deref(),
        crate::operator::CLI_AGENT,
    )
    .await
    .context("connecting to the cluster")?;
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let ctx = Ctx {
        client,
        namespace,
        output: target.output,
    };
    match command {
        UserCommand::Trigger {
            workflow,
            parameter,
            env,
            allow_future,
            ..
        } => {
            ctx.trigger(&workflow, &parameter, &env, allow_future, out)
                .await
        }
        UserCommand::Backfill { command, .. } => ctx.backfill(command, out).await,
        UserCommand::Halt { instance, .. } => {
            ctx.instance(&instance).await?;
            let patch = serde_json::json!({"spec": {"halted": true}});
            ctx.instances()
                .patch(&instance, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            writeln!(out, "workflowinstance/{instance} halted")?;
            Ok(())
        }
        UserCommand::Retry { instance, .. } => {
            let current = ctx.instance(&instance).await?;
            let state = current.status.map(|s| s.state).unwrap_or_default();
            if state.is_terminal() {
                bail!(
                    "instance {instance} is {}; to run it again use `charon trigger {} {}`",
                    state.as_str(),
                    current.spec.workflow,
                    current.spec.parameter
                );
            }
            let patch = serde_json::json!({"metadata": {"annotations": {
                crate::controller::RETRY_NOW: Utc::now().to_rfc3339()
            }}});
            ctx.instances()
                .patch(&instance, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            writeln!(out, "workflowinstance/{instance} will retry now")?;
            Ok(())
        }
        UserCommand::Logs {
            instance,
            follow,
            attempt,
            ..
        } => ctx.logs(&instance, follow, attempt, out).await,
        UserCommand::Status { workflow, .. } => ctx.status(workflow.as_deref(), out).await,
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
        let wf = self.workflow(workflow).await?;
        let triggered = match triggers::adhoc(
            &self.client,
            &wf,
            parameter,
            env,
            allow_future,
            Utc::now(),
        )
        .await
        {
            Ok(t) => t,
            Err(triggers::TriggerError::Refused(reason)) => bail!("{reason}"),
            Err(triggers::TriggerError::Api(err)) => return Err(err.into()),
        };
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
                self.print(&instance, out)?;
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
                let wf = self.workflow(&workflow).await?;
                let valid = charon_core::validate::workflow(&wf.spec).map_err(|e| {
                    anyhow!(
                        "workflow {workflow} is invalid: {}",
                        charon_core::validate::message(&e)
                    )
                })?;
                let spec = BackfillSpec {
                    workflow: workflow.clone(),
                    start: start.clone(),
                    end: end.clone(),
                    concurrency,
                    reverse,
                    reprocess: reprocess.into(),
                    halted: false,
                    graceful_halt: false,
                    allow_future,
                    description,
                    env: Vec::new(),
                };
                // Refuse what the controller would refuse, before creating anything.
                let partitions =
                    charon_core::backfill::resolve_range(&valid.schedule, &spec, Utc::now())
                        .map_err(|e| anyhow!("{e}"))?;
                let name = name.unwrap_or_else(|| {
                    charon_core::backfill::default_name(&workflow, &start, &end)
                });
                let mut backfill = Backfill::new(&name, spec);
                backfill.metadata.owner_references =
                    kube::Resource::controller_owner_ref(&wf, &()).map(|o| vec![o]);
                let created = self
                    .backfills()
                    .create(&PostParams::default(), &backfill)
                    .await
                    .map_err(|e| match e.failure() {
                        ApiFailure::Conflict => {
                            anyhow!(
                                "backfill {name:?} already exists; pass --name to choose another"
                            )
                        }
                        _ => anyhow::Error::from(e),
                    })?;
                match self.output {
                    Output::Table => writeln!(
                        out,
                        "backfill/{} created: {} partitions of {workflow}, at most {concurrency} at a time",
                        created.name_any(),
                        partitions.len()
                    )?,
                    _ => self.print(&created, out)?,
                }
                Ok(())
            }
            BackfillCommand::List => {
                let mut list = self.backfills().list(&ListParams::default()).await?.items;
                list.sort_by_key(|b| b.name_any());
                if self.output != Output::Table {
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
                let backfill = self
                    .backfills()
                    .get(&name)
                    .await
                    .map_err(|e| not_found("backfill", &name, &self.namespace, e))?;
                if self.output != Output::Table {
                    return self.print(&backfill, out);
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
                let patch = serde_json::json!({"spec": {"concurrency": concurrency}});
                self.backfills()
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| not_found("backfill", &name, &self.namespace, e))?;
                writeln!(out, "backfill/{name} concurrency set to {concurrency}")?;
                Ok(())
            }
        }
    }

    async fn logs(
        &self,
        instance: &str,
        follow: bool,
        attempt: Option<u32>,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let current = self.instance(instance).await?;
        let status = current.status.clone().unwrap_or_default();
        let job = match attempt {
            Some(n) => charon_core::names::job_name(instance, n),
            None => status
                .job
                .clone()
                .ok_or_else(|| anyhow!("instance {instance} has not started a Job yet"))?,
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut list = pods
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await?
            .items;
        list.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let Some(pod) = list.last() else {
            bail!("no pod of Job {job} exists (earlier attempts' Jobs are deleted)");
        };
        let params = LogParams {
            follow,
            container: Some(charon_core::job::MAIN_CONTAINER.to_string()),
            ..Default::default()
        };
        if follow {
            let mut lines = pods.log_stream(&pod.name_any(), &params).await?.lines();
            while let Some(line) = lines.try_next().await? {
                writeln!(out, "{line}")?;
                out.flush()?;
            }
        } else {
            let text = pods.logs(&pod.name_any(), &params).await?;
            write!(out, "{text}")?;
        }
        Ok(())
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
        if self.output != Output::Table {
            #[derive(Serialize)]
            struct Report<'a> {
                workflows: &'a [Workflow],
                instances: Vec<&'a WorkflowInstance>,
                backfills: Vec<&'a Backfill>,
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
            };
            return self.print(&report, out);
        }
        if workflows.is_empty() {
            writeln!(out, "No workflows in namespace {}.", self.namespace)?;
            return Ok(());
        }
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let now = Utc::now();
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
                    s.message
                )?;
            }
            let recent: Vec<&&WorkflowInstance> = mine.iter().rev().take(24).rev().collect();
            if !recent.is_empty() {
                let cells: String = recent
                    .iter()
                    .map(|i| {
                        cell(
                            i.status.as_ref().map(|s| s.state).unwrap_or_default(),
                            colour,
                        )
                    })
                    .collect();
                writeln!(
                    out,
                    "  Recent:   {cells}  ({} … {})",
                    recent[0].spec.parameter,
                    recent[recent.len() - 1].spec.parameter
                )?;
                writeln!(
                    out,
                    "            D done, E error, H halted, R running, Q queued, . other"
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
        Ok(())
    }
}

/// One character per partition, coloured on a terminal.
fn cell(state: InstanceState, colour: bool) -> String {
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
fn progress_line(backfill: &Backfill, now: DateTime<Utc>) -> String {
    let s = backfill.status.clone().unwrap_or_default();
    let c = &s.counts;
    let finished = c.done + c.failed + c.skipped;
    let total = c.total.max(1);
    let width = 20;
    let filled = (finished as usize * width) / total as usize;
    let bar: String = "#".repeat(filled) + &".".repeat(width - filled);
    let percent = finished * 100 / total;
    let eta = match (s.started_at, finished) {
        (Some(start), f) if f > 0 && f < c.total => {
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

fn write_table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
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
