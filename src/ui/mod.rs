//! The web UI and the JSON API behind it (SPEC §12), served by `charon ui`, `charon dev` and
//! `charon operator --ui-address`. Pages are rendered on the server from the same views the
//! API answers with; htmx (embedded, like every asset) keeps them live.

pub mod api;
pub mod auth;
pub mod cache;
pub mod error;
pub mod model;
pub mod pages;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::Client;

use crate::logstore::LogStore;
use auth::{Authority, Mode};
use cache::Cache;

/// What the UI server holds.
pub struct Ui {
    /// The caches it reads.
    pub cache: Cache,
    /// Who may do what.
    pub authority: Authority,
    /// The client actions are made with.
    pub client: Client,
    /// Where finished attempts' logs are archived.
    pub store: Option<Arc<LogStore>>,
}

impl Ui {
    /// A UI on `client` (watching `namespace`, or all) in `mode`; the future drives its
    /// caches.
    pub fn new(
        client: Client,
        namespace: Option<&str>,
        mode: Mode,
        store: Option<Arc<LogStore>>,
    ) -> (
        Arc<Ui>,
        impl std::future::Future<Output = ()> + Send + 'static + use<>,
    ) {
        let (cache, run) = Cache::start(&client, namespace);
        let ui = Arc::new(Ui {
            cache,
            authority: Authority::new(mode, client.clone()),
            client,
            store,
        });
        (ui, run)
    }
}

/// The routes: pages, assets and `/api/v1`.
pub fn router(ui: Arc<Ui>) -> Router {
    let ns = "/api/v1/namespaces/{ns}";
    Router::new()
        .route("/", get(pages::workflows))
        .route("/namespaces/{ns}/workflows/{name}", get(pages::workflow))
        .route("/namespaces/{ns}/instances/{name}", get(pages::instance))
        .route("/namespaces/{ns}/backfills/{name}", get(pages::backfill))
        .route("/assets/{file}", get(asset))
        .route("/api/v1/workflows", get(api::all_workflows))
        .route("/api/v1/pools", get(api::pools))
        .route(&format!("{ns}/workflows"), get(api::workflows))
        .route(&format!("{ns}/workflows/{{name}}"), get(api::workflow))
        .route(
            &format!("{ns}/workflows/{{name}}/partitions"),
            get(api::partitions),
        )
        .route(
            &format!("{ns}/workflows/{{name}}/{{action}}"),
            post(api::workflow_action),
        )
        .route(&format!("{ns}/instances/{{name}}"), get(api::instance))
        .route(&format!("{ns}/instances/{{name}}/log"), get(api::log))
        .route(
            &format!("{ns}/instances/{{name}}/{{action}}"),
            post(api::instance_action),
        )
        .route(
            &format!("{ns}/backfills"),
            get(api::backfills).post(api::create_backfill),
        )
        .route(&format!("{ns}/backfills/{{name}}"), get(api::backfill))
        .route(
            &format!("{ns}/backfills/{{name}}/{{action}}"),
            post(api::backfill_action),
        )
        .fallback(not_found)
        .with_state(ui)
}

async fn not_found() -> Response {
    error::UiError::not_found("no such page or API path").into_response()
}

/// The embedded assets: nothing is loaded from elsewhere.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/htmx.min.js"),
    ),
    (
        "charon.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/charon.js"),
    ),
    (
        "charon.css",
        "text/css; charset=utf-8",
        include_str!("assets/charon.css"),
    ),
];

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// Serves `ui` on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ui: Arc<Ui>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(ui))
        .with_graceful_shutdown(stop)
        .await
}

/// A fresh session token for local mode.
pub fn session_token() -> String {
    charon_apiserver::random_token()
}

/// Arguments of `charon ui`.
#[derive(Clone, Debug, clap::Args)]
pub struct UiArgs {
    /// Path to the kubeconfig file (default `$KUBECONFIG`, then `~/.kube/config`).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
    /// Only this namespace (default: every namespace the kubeconfig's user may list).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Where to listen; loopback only, since anyone reaching it acts as you.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub address: SocketAddr,
    /// The log store finished attempts' logs are archived in (as the operator's).
    #[arg(long, env = "CHARON_LOG_STORE", value_name = "URL")]
    pub log_store: Option<String>,
}

/// The URL a local UI prints: it carries the session token.
pub fn url_with_token(address: SocketAddr, token: &str) -> String {
    format!("http://{address}/?token={token}")
}

/// `charon ui`: the UI with the caller's kubeconfig, on loopback.
pub async fn run(args: UiArgs) -> anyhow::Result<()> {
    if !args.address.ip().is_loopback() {
        anyhow::bail!(
            "--address {}: charon ui acts with your credentials, so it listens on loopback only (127.0.0.1 or ::1); serve teams with charon operator --ui-address",
            args.address
        );
    }
    let target = crate::user::Target {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        namespace: args.namespace.clone(),
        output: crate::user::Output::Table,
    };
    let (client, server) = crate::user::connect_target(&target).await?;
    let store = args
        .log_store
        .as_deref()
        .map(LogStore::open)
        .transpose()?
        .map(Arc::new);
    let token = session_token();
    let (ui, caches) = Ui::new(
        client,
        args.namespace.as_deref(),
        Mode::Local {
            token: token.clone(),
        },
        store,
    );
    let listener = tokio::net::TcpListener::bind(args.address)
        .await
        .with_context(|| format!("listening on {}", args.address))?;
    let address = listener.local_addr()?;
    tokio::spawn(caches);
    println!("Charon UI for {server}");
    println!("UI: {}", url_with_token(address, &token));
    serve(listener, ui, async {
        crate::operator::shutdown_signal().await;
    })
    .await?;
    Ok(())
}
