//! `charon dev`: Charon on one machine, with no cluster. It runs the embedded API server
//! (whose simulated kubelet runs each Job's command as a local process), installs the CRDs,
//! runs the operator in the same process, applies the manifests of `--apply DIR`, writes a
//! kubeconfig for `kubectl` (HTTPS with the server's CA and a random token, which the
//! server requires), prints a compact live log of instance state changes (and of
//! workflows whose spec is invalid), and stays in the foreground until interrupted.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::controller::{Metrics, SystemClock};
use charon_core::resources::{
    ConditionStatus, HistoryEntry, Workflow, WorkflowInstance, condition_type, find_condition,
};

/// Arguments of `charon dev`.
#[derive(Clone, Debug, clap::Args)]
pub struct DevArgs {
    /// Where to write the kubeconfig for kubectl.
    #[arg(long, default_value = "charon-dev.kubeconfig")]
    pub kubeconfig: PathBuf,
    /// Port of the API server on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Run only the cluster, without the Charon operator.
    #[arg(long)]
    pub no_controller: bool,
    /// Apply every `.yaml`/`.yml`/`.json` manifest in this directory (or this file) at start,
    /// into the `default` namespace unless a manifest names another.
    #[arg(long, value_name = "DIR")]
    pub apply: Vec<PathBuf>,
    /// Serve an HTTP API that injects faults into the API server (errors per verb, latency,
    /// dropped or expired watches, pause) on this address, e.g. 127.0.0.1:7070; off unless
    /// given. See the README's reference for its routes.
    #[arg(long, value_name = "ADDRESS")]
    pub faults_address: Option<SocketAddr>,
    /// Let the operator run `podOverrides` that ask for privileges (see `charon operator
    /// --allow-privileged-pods`).
    #[arg(long)]
    pub allow_privileged_pods: bool,
    /// Where `charon dev` keeps what outlives its processes: the log store under `logs/`.
    #[arg(long, value_name = "DIR", default_value = ".charon-dev")]
    pub state_dir: PathBuf,
    /// Archive attempts' logs here instead of `file://<state-dir>/logs` (`file:///dir` or
    /// `s3://bucket/prefix`).
    #[arg(long, value_name = "URL")]
    pub log_store: Option<String>,
    /// Where the web UI listens (loopback; a busy port falls back to a free one). Its URL,
    /// with a session token, is printed as `UI: <url>`.
    #[arg(long, default_value = "127.0.0.1:8090", value_name = "ADDR")]
    pub ui_address: SocketAddr,
    /// Run no processes: every container exits 0 as soon as it starts, as kwok simulates
    /// pods on a real cluster. For measuring the operator at a scale this machine could not
    /// run as processes.
    #[arg(long)]
    pub simulate_pods: bool,
}

/// The log store URL `charon dev` archives into: `--log-store`, or a directory under
/// `--state-dir`.
fn log_store_url(args: &DevArgs) -> anyhow::Result<String> {
    if let Some(url) = &args.log_store {
        return Ok(url.clone());
    }
    let dir = std::path::absolute(args.state_dir.join("logs"))
        .with_context(|| format!("resolving {}", args.state_dir.display()))?;
    let url = url::Url::from_directory_path(&dir)
        .map_err(|()| anyhow::anyhow!("{} is not an absolute path", dir.display()))?;
    Ok(url.to_string())
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    // Anyone on this machine can reach a loopback port: only holders of the kubeconfig
    // (readable by its owner only) get in. Over HTTPS, since kubectl sends no token over
    // plain HTTP.
    let token = charon_apiserver::random_token();
    let mut server = charon_apiserver::ApiServer::start(charon_apiserver::Config {
        address,
        token: Some(token.clone()),
        tls: true,
        simulated_pods: args.simulate_pods,
        ..charon_apiserver::Config::default()
    })
    .await
    .with_context(|| format!("starting the API server on {address}"))?;
    charon_apiserver::write_kubeconfig_with(
        &args.kubeconfig,
        &server.url(),
        Some(&token),
        server.ca_pem(),
    )
    .with_context(|| format!("writing {}", args.kubeconfig.display()))?;
    let ca = server.ca_der().map(<[u8]>::to_vec);
    let url = server.url();
    let client_config = || -> anyhow::Result<kube::Config> {
        let mut config = kube::Config::new(url.parse()?);
        config.auth_info.token = Some(token.clone().into());
        config.root_cert = ca.clone().map(|der| vec![der]);
        Ok(config)
    };
    let client = Client::try_from(client_config()?)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::crd::crds() {
        crds.create(&PostParams::default(), &crd)
            .await
            .with_context(|| format!("installing CRD {}", crd.metadata.name.unwrap_or_default()))?;
    }
    println!("API server listening on {}", server.url());
    if let Some(faults) = args.faults_address {
        let bound = server
            .serve_fault_control(faults)
            .await
            .with_context(|| format!("starting the fault control API on {faults}"))?;
        println!("Fault control API listening on http://{bound}/faults");
    }
    println!("CRDs installed: workflows, workflowinstances and backfills (charon.dev)");
    println!(
        "Use it with: export KUBECONFIG={}",
        args.kubeconfig.display()
    );
    for path in &args.apply {
        for applied in apply_path(&client, path).await? {
            println!("applied {applied}");
        }
    }
    let ui_listener = match tokio::net::TcpListener::bind(args.ui_address).await {
        Ok(listener) => listener,
        // Another UI holds the default port: any free one will do, the URL says which.
        Err(_) if args.ui_address.port() != 0 => {
            tokio::net::TcpListener::bind(SocketAddr::new(args.ui_address.ip(), 0))
                .await
                .with_context(|| format!("listening on {} (--ui-address)", args.ui_address))?
        }
        Err(e) => return Err(e).with_context(|| format!("listening on {}", args.ui_address)),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let operator = if args.no_controller {
        println!("Running the cluster only (--no-controller).");
        None
    } else {
        let log_store = Arc::new(crate::logstore::LogStore::open(&log_store_url(&args)?)?);
        println!(
            "Logs of every attempt are archived in {0} (for charon logs elsewhere: export CHARON_LOG_STORE={0})",
            log_store.url()
        );
        println!("Operator running; instance state changes follow. Ctrl-C stops everything.");
        let settings = crate::operator::Settings {
            namespaces: Vec::new(),
            lease: None,
            clock: Arc::new(SystemClock),
            metrics: Arc::new(Metrics::default()),
            identity: "charon-dev".to_string(),
            events: crate::controller::EventLevel::All,
            shutdown_timeout: crate::operator::SHUTDOWN_TIMEOUT,
            lease_client: None,
            log_store: Some(log_store.clone()),
            policy: charon_core::validate::Policy {
                allow_privileged_pods: args.allow_privileged_pods,
            },
            launcher: local_launcher(),
            shards: 1,
        };
        let operator_client =
            crate::operator::client_with_agent(client_config()?, crate::operator::OPERATOR_AGENT)?;
        let operator = tokio::spawn(crate::operator::run(
            operator_client,
            settings,
            wait_stop(stopped.clone()),
        ));
        let log = tokio::spawn(live_log(client.clone(), wait_stop(stopped.clone())));
        Some((operator, log, log_store))
    };
    let session = crate::ui::session_token();
    let (ui, caches) = crate::ui::Ui::new(
        client.clone(),
        None,
        crate::ui::auth::Mode::Local {
            token: session.clone(),
        },
        operator.as_ref().map(|(_, _, store)| store.clone()),
    );
    tokio::spawn(caches);
    println!(
        "UI: {}",
        crate::ui::url_with_token(ui_listener.local_addr()?, &session)
    );
    let ui_server = tokio::spawn(crate::ui::serve(
        ui_listener,
        ui,
        wait_stop(stopped.clone()),
    ));
    crate::operator::shutdown_signal().await;
    let _ = stop.send(true);
    if let Some((operator, log, _)) = operator {
        let _ = operator.await;
        let _ = log.await;
    }
    let _ = ui_server.await;
    server.shutdown().await;
    Ok(())
}

/// Prints one line per instance state change (`time instance state message`), and one when a
/// workflow's spec becomes invalid (naming the field) or valid again.
async fn live_log(client: Client, stop: impl std::future::Future<Output = ()>) {
    let instances = follow_instances(Api::<WorkflowInstance>::all(client.clone()));
    // A workflow valid from the start is not worth a line.
    let workflows = follow(Api::<Workflow>::all(client), Some("Valid"), |workflow| {
        let conditions = workflow.status.as_ref().map(|s| s.conditions.as_slice());
        let valid = find_condition(conditions.unwrap_or_default(), condition_type::VALID)?;
        let state = match valid.status {
            ConditionStatus::False => "Invalid",
            _ => "Valid",
        };
        Some((
            format!("workflow/{}", workflow.name_any()),
            state.to_string(),
            valid.message.clone(),
        ))
    });
    tokio::select! {
        _ = futures::future::join(instances, workflows) => {}
        () = stop => {}
    }
}

/// Prints a line when an instance appears (`Queued`) and one per entry of its
/// `status.history`, at the time of the change: the operator often records several changes
/// in one status write (a short run is written once, already `Done`), and each is a line.
async fn follow_instances(api: Api<WorkflowInstance>) {
    // Per instance uid, the history entries already printed.
    let mut seen: HashMap<String, Vec<HistoryEntry>> = HashMap::new();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    events
        .for_each(|event| {
            if let Ok(instance) = event {
                let key = instance.uid().unwrap_or_else(|| instance.name_any());
                let history = instance
                    .status
                    .as_ref()
                    .map(|s| s.history.as_slice())
                    .unwrap_or_default();
                let printed = seen.entry(key).or_insert_with(|| {
                    if history.is_empty() {
                        let trigger = instance.spec.trigger.trigger_type.as_str();
                        print_line(
                            chrono::Local::now(),
                            &instance.name_any(),
                            "Queued",
                            &format!("created by a {trigger} trigger"),
                        );
                    }
                    Vec::new()
                });
                for entry in history.iter().filter(|e| !printed.contains(e)) {
                    print_line(
                        entry.at.with_timezone(&chrono::Local),
                        &instance.name_any(),
                        entry.to.as_str(),
                        &entry.message,
                    );
                }
                // What the history still holds is all that can come back.
                *printed = history.to_vec();
            }
            async {}
        })
        .await;
}

fn print_line(at: chrono::DateTime<chrono::Local>, name: &str, state: &str, message: &str) {
    let text = format!("{state:<10} {message}");
    println!("{} {name:<40} {}", at.format("%H:%M:%S"), text.trim_end());
}

/// Prints a line whenever `line` of an object (name, state, message) changes, except an
/// object's first line when its state is `quiet`.
async fn follow<K>(
    api: Api<K>,
    quiet: Option<&str>,
    line: fn(&K) -> Option<(String, String, String)>,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let mut seen: HashMap<String, String> = HashMap::new();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    events
        .for_each(|event| {
            if let Ok(object) = event
                && let Some((name, state, message)) = line(&object)
            {
                let key = format!("{}/{name}", object.namespace().unwrap_or_default());
                let text = format!("{state:<10} {message}");
                let first_quiet = !seen.contains_key(&key) && quiet == Some(state.as_str());
                if seen.get(&key) != Some(&text) {
                    if !first_quiet {
                        print_line(chrono::Local::now(), &name, &state, &message);
                    }
                    seen.insert(key, text);
                }
            }
            async {}
        })
        .await;
}

/// Applies the manifests at `path` (a file, or every manifest file in a directory, sorted by
/// name) with server-side apply, and returns `kind/name` of each object applied.
pub async fn apply_path(client: &Client, path: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            let file = entry?.path();
            let manifest = file
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if manifest {
                files.push(file);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .context("discovering the API server's resources")?;
    let mut applied = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize_from(document)
                .with_context(|| format!("parsing {}", file.display()))?;
            if value.is_null() {
                continue;
            }
            let object: DynamicObject = serde_json::from_value(value)
                .with_context(|| format!("reading an object in {}", file.display()))?;
            let types = object.types.clone().with_context(|| {
                format!("an object in {} has no apiVersion/kind", file.display())
            })?;
            let gvk = GroupVersionKind::try_from(&types)?;
            let (resource, caps): (ApiResource, ApiCapabilities) = discovery
                .resolve_gvk(&gvk)
                .with_context(|| format!("the server does not serve {}", types.kind))?;
            let name = object.name_any();
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Namespaced => Api::namespaced_with(
                    client.clone(),
                    object.metadata.namespace.as_deref().unwrap_or("default"),
                    &resource,
                ),
                Scope::Cluster => Api::all_with(client.clone(), &resource),
            };
            api.patch(
                &name,
                &PatchParams::apply("charon-dev").force(),
                &Patch::Apply(&object),
            )
            .await
            .with_context(|| format!("applying {}/{name} from {}", types.kind, file.display()))?;
            applied.push(format!("{}/{name}", types.kind.to_lowercase()));
        }
    }
    Ok(applied)
}

trait DeserializeFrom: Sized {
    fn deserialize_from(d: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error>;
}

impl DeserializeFrom for serde_json::Value {
    fn deserialize_from(d: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error> {
        serde::Deserialize::deserialize(d)
    }
}

/// The launcher pipelines and arrays run under `charon dev`: the `charon-launcher` built
/// beside this binary, run by the embedded kubelet as a local process like every container.
pub fn local_launcher() -> crate::controller::LauncherConfig {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("charon-launcher"))
        .filter(|path| path.exists());
    match beside {
        Some(path) => crate::controller::LauncherConfig {
            image: "charon-launcher".to_string(),
            command: path.display().to_string(),
        },
        None => {
            eprintln!(
                "warning: no charon-launcher beside this binary: pipelines and job arrays will fail to start (build it with cargo build)"
            );
            crate::controller::LauncherConfig::default()
        }
    }
}
