//! What every pod on this node shares: how the kubelet runs, the API it reports to, its
//! event recorders and the process groups alive, which shutdown kills whatever state their
//! pod is in.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regex::Regex;
use tokio::sync::watch;

use crate::controllers::Recorder;
use crate::registry::ResourceType;
use crate::state::AppState;

/// How the kubelet runs.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// The node every pod lands on.
    pub node_name: String,
    /// Images matching this never pull (a test hook).
    pub image_pull_failure: Option<Regex>,
    /// First crash-loop back-off; it doubles up to `backoff_max`.
    pub backoff: Duration,
    /// Longest crash-loop back-off.
    pub backoff_max: Duration,
    /// Where per-pod directories go.
    pub work_dir: PathBuf,
    /// Run no processes: every container starts and exits 0 at once (one that restarts
    /// always stays running), with no container Events, as kwok's default stages do for a
    /// real cluster. For benchmarks of many thousands of pods.
    pub simulated: bool,
}

/// The node's state, shared by the kubelet's loop and every pod it runs.
pub struct Node {
    /// The API.
    pub state: Arc<AppState>,
    /// How it runs.
    pub config: KubeletConfig,
    /// Events as the kubelet.
    pub recorder: Recorder,
    /// Events as the scheduler (`Scheduled`).
    pub scheduler: Recorder,
    /// The pods type.
    pub pods: ResourceType,
    /// Process groups alive now, killed at shutdown whatever state their pod is in.
    pub groups: Mutex<HashSet<i32>>,
    /// Set at shutdown: every pod stops at once.
    pub stop: watch::Sender<bool>,
}
