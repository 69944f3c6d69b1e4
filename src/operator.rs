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

use crate::controller::leader::{LeaseConfig, run_elected};
use crate::controller::{self, Clock, EventLevel, Metrics, Options, SystemClock};

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
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,
    /// Which Kubernetes Events to write: `all` (one per instance transition) or `warnings`.
    #[arg(long, value_enum, default_value_t = EventLevel::All)]
    pub events: EventLevel,
}

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
}

/// User agent of the operator's requests (the RBAC test tells its calls apart by it).
pub const OPERATOR_AGENT: &str = concat!("charon-operator/", env!("CARGO_PKG_VERSION"));
/// User agent of the user commands' requests.
pub const CLI_AGENT: &str = concat!("charon/", env!("CARGO_PKG_VERSION"));

/// A client for `config` that names itself `agent` in the User-Agent header.
pub fn client_with_agent(mut config: kube::Config, agent: &str) -> anyhow::Result<Client> {
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_str(agent)?,
    ));
    Ok(Client::try_from(config)?)
}

/// Builds a client from a kubeconfig path and context, or infers one.
pub async fn client(
    kubeconfig: Option<&PathBuf>,
    context: Option<&str>,
    agent: &str,
) -> anyhow::Result<Client> {
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
    client_with_agent(config, agent)
}

fn default_identity() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("charon-{}", std::process::id()))
}

/// Runs `charon operator` until SIGTERM or Ctrl-C.
pub async fn main(args: OperatorArgs) -> anyhow::Result<()> {
    let client = client(
        args.kubeconfig.as_ref(),
        args.context.as_deref(),
        OPERATOR_AGENT,
    )
    .await?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease = args.leader_elect.then(|| LeaseConfig {
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
    };
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("listening on {}", args.metrics_address))?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let http = serve_endpoints(listener, settings.metrics.clone(), ready.clone());
    tokio::spawn(http);
    // Ready once the API server answers.
    let version = client
        .apiserver_version()
        .await
        .context("reaching the API server")?;
    tracing::info!(server = %version.git_version, "connected to the API server");
    ready.store(true, Ordering::SeqCst);
    run(client, settings, shutdown_signal()).await
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
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
    let controllers = {
        let client = client.clone();
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        async move {
            let runs = namespaces.into_iter().map(|namespace| {
                let options = Options {
                    namespace,
                    clock: settings.clock.clone(),
                    metrics: settings.metrics.clone(),
                    identity: settings.identity.clone(),
                    events: settings.events,
                };
                controller::run(client.clone(), options, shutdown.clone())
            });
            futures::future::join_all(runs).await;
        }
    };
    match settings.lease.clone() {
        Some(lease) => {
            let elected = run_elected(client, lease, &settings.metrics, controllers);
            tokio::select! {
                result = elected => result.map_err(anyhow::Error::from),
                () = shutdown.clone() => Ok(()),
            }
        }
        None => {
            settings.metrics.set_leader(true);
            controllers.await;
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
