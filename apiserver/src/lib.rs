//! An embedded, in-memory Kubernetes-compatible API server.
//!
//! It serves discovery, CRUD, merge and JSON patches, watches (with resume, bookmarks and 410
//! Gone after compaction), `/status` subresources and CustomResourceDefinitions, with errors
//! shaped like the real server's. It knows nothing about Charon: tests and `charon dev` use it
//! where no cluster exists.
//!
//! OpenAPI v3 documents are minimal: each kind's schema and its PATCH path.
//!
//! `kubectl get` receives server-side tables built from a CRD's printer columns.
//!
//! Not yet: protobuf request bodies, tables with built-in kinds' own columns, schema validation of custom objects,
//! strategic merge (treated as merge), full server-side apply, Job controller, garbage
//! collector, simulated kubelet, fault injection.

mod error;
mod http;
mod openapi;
mod registry;
mod selector;
mod store;
mod table;
mod validation;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use error::ApiError;
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

    /// Stops serving and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
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
            .create(&namespaces, "", json!({"metadata": {"name": namespace}}))
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
