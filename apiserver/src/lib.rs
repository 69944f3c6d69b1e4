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
//!   streaming lists, 410 Gone once the bounded history has moved past it or for versions
//!   of an earlier server, which a new one never reuses; reads and streaming lists at a
//!   version not yet issued wait 3s, then `Too large resource version`), create, update,
//!   patch (JSON merge, JSON patch, and strategic merge for built-ins, which merges lists by
//!   well-known keys rather than by the Go types' schemas), server-side apply (field
//!   managers in managedFields, `Update` entries for creates, updates and patches by their
//!   `fieldManager` or User-Agent, removal of fields an applier drops, conflicts with any
//!   other manager and force; lists are atomic), delete (finalizers, preconditions; a namespace takes its contents),
//!   deletecollection, `dryRun=All`, and `/status` for kinds with a status subresource;
//! - errors as `metav1.Status` bodies shaped and worded like the real server's (404, 409
//!   AlreadyExists and Conflict, 422 Invalid with field causes, 410 Expired);
//! - CustomResourceDefinitions: storing one serves its kind (Established, NamesAccepted),
//!   non-structural schemas are refused, and custom objects are defaulted, pruned (or
//!   refused under `fieldValidation=Strict`, which kubectl asks for) and validated;
//! - Pods and Jobs get the defaults controllers rely on (a Job's generated selector and pod
//!   labels) and their most common validation errors, volumes included (names, and item
//!   paths and subPaths that would leave the volume);
//! - server-side Tables for `kubectl get` (a CRD's printer columns, the usual columns of
//!   the built-in kinds, else Name and Age), including in watches; `kubectl get all` covers
//!   pods and jobs;
//! - protobuf request bodies for the built-in kinds that `kubectl create <kind>` sends
//!   (Namespace, ConfigMap, Secret, ServiceAccount, Pod and Job, common fields only).
//!
//! - Jobs run: a Job controller after 1.33's (completions, parallelism, Indexed mode,
//!   backoffLimit, backoffLimitPerIndex and maxFailedIndexes, activeDeadlineSeconds,
//!   suspend, ttlSecondsAfterFinished, pod tracking
//!   finalizers, `SuccessCriteriaMet`/`Complete` and `FailureTarget`/`Failed`), and a
//!   simulated kubelet that runs each container's `command` + `args` as a local process
//!   (env with `$(VAR)` expansion, fieldRef, secret and configMap refs; volumes written to a
//!   per-pod directory, see the `kubelet` module; restart policies with crash-loop back-off;
//!   graceful deletion; pod deadlines) and reports pod status as the real one does;
//! - `pods/log` (container, follow, previous, tailLines, sinceSeconds, timestamps,
//!   limitBytes), so `kubectl logs [-f]` works;
//! - a garbage collector (ownerReferences; Background, Foreground and Orphan propagation,
//!   Orphan being the default for batch/v1 Jobs as in the real server) and namespace
//!   lifecycle (Terminating, then emptied and removed; creates into it are Forbidden);
//! - PersistentVolumeClaims, PersistentVolumes and StorageClasses (with the controllers and
//!   kubelet): a default class `standard` (`rancher.io/local-path`, binding `Immediate`ly)
//!   provisions a directory under the kubelet's work dir per claim, binds it as the PV
//!   controller does and deletes it with the claim; pods mount claims, and wait unscheduled
//!   (`FailedScheduling`) while one is missing or unbound; see the `storage` module;
//! - core/v1 Events from the Job controller, scheduler and kubelet, for `kubectl describe`;
//! - test aids on [`RunningServer`]: an audit of requests by RBAC verb and resource,
//!   injected errors, latency, dropped or expired watches, pause/resume, pod eviction, and
//!   an image-pull failure pattern in [`Config`].
//!
//! Not yet: YAML or CBOR request bodies, OpenAPI v2, other validation of built-in kinds,
//! managedFields for the embedded controllers' own writes; pod probes, init containers beyond
//! running in order, resource limits, `exec`/`attach`/`port-forward`; Job pod failure
//! policies and success policies; events.k8s.io copies of the
//! Events.

mod apply;
mod auth;
mod builtin;
mod controllers;
mod error;
mod faults;
mod gc;
mod http;
mod jobs;
mod kubelet;
mod lock;
mod logs;
mod metadata;
mod openapi;
mod protobuf;
mod registry;
mod schema;
mod selector;
mod state;
mod storage;
mod store;
mod strategic;
mod table;
mod time;
mod tls;
mod validation;
mod workloads;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use error::{ApiError, FieldError};
pub use faults::Request;
pub use registry::ResourceType;

/// A running server; dropping it does not stop it, [`RunningServer::shutdown`] does.
pub struct RunningServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    state: Arc<state::AppState>,
    controllers: Vec<JoinHandle<()>>,
    kubelet: Option<kubelet::Kubelet>,
    /// The CA of its certificate (PEM and DER), when it serves HTTPS.
    ca: Option<(String, Vec<u8>)>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://<address>` (`https://` with [`Config::tls`]), for kubeconfigs and clients.
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    /// With [`Config::tls`], the PEM certificate of the CA that signed the server's: what a
    /// client must trust (a kubeconfig's `certificate-authority-data`).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(|(pem, _)| pem.as_str())
    }

    /// [`RunningServer::ca_pem`] as DER, as kube-rs's `Config::root_cert` takes it.
    pub fn ca_der(&self) -> Option<&[u8]> {
        self.ca.as_ref().map(|(_, der)| der.as_slice())
    }

    /// Forgets the watch history: clients resuming from an older resourceVersion get
    /// 410 Gone and must relist.
    pub fn compact(&self) {
        self.state.store.compact();
    }

    /// Every kind of API request seen so far (user agent, RBAC verb, group, resource,
    /// subresource, namespace) with its count, so tests can check what a client needs
    /// permission for.
    pub fn requests(&self) -> Vec<Request> {
        self.state.audit.requests()
    }

    /// Fails a share (`rate`, 0.0–1.0) of the requests with RBAC verb `verb` (`"*"` for
    /// all; `"list jobs"` for one verb on one resource) with `code`: 500 InternalError, 429
    /// TooManyRequests or 503 ServiceUnavailable (both with `Retry-After: 1`). A rate of 0
    /// stops it.
    pub fn set_error_rate(&self, verb: &str, rate: f64, code: u16) {
        self.state.faults.set_error_rate(verb, rate, code);
    }

    /// Delays every request by `latency` (zero to stop).
    pub fn set_latency(&self, latency: Duration) {
        self.state.faults.set_latency(latency);
    }

    /// Ends every open watch stream now, as a restarting server would.
    pub fn drop_watches(&self) {
        self.state.faults.drop_watches();
    }

    /// The next `n` watch requests get 410 Gone, forcing clients to relist.
    pub fn expire_next_watches(&self, n: u32) {
        self.state.faults.expire_watches(n);
    }

    /// Holds every request until [`RunningServer::resume`]; stored objects are kept.
    pub fn pause(&self) {
        self.state.faults.set_paused(true);
    }

    /// Releases requests held by [`RunningServer::pause`].
    pub fn resume(&self) {
        self.state.faults.set_paused(false);
    }

    /// Turns every injected fault off.
    pub fn clear_faults(&self) {
        self.state.faults.clear();
    }

    /// Serves the fault injection's HTTP control API (routes in the `faults::control`
    /// module: `GET /faults`, `PUT /faults/errors/{verb}`, `PUT /faults/latency`,
    /// `POST /faults/drop-watches`, `POST /faults/expire-watches`, `POST /faults/pause`,
    /// `POST /faults/resume`, `DELETE /faults`) on `address` until shutdown, guarded by the
    /// server's token when it has one; returns the address bound (port 0 picks one).
    pub async fn serve_fault_control(
        &mut self,
        address: SocketAddr,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(address).await?;
        let bound = listener.local_addr()?;
        let app = faults::control::router(self.state.clone());
        self.controllers.push(tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "fault control API stopped");
            }
        }));
        Ok(bound)
    }

    /// Evicts a running pod as the kubelet does under node pressure (phase Failed, reason
    /// `Evicted`, its processes killed), to test how clients handle lost pods. False when
    /// the kubelet does not run or the pod is not running on it.
    pub fn evict_pod(&self, namespace: &str, name: &str) -> bool {
        self.kubelet
            .as_ref()
            .is_some_and(|k| k.evict(namespace, name))
    }

    /// Stops serving: requests in progress get a moment to finish, then open connections
    /// (long-running watches included) are dropped, and every process the kubelet started
    /// is killed.
    pub async fn shutdown(mut self) {
        for task in &self.controllers {
            task.abort();
        }
        if let Some(kubelet) = self.kubelet.take() {
            kubelet.shutdown().await;
        }
        self.state.faults.clear();
        // Connections outlive the serving task, so a watch left open would go on streaming
        // this server's (now frozen) state to a client that should be reconnecting.
        self.state.faults.drop_watches();
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
    /// Run the Job controller, garbage collector and namespace controller (default true).
    /// Without them, deletes are immediate whatever their propagation policy.
    pub controllers: bool,
    /// Run the simulated kubelet, which runs pods' commands as local processes (default
    /// true). Without it, pods stay Pending and are deleted at once.
    pub kubelet: bool,
    /// The node pods are scheduled onto (default `charon-dev`).
    pub node_name: String,
    /// Test hook: containers whose image matches this regex never pull (`ErrImagePull`,
    /// then `ImagePullBackOff`) and so never start.
    pub image_pull_failure: Option<String>,
    /// First crash-loop (and image pull) back-off of the kubelet, doubled per restart up to
    /// `restart_backoff_max`; 10s as in Kubernetes, shorter in tests.
    pub restart_backoff: Duration,
    /// Longest kubelet back-off (5 minutes in Kubernetes).
    pub restart_backoff_max: Duration,
    /// Delay before a Job replaces its first failed pod, doubled per failure up to
    /// `job_backoff_max`; 10s as in Kubernetes, shorter in tests.
    pub job_backoff: Duration,
    /// Longest Job replacement delay (6 minutes in Kubernetes).
    pub job_backoff_max: Duration,
    /// Where the kubelet keeps per-pod directories (volumes, working directories); a fresh
    /// directory under the system temp dir when unset. Removed at shutdown.
    pub work_dir: Option<PathBuf>,
    /// A bearer token every request must carry (`Authorization: Bearer <token>`); others
    /// get 401 Unauthorized, as from a real server with anonymous access off. None (the
    /// default, for tests) serves anyone who can reach the port.
    pub token: Option<String>,
    /// Serve HTTPS with a certificate for 127.0.0.1 and localhost from a CA made at start
    /// (see [`RunningServer::ca_pem`]) rather than plain HTTP (the default). kubectl sends
    /// a token only over HTTPS.
    pub tls: bool,
    /// The kubelet runs no processes: every container exits 0 as soon as it starts (see
    /// `KubeletConfig::simulated`), so benchmarks can run many thousands of pods.
    pub simulated_pods: bool,
}

impl Config {
    /// Listens on 127.0.0.1:`port` (0 = ephemeral): without a [`Config::token`] the server
    /// authenticates no one, so it should not be reachable from other machines.
    pub fn loopback(port: u16) -> Self {
        Config {
            address: SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
            controllers: true,
            kubelet: true,
            node_name: "charon-dev".into(),
            image_pull_failure: None,
            restart_backoff: Duration::from_secs(10),
            restart_backoff_max: Duration::from_secs(300),
            job_backoff: Duration::from_secs(10),
            job_backoff_max: Duration::from_secs(360),
            work_dir: None,
            token: None,
            tls: false,
            simulated_pods: false,
        }
    }

    /// Only the API: no controllers and no kubelet, so objects stay as clients write them.
    pub fn api_only(mut self) -> Self {
        self.controllers = false;
        self.kubelet = false;
        self
    }

    /// Short back-offs (`base` for the first restart or replacement, at most 8×`base`), so
    /// tests of failures run fast.
    pub fn fast_backoff(mut self, base: Duration) -> Self {
        self.restart_backoff = base;
        self.restart_backoff_max = base * 8;
        self.job_backoff = base;
        self.job_backoff_max = base * 8;
        self
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
        let image_pull_failure = config
            .image_pull_failure
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(config.address).await?;
        let address = listener.local_addr()?;
        let state = Arc::new(state::AppState {
            store: store::Store::default(),
            address: address.to_string(),
            features: state::Features {
                controllers: config.controllers,
                kubelet: config.kubelet,
            },
            logs: logs::Logs::default(),
            audit: faults::Audit::default(),
            faults: faults::Faults::default(),
            token: config.token.clone(),
            tokens: crate::auth::Tokens::default(),
        });
        let certificates = config.tls.then(tls::Certificates::generate).transpose()?;
        let mut server = serve(listener, state.clone(), certificates).await?;
        if config.controllers {
            let jobs = jobs::JobConfig {
                backoff: config.job_backoff,
                backoff_max: config.job_backoff_max,
            };
            server
                .controllers
                .push(tokio::spawn(jobs::run(state.clone(), jobs)));
            server
                .controllers
                .push(tokio::spawn(gc::run(state.clone())));
        }
        if config.kubelet {
            let work_dir = config.work_dir.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!(
                    "charon-kubelet-{}-{}",
                    std::process::id(),
                    address.port()
                ))
            });
            if config.controllers {
                // The local-path provisioner keeps volumes on the node, so it needs both.
                start_storage(&mut server, &state, &work_dir, &config.node_name)?;
            }
            let kubelet = kubelet::Kubelet::start(
                state.clone(),
                kubelet::KubeletConfig {
                    node_name: config.node_name.clone(),
                    image_pull_failure,
                    backoff: config.restart_backoff,
                    backoff_max: config.restart_backoff_max,
                    work_dir,
                    simulated: config.simulated_pods,
                },
            )?;
            server.kubelet = Some(kubelet);
        }
        Ok(server)
    }
}

/// Creates the default StorageClass and starts the storage controller, volumes going under
/// `work_dir`.
fn start_storage(
    server: &mut RunningServer,
    state: &Arc<state::AppState>,
    work_dir: &Path,
    node: &str,
) -> std::io::Result<()> {
    state.store.protect_storage();
    let classes = state
        .store
        .find_type(storage::STORAGE_GROUP, "v1", "storageclasses")
        .ok_or_else(|| std::io::Error::other("storage classes are always served"))?;
    state
        .store
        .create(
            &classes,
            "",
            storage::default_class(),
            store::Write::default(),
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    server.controllers.push(tokio::spawn(storage::run(
        state.clone(),
        work_dir.to_path_buf(),
        node.to_string(),
    )));
    Ok(())
}

/// Starts a server on `address` (port 0 picks a free one), with the `default` namespace,
/// the controllers and the kubelet ([`Config`]'s defaults).
pub async fn start(address: SocketAddr) -> std::io::Result<RunningServer> {
    ApiServer::start(Config {
        address,
        ..Config::default()
    })
    .await
}

/// Seeds the namespaces and serves the API on `listener`, over TLS with `certificates`.
async fn serve(
    listener: TcpListener,
    state: Arc<state::AppState>,
    certificates: Option<tls::Certificates>,
) -> std::io::Result<RunningServer> {
    let address = listener.local_addr()?;
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
        .layer(axum::extract::DefaultBodyLimit::max(
            http::MAX_REQUEST_BODY_BYTES,
        ))
        .with_state(state.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped = async {
        let _ = stopped.await;
    };
    let ca = certificates
        .as_ref()
        .map(|c| (c.ca_pem.clone(), c.ca_der.clone()));
    let task = match certificates {
        Some(certificates) => {
            let listener = certificates.listen(listener)?;
            tokio::spawn(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(stopped);
                if let Err(err) = serve.await {
                    tracing::error!(%err, "embedded API server stopped");
                }
            })
        }
        None => tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stopped);
            if let Err(err) = serve.await {
                tracing::error!(%err, "embedded API server stopped");
            }
        }),
    };
    Ok(RunningServer {
        address,
        stop: Some(stop),
        task,
        state,
        controllers: Vec::new(),
        kubelet: None,
        ca,
    })
}

/// Writes a kubeconfig pointing at `server_url` (plain HTTP, no credentials), with the
/// cluster, user and context all named `charon-dev`.
pub fn write_kubeconfig(path: &Path, server_url: &str) -> std::io::Result<()> {
    write_kubeconfig_with(path, server_url, None, None)
}

/// [`write_kubeconfig`] whose user carries `token` (see [`Config::token`]) and whose cluster
/// trusts the CA `ca_pem` (see [`RunningServer::ca_pem`]). The file is readable by its owner
/// only, since the token is all it takes to use the server.
pub fn write_kubeconfig_with(
    path: &Path,
    server_url: &str,
    token: Option<&str>,
    ca_pem: Option<&str>,
) -> std::io::Result<()> {
    use base64::Engine;
    let user = match token {
        // JSON strings are YAML strings: the token is quoted whatever it holds.
        Some(token) => format!("\n    token: {}", serde_json::Value::from(token)),
        None => " {}".to_string(),
    };
    let ca = ca_pem
        .map(|pem| {
            let data = base64::engine::general_purpose::STANDARD.encode(pem);
            format!("\n    certificate-authority-data: {data}")
        })
        .unwrap_or_default();
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: charon-dev\n  cluster:\n    server: {server_url}{ca}\nusers:\n- name: charon-dev\n  user:{user}\ncontexts:\n- name: charon-dev\n  context:\n    cluster: charon-dev\n    user: charon-dev\n    namespace: default\ncurrent-context: charon-dev\n"
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        // An existing file keeps its mode on open: narrow it too.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    std::io::Write::write_all(&mut file, config.as_bytes())
}

/// A fresh random bearer token for [`Config::token`]: 244 random bits (two v4 UUIDs, which
/// come from the operating system's secure generator), as 64 hex digits.
pub fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}
