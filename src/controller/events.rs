//! Kubernetes Events about Charon's objects, written as `core/v1` Events so that
//! `kubectl describe` and `kubectl events` show them next to the Job controller's and the
//! kubelet's. Failing to write one is logged, never fatal: Events are a courtesy, status is
//! the record. They are written by a background task, so a reconcile never waits for one.

use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;

/// Severity of an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Something happened as expected.
    Normal,
    /// Something needs a person's attention.
    Warning,
}

/// Which Events the operator writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EventLevel {
    /// One per instance transition (SPEC §4), and every warning.
    #[default]
    All,
    /// Warnings only (failed attempts, invalid specs, refused triggers): a successful run
    /// writes no Event, which spares the API server about five writes per run where Events
    /// are too many to be read anyway. `status.history` keeps every transition.
    Warnings,
}

/// Writes Events on behalf of one controller replica.
#[derive(Clone)]
pub struct EventRecorder {
    queue: mpsc::Sender<Pending>,
    level: EventLevel,
    dropped: Arc<Dropped>,
    _writer: Arc<Writer>,
}

/// Events dropped because too many were waiting: reported in one warning per period rather
/// than one per Event, which would flood the log just when the operator is busiest.
#[derive(Default)]
struct Dropped {
    since_report: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
}

/// How often dropped Events are reported.
const DROPPED_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Dropped {
    fn note(&self, reason: &str, object: &str) {
        let Ok(mut state) = self.since_report.lock() else {
            return;
        };
        state.0 += 1;
        let due = state
            .1
            .is_none_or(|at| at.elapsed() >= DROPPED_REPORT_EVERY);
        if due {
            tracing::warn!(
                dropped = state.0,
                last_reason = reason,
                last_object = object,
                "Events dropped: too many waiting to be written"
            );
            *state = (0, Some(std::time::Instant::now()));
        }
    }
}

/// The task writing the queued Events; stopped when the last recorder is dropped, so a
/// replica that stops leading writes nothing more.
struct Writer(tokio::task::JoinHandle<()>);

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Events waiting to be written; beyond this they are dropped (and logged), never waited for.
const QUEUE: usize = 20_000;

/// Events written at once by the background task.
const WRITERS: usize = 8;

/// The component name Events are reported by.
pub const COMPONENT: &str = "charon-operator";

impl EventRecorder {
    /// A recorder for the replica named `instance`, writing the Events `level` asks for.
    /// Must be called within a Tokio runtime: it starts the task that writes the Events,
    /// which ends when every clone is dropped.
    pub fn new(client: Client, instance: &str, level: EventLevel) -> Self {
        let (queue, pending) = mpsc::channel::<Pending>(QUEUE);
        let reporter: Arc<str> = instance.into();
        let writes = futures::stream::unfold(pending, |mut pending| async move {
            pending.recv().await.map(|event| (event, pending))
        })
        .map(move |pending: Pending| {
            let client = client.clone();
            let event = pending.event(&reporter);
            async move {
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(client, &namespace);
                if let Err(err) = api.create(&PostParams::default(), &event).await {
                    tracing::warn!(%err, reason = ?event.reason, object = ?event.involved_object.name, "could not record an Event");
                }
            }
        })
        .buffer_unordered(WRITERS)
        .for_each(|()| futures::future::ready(()));
        EventRecorder {
            queue,
            level,
            dropped: Arc::default(),
            _writer: Arc::new(Writer(tokio::spawn(writes))),
        }
    }

    /// Queues an Event about `object` for writing.
    pub async fn record<K>(&self, object: &K, severity: Severity, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        if severity == Severity::Normal && self.level == EventLevel::Warnings {
            return;
        }
        let pending = Pending {
            namespace: object.namespace().unwrap_or_else(|| "default".to_string()),
            api_version: K::api_version(&()).into_owned().into(),
            kind: K::kind(&()).into_owned().into(),
            name: object.name_any(),
            uid: object.meta().uid.clone(),
            resource_version: object.meta().resource_version.clone(),
            reason: reason.to_string(),
            message: truncate(message, 1024),
            severity,
            at: Utc::now(),
        };
        if let Err(full) = self.queue.try_send(pending) {
            let pending = full.into_inner();
            self.dropped.note(&pending.reason, &pending.name);
        }
    }
}

/// An Event waiting to be written: what it says, without the many empty and repeated fields
/// of an `Event`, since thousands may wait during a burst.
struct Pending {
    namespace: String,
    api_version: Box<str>,
    kind: Box<str>,
    name: String,
    uid: Option<String>,
    resource_version: Option<String>,
    reason: String,
    message: String,
    severity: Severity,
    at: chrono::DateTime<Utc>,
}

impl Pending {
    /// The Event, reported by the replica named `instance`.
    fn event(self, instance: &str) -> Event {
        let timestamp = k8s_openapi::jiff::Timestamp::from_microsecond(self.at.timestamp_micros())
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now());
        let name = format!(
            "{}.{:x}",
            self.name,
            self.at.timestamp_nanos_opt().unwrap_or_default()
        );
        Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(self.api_version.into()),
                kind: Some(self.kind.into()),
                name: Some(self.name),
                namespace: Some(self.namespace),
                uid: self.uid,
                resource_version: self.resource_version,
                field_path: None,
            },
            action: Some(self.reason.clone()),
            reason: Some(self.reason),
            message: Some(self.message),
            type_: Some(
                match self.severity {
                    Severity::Normal => "Normal",
                    Severity::Warning => "Warning",
                }
                .to_string(),
            ),
            count: Some(1),
            first_timestamp: Some(Time(timestamp)),
            last_timestamp: Some(Time(timestamp)),
            event_time: Some(MicroTime(timestamp)),
            reporting_component: Some(COMPONENT.to_string()),
            reporting_instance: Some(instance.to_string()),
            source: Some(EventSource {
                component: Some(COMPONENT.to_string()),
                host: None,
            }),
            ..Default::default()
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_event_becomes_the_event_it_describes() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00.000001Z")
            .expect("time")
            .with_timezone(&Utc);
        let pending = Pending {
            namespace: "ns".into(),
            api_version: "charon.dev/v1alpha1".into(),
            kind: "WorkflowInstance".into(),
            name: "nightly-1".into(),
            uid: Some("u-1".into()),
            resource_version: Some("7".into()),
            reason: "Failed".into(),
            message: "exit code 1".into(),
            severity: Severity::Warning,
            at,
        };
        let event = pending.event("charon-0");
        assert_eq!(event.metadata.namespace.as_deref(), Some("ns"));
        assert!(
            event
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("nightly-1.")),
            "{:?}",
            event.metadata.name
        );
        let object = &event.involved_object;
        assert_eq!(object.kind.as_deref(), Some("WorkflowInstance"));
        assert_eq!(object.api_version.as_deref(), Some("charon.dev/v1alpha1"));
        assert_eq!(object.name.as_deref(), Some("nightly-1"));
        assert_eq!(object.namespace.as_deref(), Some("ns"));
        assert_eq!(object.uid.as_deref(), Some("u-1"));
        assert_eq!(event.reason.as_deref(), Some("Failed"));
        assert_eq!(event.action.as_deref(), Some("Failed"));
        assert_eq!(event.message.as_deref(), Some("exit code 1"));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reporting_instance.as_deref(), Some("charon-0"));
        assert_eq!(event.reporting_component.as_deref(), Some(COMPONENT));
        assert_eq!(
            event.event_time.map(|t| t.0.as_microsecond()),
            Some(at.timestamp_micros())
        );
    }
}
