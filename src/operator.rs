//! `charon operator`: the controllers, leader election, and the metrics and health endpoints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::FutureExt;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::controller::leader::{LeaseConfig, Stop, run_elected};
use crate::controller::shards::{self, Shards};
use crate::controller::{self, Clock, EventLevel, Metrics, Options, SystemClock};
use crate::throttle::{self, RateLimit};

/// Arguments of `charon operator`.
#[derive(Clone, Debug, clap::Args)]
pub struct OperatorArgs {
    /// Kubeconfig to use (default: `$KUBECONFIG`, `~/.kube/config`, or the in-cluster account).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
    /// Watch only this namespace (repeat for several; default: all namespaces).
    #[arg(long = "namespace", short = 'n', value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
    /// Elect a leader with a Lease so several replicas can run; only the leader writes.
    #[arg(long)]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "charon-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// How long the Lease stays valid without renewal, in seconds.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// This replica's identity in the Lease and in Events (default: the pod or host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Split the workflows into this many shards, each replica acting on those whose Lease
    /// (`<lease-name>-shard-<i>`) it holds, a fair share each; 1 (the default) is not sharded.
    /// Replaces `--leader-elect`: every replica works. Use the same value on every replica.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: u32,
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,
    /// Which Kubernetes Events to write: `all` (one per instance transition) or `warnings`.
    #[arg(long, value_enum, default_value_t = EventLevel::All)]
    pub events: EventLevel,
    /// How long stopping (SIGTERM, Ctrl-C) may take, in seconds, whatever the API server
    /// does: reconciles under way get most of it, releasing the Lease the rest (at most 2 s).
    /// Keep it below the pod's `terminationGracePeriodSeconds`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_timeout_seconds: u64,
    /// Average API requests per second the controllers may make (default: no limit). The
    /// Lease has its own, unlimited client so renewals never wait behind the controllers.
    #[arg(long, value_name = "QPS")]
    pub api_qps: Option<f64>,
    /// Requests let through at once under `--api-qps` (default: twice `--api-qps`).
    #[arg(long, value_name = "N", requires = "api_qps")]
    pub api_burst: Option<u32>,
    /// Let `podOverrides` ask for privileged or privilege-escalating containers, added
    /// capabilities, host namespaces, `hostPath` volumes and `nodeName` (refused by default):
    /// only for clusters that enforce Pod Security Admission on every namespace.
    #[arg(long)]
    pub allow_privileged_pods: bool,
    /// Archive every attempt's log into this store: `file:///dir` or `s3://bucket/prefix`
    /// (endpoint from `AWS_ENDPOINT_URL`, credentials from the standard `AWS_*` variables).
    /// Without one, logs live only as long as their pods.
    #[arg(long, value_name = "URL", env = "CHARON_LOG_STORE")]
    pub log_store: Option<String>,
    /// The image that provides `charon-launcher` to pipelines and job arrays (copied into
    /// each such pod by an init container): the operator's own image (default: the
    /// released one of this version).
    #[arg(long, value_name = "IMAGE", env = "CHARON_LAUNCHER_IMAGE")]
    pub launcher_image: Option<String>,
    /// Path of `charon-launcher` inside `--launcher-image`.
    #[arg(long, value_name = "PATH", default_value = "/charon-launcher")]
    pub launcher_command: String,
    /// Serve the web UI and its API here for teams: each request's bearer token is checked
    /// with a TokenReview and each action with a SubjectAccessReview (SPEC §12).
    #[arg(long, value_name = "ADDR")]
    pub ui_address: Option<SocketAddr>,
}

/// User agent of the web UI's requests.
pub const UI_AGENT: &str = concat!("charon-ui/", env!("CARGO_PKG_VERSION"));

/// Settings of a running operator (what the arguments resolve to).
#[derive(Clone)]
pub struct Settings {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Leader election, if enabled.
    pub lease: Option<LeaseConfig>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Replica name.
    pub identity: String,
    /// Which Events to write.
    pub events: EventLevel,
    /// How long stopping may take once `shutdown` resolved (see [`stop_budget`]).
    pub shutdown_timeout: Duration,
    /// The client for the Lease, when it is not the controllers' (which may be rate-limited).
    pub lease_client: Option<Client>,
    /// What workflows may ask for beyond the defaults (`--allow-privileged-pods`).
    pub policy: charon_core::validate::Policy,
    /// Where attempts' logs are archived (`--log-store`).
    pub log_store: Option<Arc<crate::logstore::LogStore>>,
    /// Where pipelines and arrays get `charon-launcher` from.
    pub launcher: crate::controller::LauncherConfig,
    /// Shards the workflows are split into across replicas (`--shards`); with more than one,
    /// `lease` names the shard Leases instead of a leader Lease.
    pub shards: u32,
}

/// Default of [`Settings::shutdown_timeout`], as `--shutdown-timeout-seconds`.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Most of a stop spent on releasing the Lease (a get and an update).
const MAX_RELEASE: Duration = Duration::from_secs(2);

/// How a stop of `total` is spent: the time the controllers get to finish the reconciles
/// under way, and the time releasing the Lease gets after that.
pub fn stop_budget(total: Duration) -> (Duration, Duration) {
    let release = (total / 5).min(MAX_RELEASE);
    (total.saturating_sub(release), release)
}

/// User agent of the operator's requests (the RBAC test tells its calls apart by it).
pub const OPERATOR_AGENT: &str = concat!("charon-operator/", env!("CARGO_PKG_VERSION"));
/// User agent of the user commands' requests.
pub const CLI_AGENT: &str = concat!("charon/", env!("CARGO_PKG_VERSION"));

/// A client for `config` that names itself `agent` in the User-Agent header and waits out
/// the server's `Retry-After` on 429 (see [`throttle`]).
pub fn client_with_agent(config: kube::Config, agent: &str) -> anyhow::Result<Client> {
    limited_client(config, agent, None)
}

/// [`client_with_agent`] that also keeps to `limit`, when given.
pub fn limited_client(
    mut config: kube::Config,
    agent: &str,
    limit: Option<RateLimit>,
) -> anyhow::Result<Client> {
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_str(agent)?,
    ));
    Ok(throttle::client(config, limit)?)
}

/// Builds a client from a kubeconfig path and context, or infers one.
pub async fn client(
    kubeconfig: Option<&PathBuf>,
    context: Option<&str>,
    agent: &str,
) -> anyhow::Result<Client> {
    client_with_agent(kube_config(kubeconfig, context).await?, agent)
}

/// The client configuration from a kubeconfig path and context, or inferred.
pub async fn kube_config(
    kubeconfig: Option<&PathBuf>,
    context: Option<&str>,
) -> anyhow::Result<kube::Config> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    };
    Ok(config)
}

fn default_identity() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("charon-{}", std::process::id()))
}

/// Runs `charon operator` until SIGTERM or Ctrl-C.
pub async fn main(args: OperatorArgs) -> anyhow::Result<()> {
    // Handled from the start, so a stop while the server is still being reached is prompt
    // too, and never lost.
    let shutdown = stop_signals()
        .context("handling SIGTERM and Ctrl-C")?
        .shared();
    let limit = args
        .api_qps
        .map(|qps| RateLimit::new(qps, args.api_burst))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let config = kube_config(args.kubeconfig.as_ref(), args.context.as_deref()).await?;
    let client = limited_client(config.clone(), OPERATOR_AGENT, limit)?;
    let ui_client = match args.ui_address {
        Some(_) => Some(client_with_agent(config.clone(), UI_AGENT)?),
        None => None,
    };
    let lease_client = match limit {
        Some(_) => Some(client_with_agent(config, OPERATOR_AGENT)?),
        None => None,
    };
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease = (args.leader_elect || args.shards > 1).then(|| LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        duration: Duration::from_secs(args.lease_duration_seconds.max(2)),
        retry_period: Duration::from_secs((args.lease_duration_seconds / 5).max(1)),
    });
    let settings = Settings {
        namespaces: args.namespaces.clone(),
        lease,
        clock: Arc::new(SystemClock),
        metrics: Arc::new(Metrics::default()),
        identity,
        events: args.events,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout_seconds),
        lease_client,
        policy: charon_core::validate::Policy {
            allow_privileged_pods: args.allow_privileged_pods,
        },
        log_store: args
            .log_store
            .as_deref()
            .map(crate::logstore::LogStore::open)
            .transpose()?
            .map(Arc::new),
        launcher: crate::controller::LauncherConfig {
            image: args
                .launcher_image
                .clone()
                .unwrap_or_else(|| crate::controller::LauncherConfig::default().image),
            command: args.launcher_command.clone(),
        },
        shards: args.shards,
    };
    if let (Some(address), Some(ui_client)) = (args.ui_address, ui_client) {
        let namespace = match args.namespaces.as_slice() {
            [] => None,
            [one] => Some(one.as_str()),
            _ => anyhow::bail!(
                "--ui-address: the UI watches all namespaces or one; with several --namespace flags run it with one"
            ),
        };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("listening on {address} (--ui-address)"))?;
        let (ui, caches) = crate::ui::Ui::new(
            ui_client,
            namespace,
            crate::ui::auth::Mode::Cluster,
            settings.log_store.clone(),
        );
        tracing::info!(address = %listener.local_addr()?, "serving the web UI");
        tokio::spawn(caches);
        tokio::spawn(crate::ui::serve(listener, ui, shutdown.clone()));
    }
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("listening on {}", args.metrics_address))?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let http = serve_endpoints(listener, settings.metrics.clone(), ready.clone());
    tokio::spawn(http);
    // Ready once the API server answers.
    let version = tokio::select! {
        version = client.apiserver_version() => version.context("reaching the API server")?,
        () = shutdown.clone() => return Ok(()),
    };
    tracing::info!(server = %version.git_version, "connected to the API server");
    ready.store(true, Ordering::SeqCst);
    run(client, settings, shutdown).await
}

/// Resolves on the first SIGTERM or Ctrl-C after this call (the handlers are installed at
/// once, not when the future is first polled).
pub fn stop_signals() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("shutting down");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        })
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    match stop_signals() {
        Ok(signals) => signals.await,
        Err(err) => {
            tracing::warn!(%err, "cannot handle SIGTERM; waiting for Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs the controllers (behind leader election when configured) until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = shutdown.shared();
    let namespaces: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let shards = if settings.shards > 1 {
        Shards::new(settings.shards)
    } else {
        Shards::unsharded()
    };
    let controllers = {
        let client = client.clone();
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        let shards = shards.clone();
        async move {
            let runs = namespaces.into_iter().map(|namespace| {
                let options = Options {
                    namespace,
                    clock: settings.clock.clone(),
                    metrics: settings.metrics.clone(),
                    identity: settings.identity.clone(),
                    events: settings.events,
                    policy: settings.policy,
                    log_store: settings.log_store.clone(),
                    launcher: settings.launcher.clone(),
                    shards: shards.clone(),
                };
                controller::run(client.clone(), options, shutdown.clone())
            });
            futures::future::join_all(runs).await;
        }
    };
    let (grace, release) = stop_budget(settings.shutdown_timeout);
    match settings.lease.clone() {
        // Sharded: every replica runs the controllers, which act on the shards it holds.
        Some(lease) if settings.shards > 1 => {
            let lease_client = settings.lease_client.clone().unwrap_or(client);
            let sharding = shards::run(
                lease_client,
                lease,
                shards,
                settings.metrics.clone(),
                shutdown.clone(),
                (grace, release),
            );
            let overdue = async move {
                shutdown.await;
                tokio::time::sleep(grace).await;
            };
            let controllers = async move {
                tokio::select! {
                    () = controllers => {}
                    () = overdue => {
                        tracing::warn!(?grace, "the controllers did not stop in time: leaving them");
                    }
                }
            };
            tokio::join!(controllers, sharding);
            Ok(())
        }
        Some(lease) => {
            let lease_client = settings.lease_client.clone().unwrap_or(client);
            let stop = Stop {
                signal: shutdown,
                grace,
                release,
            };
            run_elected(lease_client, lease, &settings.metrics, controllers, stop)
                .await
                .map_err(anyhow::Error::from)
        }
        None => {
            settings.metrics.set_leader(true);
            let timeout = settings.shutdown_timeout;
            let overdue = async move {
                shutdown.await;
                tokio::time::sleep(timeout).await;
            };
            tokio::select! {
                () = controllers => {}
                () = overdue => {
                    tracing::warn!(?timeout, "the controllers did not stop in time: leaving them");
                }
            }
            Ok(())
        }
    }
}

#[derive(Clone)]
struct Endpoints {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener`.
pub async fn serve_endpoints(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .route("/readyz", get(ready_handler))
        .with_state(Endpoints { metrics, ready });
    if let Err(err) = axum::serve(listener, app).await {
        tracing::error!(%err, "metrics endpoint stopped");
    }
}

async fn metrics_handler(State(e): State<Endpoints>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        e.metrics.encode(),
    )
}

/// Live unless a controller has stopped making progress while work is due.
async fn health_handler(State(e): State<Endpoints>) -> impl IntoResponse {
    match e.metrics.liveness().check() {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(stalled) => (StatusCode::SERVICE_UNAVAILABLE, stalled),
    }
}

async fn ready_handler(State(e): State<Endpoints>) -> impl IntoResponse {
    if e.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the API server yet",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: OperatorArgs,
    }

    fn parse(args: &[&str]) -> Result<OperatorArgs, clap::Error> {
        Command::try_parse_from(std::iter::once("operator").chain(args.iter().copied()))
            .map(|c| c.args)
    }

    #[test]
    fn a_stop_leaves_time_to_release_the_lease() {
        assert_eq!(
            stop_budget(SHUTDOWN_TIMEOUT),
            (Duration::from_secs(8), Duration::from_secs(2))
        );
        assert_eq!(
            stop_budget(Duration::from_secs(60)),
            (Duration::from_secs(58), Duration::from_secs(2))
        );
        assert_eq!(
            stop_budget(Duration::from_secs(1)),
            (Duration::from_millis(800), Duration::from_millis(200))
        );
    }

    #[test]
    fn limits_and_the_shutdown_bound_are_flags() {
        let args = parse(&[]).expect("defaults");
        assert_eq!(
            (args.api_qps, args.api_burst, args.shutdown_timeout_seconds),
            (None, None, 10)
        );
        let args = parse(&[
            "--api-qps",
            "2.5",
            "--api-burst",
            "7",
            "--shutdown-timeout-seconds",
            "20",
        ])
        .expect("set");
        assert_eq!(
            (args.api_qps, args.api_burst, args.shutdown_timeout_seconds),
            (Some(2.5), Some(7), 20)
        );
        let burst_alone = parse(&["--api-burst", "7"]).expect_err("a burst needs a rate");
        assert!(
            burst_alone.to_string().contains("--api-qps"),
            "{burst_alone}"
        );
        let zero = parse(&["--shutdown-timeout-seconds", "0"]).expect_err("0 is no bound");
        assert!(
            zero.to_string().contains("--shutdown-timeout-seconds"),
            "{zero}"
        );
    }
}
