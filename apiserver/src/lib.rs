//! An embedded, in-memory Kubernetes-compatible API server.
//!
//! It knows nothing about Charon: `charon dev` and tests use it where no cluster exists, with
//! the real `kubectl` (it reports v1.33) and with kube-rs. Start one with [`ApiServer::start`]
//! and point clients at it with [`write_kubeconfig`].
//!
//! What it serves:
//! - discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]`) and
//!   minimal OpenAPI v3 documents (each kind's schema and a PATCH path advertising
//!   `fieldValidation`, which `kubectl apply` and `explain` need);
//! - for every kind: get, list (label selectors, field selectors on any dotted path, limit
//!   and continue), watch (resume from a resourceVersion, bookmarks, timeoutSeconds,
//!   streaming lists, 410 Gone once the bounded history has moved past it), create, update,
//!   patch (JSON merge, JSON patch, and strategic merge for built-ins, which merges lists by
//!   well-known keys rather than by the Go types' schemas), server-side apply (field
//!   managers in managedFields, removal of fields an applier drops, conflicts and force;
//!   lists are atomic), delete (finalizers, preconditions; a namespace takes its contents),
//!   deletecollection, `dryRun=All`, and `/status` for kinds with a status subresource;
//! - errors as `metav1.Status` bodies shaped and worded like the real server's (404, 409
//!   AlreadyExists and Conflict, 422 Invalid with field causes, 410 Expired);
//! - CustomResourceDefinitions: storing one serves its kind (Established, NamesAccepted),
//!   non-structural schemas are refused, and custom objects are defaulted, pruned (or
//!   refused under `fieldValidation=Strict`, which kubectl asks for) and validated;
//! - Pods and Jobs get the defaults controllers rely on (a Job's generated selector and pod
//!   labels) and their most common validation errors;
//! - server-side Tables for `kubectl get` (a CRD's printer columns, the usual columns of
//!   the built-in kinds, else Name and Age), including in watches; `kubectl get all` covers
//!   pods and jobs;
//! - protobuf request bodies for the built-in kinds that `kubectl create <kind>` sends
//!   (Namespace, ConfigMap, Secret, ServiceAccount, Pod and Job, common fields only).
//!
//! Not yet: YAML or CBOR request bodies, Event tables, OpenAPI v2, other validation of
//! built-in kinds, `Update` entries in managedFields, pods/log, Job controller, garbage
//! collector, simulated kubelet, fault injection.

mod apply;
mod builtin;
mod error;
mod http;
mod openapi;
mod protobuf;
mod registry;
mod schema;
mod selector;
mod store;
mod strategic;
mod table;
mod validation;
mod workloads;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use error::{ApiError, FieldError};
pub use registry::ResourceType;

/// A running server; dropping it does not stop it, [`RunningServer::shutdown`] does.
pub struct RunningServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    state: Arc<http::AppState>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://<address>`, for kubeconfigs and clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Forgets the watch history: clients resuming from an older resourceVersion get
    /// 410 Gone and must relist.
    pub fn compact(&self) {
        self.state.store.compact();
    }

    /// Stops serving: requests in progress get a moment to finish, then open connections
    /// (long-running watches included) are dropped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let grace = std::time::Duration::from_millis(500);
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }
}

/// How to run a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where to listen; port 0 picks a free port (see [`RunningServer::address`]).
    pub address: SocketAddr,
}

impl Config {
    /// Listens on 127.0.0.1:`port` (0 = ephemeral): the server has no authentication, so it
    /// should not be reachable from other machines.
    pub fn loopback(port: u16) -> Self {
        Config {
            address: SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
        }
    }
}

impl Default for Config {
    /// An ephemeral loopback port.
    fn default() -> Self {
        Config::loopback(0)
    }
}

/// The embedded API server.
pub struct ApiServer;

impl ApiServer {
    /// Binds, seeds the `default` and `kube-system` namespaces and serves in a background task.
    pub async fn start(config: Config) -> std::io::Result<RunningServer> {
        start(config.address).await
    }
}

/// Starts a server on `address` (port 0 picks a free one), with the `default` namespace.
pub async fn start(address: SocketAddr) -> std::io::Result<RunningServer> {
    let listener = TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    let state = Arc::new(http::AppState {
        store: store::Store::default(),
        address: address.to_string(),
    });
    for namespace in ["default", "kube-system"] {
        let namespaces = state
            .store
            .find_type("", "v1", "namespaces")
            .ok_or_else(|| std::io::Error::other("namespaces are always served"))?;
        state
            .store
            .create(
                &namespaces,
                "",
                json!({"metadata": {"name": namespace}}),
                store::Write::default(),
            )
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    let app = axum::Router::new()
        .fallback(http::handle)
        .with_state(state.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(err) = serve.await {
            tracing::error!(%err, "embedded API server stopped");
        }
    });
    Ok(RunningServer {
        address,
        stop: Some(stop),
        task,
        state,
    })
}

/// Writes a kubeconfig pointing at `server_url` (plain HTTP, no credentials), with the
/// cluster, user and context all named `charon-dev`.
pub fn write_kubeconfig(path: &Path, server_url: &str) -> std::io::Result<()> {
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: charon-dev\n  cluster:\n    server: {server_url}\nusers:\n- name: charon-dev\n  user: {{}}\ncontexts:\n- name: charon-dev\n  context:\n    cluster: charon-dev\n    user: charon-dev\n    namespace: default\ncurrent-context: charon-dev\n"
    );
    std::fs::write(path, config)
}
