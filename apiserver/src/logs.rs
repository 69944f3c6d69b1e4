//! Pods' container logs: the buffers the simulated kubelet writes each container
//! instance's output to, and `GET /api/v1/namespaces/{ns}/pods/{name}/log` serving them
//! with `container`, `follow`, `previous`, `tailLines`, `sinceSeconds`, `sinceTime`,
//! `timestamps` and `limitBytes`, and the real server's (kubelet's) errors.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::watch;

use crate::controllers::text;
use crate::error::ApiError;
use crate::lock::lock;
use crate::registry::ResourceType;
use crate::store::Store;

/// Bytes of output kept per container instance; older lines are dropped first.
pub const LOG_LIMIT: usize = 1 << 20;

/// One line of output with the time it was read.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// When the kubelet read it.
    pub time: chrono::DateTime<chrono::Utc>,
    /// The bytes, with the trailing newline when there was one.
    pub text: Vec<u8>,
}

struct LogInner {
    lines: VecDeque<LogLine>,
    /// Sequence number of `lines[0]`.
    first: u64,
    bytes: usize,
    done: bool,
}

/// The output of one container instance; followers wait on [`LogBuffer::subscribe`].
pub struct LogBuffer {
    inner: Mutex<LogInner>,
    changed: watch::Sender<u64>,
}

impl LogBuffer {
    fn new() -> Self {
        LogBuffer {
            inner: Mutex::new(LogInner {
                lines: VecDeque::new(),
                first: 0,
                bytes: 0,
                done: false,
            }),
            changed: watch::channel(0).0,
        }
    }

    /// Appends a line (or a piece of an over-long one), dropping the oldest past
    /// [`LOG_LIMIT`].
    pub fn push(&self, text: Vec<u8>) {
        let mut inner = lock(&self.inner);
        inner.bytes += text.len();
        inner.lines.push_back(LogLine {
            time: chrono::Utc::now(),
            text,
        });
        while inner.bytes > LOG_LIMIT {
            let Some(old) = inner.lines.pop_front() else {
                break;
            };
            inner.bytes -= old.text.len();
            inner.first += 1;
        }
        let next = inner.first + inner.lines.len() as u64;
        drop(inner);
        self.changed.send_replace(next);
    }

    /// Marks the instance ended, waking followers.
    pub fn close(&self) {
        lock(&self.inner).done = true;
        self.changed.send_modify(|v| *v += 0);
    }

    /// Lines from sequence number `from` on (or the oldest kept), the number to read from
    /// next, and whether the instance has ended.
    pub fn read_from(&self, from: u64) -> (Vec<LogLine>, u64, bool) {
        let inner = lock(&self.inner);
        let start = from.max(inner.first);
        let skip = usize::try_from(start - inner.first).unwrap_or(usize::MAX);
        let lines: Vec<LogLine> = inner.lines.iter().skip(skip).cloned().collect();
        let next = inner.first + inner.lines.len() as u64;
        (lines, next, inner.done)
    }

    /// Notified on every new line and when the instance ends.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[derive(Default)]
struct ContainerLogs {
    current: Option<Arc<LogBuffer>>,
    previous: Option<Arc<LogBuffer>>,
}

/// Output of every container the kubelet ran, by pod uid and container name.
#[derive(Default)]
pub struct Logs {
    pods: Mutex<HashMap<String, HashMap<String, ContainerLogs>>>,
}

impl Logs {
    /// The current (or previous) instance's output of `container` in the pod `uid`.
    pub fn get(&self, uid: &str, container: &str, previous: bool) -> Option<Arc<LogBuffer>> {
        let pods = lock(&self.pods);
        let logs = pods.get(uid)?.get(container)?;
        if previous {
            logs.previous.clone()
        } else {
            logs.current.clone()
        }
    }

    /// A new instance of `container` in the pod `uid`: the current one becomes previous.
    pub fn start_instance(&self, uid: &str, container: &str) -> Arc<LogBuffer> {
        let buffer = Arc::new(LogBuffer::new());
        let mut pods = lock(&self.pods);
        let logs = pods
            .entry(uid.to_string())
            .or_default()
            .entry(container.to_string())
            .or_default();
        logs.previous = logs.current.replace(buffer.clone());
        buffer
    }

    /// Forgets a pod that is gone, ending its followers.
    pub fn remove_pod(&self, uid: &str) {
        let removed = lock(&self.pods).remove(uid);
        // Wake followers so they end.
        for logs in removed.into_iter().flat_map(|m| m.into_values()) {
            if let Some(b) = logs.current {
                b.close();
            }
        }
    }
}

fn names(pod: &Value, field: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| text(c, "/name").to_string())
        .collect()
}

fn text_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Which container's output a request is for, or the error the real server gives.
fn pick_container(pod: &Value, name: &str, wanted: Option<&str>) -> Result<String, ApiError> {
    let containers = names(pod, "containers");
    let init = names(pod, "initContainers");
    let container = match wanted.filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None => match containers.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}"
                )));
            }
            many => {
                let mut message = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    many.join(" ")
                );
                if !init.is_empty() {
                    message.push_str(&format!(
                        " or one of the init containers: [{}]",
                        init.join(" ")
                    ));
                }
                return Err(ApiError::bad_request(message));
            }
        },
    };
    if !containers.contains(&container) && !init.contains(&container) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    Ok(container)
}

/// The kubelet's checks of a container's state before it serves logs.
fn check_state(pod: &Value, name: &str, container: &str, previous: bool) -> Result<(), ApiError> {
    let status = ["/status/containerStatuses", "/status/initContainerStatuses"]
        .iter()
        .flat_map(|p| {
            pod.pointer(p)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|s| text(s, "/name") == container);
    let Some(status) = status else {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )));
    };
    let last_terminated = status.pointer("/lastState/terminated").is_some();
    let state = status.get("state").cloned().unwrap_or(Value::Null);
    if previous {
        if !last_terminated {
            return Err(ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{name}\" not found"
            )));
        }
        return Ok(());
    }
    if state.get("running").is_some() || state.get("terminated").is_some() || last_terminated {
        return Ok(());
    }
    let reason = text(&state, "/waiting/reason");
    let message = match reason {
        "ErrImagePull" => format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: image can't be pulled"
        ),
        "ImagePullBackOff" => format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: trying and failing to pull image"
        ),
        "" => {
            format!("container \"{container}\" in pod \"{name}\" is waiting to start - no logs yet")
        }
        reason => {
            format!("container \"{container}\" in pod \"{name}\" is waiting to start: {reason}")
        }
    };
    Err(ApiError::bad_request(message))
}

struct Options {
    timestamps: bool,
    since: Option<chrono::DateTime<chrono::Utc>>,
    limit: Option<usize>,
}

fn render(lines: &[LogLine], opts: &Options) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        if opts.since.is_some_and(|s| line.time < s) {
            continue;
        }
        if opts.timestamps {
            out.extend_from_slice(
                line.time
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                    .as_bytes(),
            );
            out.push(b' ');
        }
        out.extend_from_slice(&line.text);
    }
    out
}

/// Serves a pod's log from `logs`.
pub fn pod_log(
    store: &Store,
    logs: &Logs,
    t: &ResourceType,
    namespace: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let pod = store.get(t, namespace, name)?;
    let container = pick_container(&pod, name, query.get("container").map(String::as_str))?;
    let flag = |k: &str| query.get(k).is_some_and(|v| v == "true" || v == "1");
    let previous = flag("previous");
    if text(&pod, "/spec/nodeName").is_empty() {
        // Not scheduled: nothing ran, and the real server answers with nothing.
        return Ok(text_response(Body::empty()));
    }
    check_state(&pod, name, &container, previous)?;
    let since = match (query.get("sinceSeconds"), query.get("sinceTime")) {
        (Some(s), _) => {
            let secs: i64 = s
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid sinceSeconds: {s}")))?;
            Some(chrono::Utc::now() - chrono::Duration::seconds(secs))
        }
        (None, Some(t)) => crate::controllers::parse_time(t),
        _ => None,
    };
    let opts = Options {
        timestamps: flag("timestamps"),
        since,
        limit: query.get("limitBytes").and_then(|v| v.parse().ok()),
    };
    let tail: Option<usize> = query
        .get("tailLines")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .and_then(|n| usize::try_from(n).ok());
    let uid = text(&pod, "/metadata/uid");
    let Some(buffer) = logs.get(uid, &container, previous) else {
        return Ok(text_response(Body::empty()));
    };
    let (mut lines, next, done) = buffer.read_from(0);
    if let Some(n) = tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut first = render(&lines, &opts);
    if let Some(limit) = opts.limit {
        first.truncate(limit);
    }
    if !flag("follow") || previous || done {
        return Ok(text_response(Body::from(first)));
    }
    Ok(text_response(Body::from_stream(follow(
        buffer, first, next, opts,
    ))))
}

/// Streams what is there, then new lines until the container instance ends.
fn follow(
    buffer: Arc<LogBuffer>,
    first: Vec<u8>,
    next: u64,
    opts: Options,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let changes = buffer.subscribe();
    let sent = first.len();
    let state = (buffer, changes, next, opts, Some(first), sent, false);
    futures::stream::unfold(
        state,
        |(buffer, mut changes, next, opts, first, sent, ended)| async move {
            if let Some(first) = first {
                let item = Ok(Bytes::from(first));
                return Some((item, (buffer, changes, next, opts, None, sent, ended)));
            }
            if ended {
                return None;
            }
            loop {
                let (lines, after, done) = buffer.read_from(next);
                if !lines.is_empty() {
                    let mut bytes = render(&lines, &opts);
                    if let Some(limit) = opts.limit {
                        bytes.truncate(limit.saturating_sub(sent));
                    }
                    let sent = sent + bytes.len();
                    let stop = done || opts.limit.is_some_and(|l| sent >= l);
                    return Some((
                        Ok(Bytes::from(bytes)),
                        (buffer, changes, after, opts, None, sent, stop),
                    ));
                }
                if done {
                    return None;
                }
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        },
    )
}
