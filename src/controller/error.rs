//! Errors of the adapters, with the call and the object they happened on, and what a failed
//! API call means (by Kubernetes' API conventions) so callers match on meaning, not numbers.

use std::fmt;

use thiserror::Error;

/// What a failed API call means for the caller (Kubernetes API conventions, "HTTP status
/// codes"): only [`ApiFailure::is_transient`] failures are worth repeating unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiFailure {
    /// 404: the object (or its namespace) does not exist.
    NotFound,
    /// 409: the name is taken (AlreadyExists), or the object changed since it was read.
    Conflict,
    /// 400, 413, 422: the request itself is wrong, and will be wrong again.
    Refused,
    /// 401, 403: the operator lacks a permission.
    Forbidden,
    /// 410: a watch or list resumed from a version the server no longer has.
    Gone,
    /// 429: the server asks for fewer requests.
    Throttled,
    /// 5xx: the server failed.
    Server,
    /// No answer: connection refused or reset, timeouts, TLS.
    Connection,
    /// Anything else (a response that could not be read, a client-side problem).
    Other,
}

impl ApiFailure {
    /// What `error` means.
    pub fn of(error: &kube::Error) -> Self {
        match error {
            kube::Error::Api(status) => Self::of_code(status.code),
            kube::Error::HyperError(_) | kube::Error::Service(_) => ApiFailure::Connection,
            _ => ApiFailure::Other,
        }
    }

    /// What an HTTP status code means.
    pub fn of_code(code: u16) -> Self {
        match code {
            404 => ApiFailure::NotFound,
            409 => ApiFailure::Conflict,
            400 | 413 | 422 => ApiFailure::Refused,
            401 | 403 => ApiFailure::Forbidden,
            410 => ApiFailure::Gone,
            429 => ApiFailure::Throttled,
            500..=599 => ApiFailure::Server,
            _ => ApiFailure::Other,
        }
    }

    /// The metric label of this kind of failure.
    pub fn label(self) -> &'static str {
        match self {
            ApiFailure::NotFound => "not_found",
            ApiFailure::Conflict => "conflict",
            ApiFailure::Refused => "refused",
            ApiFailure::Forbidden => "forbidden",
            ApiFailure::Gone => "gone",
            ApiFailure::Throttled => "throttled",
            ApiFailure::Server => "server",
            ApiFailure::Connection => "connection",
            ApiFailure::Other => "other",
        }
    }

    /// Whether the same request may succeed later (SPEC §7: 429, 5xx and connection errors).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ApiFailure::Throttled | ApiFailure::Server | ApiFailure::Connection
        )
    }
}

/// The meaning of a failed call, on `kube::Error` itself.
pub trait ApiErrorExt {
    /// What the failure means.
    fn failure(&self) -> ApiFailure;
    /// The server's message, where the server answered.
    fn server_message(&self) -> Option<&str>;
}

impl ApiErrorExt for kube::Error {
    fn failure(&self) -> ApiFailure {
        ApiFailure::of(self)
    }

    fn server_message(&self) -> Option<&str> {
        match self {
            kube::Error::Api(status) => Some(status.message.as_str()),
            _ => None,
        }
    }
}

/// One API call: its verb, the kind and the object it was about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// `get`, `list`, `create`, `replace`, `replace status`, `patch`, `delete`.
    pub verb: &'static str,
    /// The kind, e.g. `Job`.
    pub kind: &'static str,
    /// `namespace/name` (or the namespace alone for a list).
    pub object: String,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.verb, self.kind, self.object)
    }
}

/// Errors of one reconcile, each naming the call or object it happened on. All of them are
/// retried with a delay; problems with what a user wrote are reported in status and Events,
/// not as errors.
#[derive(Debug, Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("{call}: {source}")]
    Api {
        /// The call that failed.
        call: Call,
        /// What the client said.
        #[source]
        source: kube::Error,
    },
    /// An object could not be (de)serialised.
    #[error("serialising {what}: {source}")]
    Json {
        /// What was being serialised.
        what: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The object lacks something every stored object has.
    #[error("{object} has no {field}")]
    Incomplete {
        /// The object, as `Kind namespace/name`.
        object: String,
        /// The missing field.
        field: &'static str,
    },
    /// A Job with the name this attempt needs exists but is not this instance's (left by an
    /// earlier instance of the same name, on its way out): wait for it to go.
    #[error("Job {job} exists but belongs to another object; waiting for it to be deleted")]
    ForeignJob {
        /// `namespace/name` of the Job.
        job: String,
    },
    /// The reconcile panicked: a bug, reported and retried later rather than taking the
    /// operator (and every other workflow) down.
    #[error("reconcile panicked: {0}")]
    Panicked(String),
}

impl Error {
    /// What kind of failure this is, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Api { source, .. } => source.failure().label(),
            Error::Json { .. } => "serialisation",
            Error::Incomplete { .. } => "incomplete",
            Error::ForeignJob { .. } => "foreign_job",
            Error::Panicked(_) => "panic",
        }
    }

    /// What a failed API call means, if this is one.
    pub fn failure(&self) -> Option<ApiFailure> {
        match self {
            Error::Api { source, .. } => Some(source.failure()),
            _ => None,
        }
    }

    /// Whether this is a conflict: someone else wrote the object since it was read.
    pub fn is_conflict(&self) -> bool {
        self.failure() == Some(ApiFailure::Conflict)
    }

    /// How long the server asked to wait before asking again (`details.retryAfterSeconds`
    /// of a 429 or 5xx Status), where it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Api {
                source: kube::Error::Api(status),
                ..
            } if ApiFailure::of_code(status.code).is_transient() => status
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| std::time::Duration::from_secs(u64::from(s))),
            _ => None,
        }
    }
}

/// Wraps a failed call's error with the call, for `map_err`:
/// `api.create(…).await.map_err(call("create", "Job", ns, name))?`.
pub fn call<'a>(
    verb: &'static str,
    kind: &'static str,
    namespace: &'a str,
    name: &'a str,
) -> impl FnOnce(kube::Error) -> Error + 'a {
    move |source| Error::Api {
        call: Call {
            verb,
            kind,
            object: if name.is_empty() {
                namespace.to_string()
            } else {
                format!("{namespace}/{name}")
            },
        },
        source,
    }
}

/// The error of an object without a field every stored object has.
pub fn incomplete(kind: &str, namespace: &str, name: &str, field: &'static str) -> Error {
    Error::Incomplete {
        object: format!("{kind} {namespace}/{name}"),
        field,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("refused", "Invalid")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn status_codes_mean_what_the_api_conventions_say() {
        let cases = [
            (404, ApiFailure::NotFound, false),
            (409, ApiFailure::Conflict, false),
            (400, ApiFailure::Refused, false),
            (413, ApiFailure::Refused, false),
            (422, ApiFailure::Refused, false),
            (403, ApiFailure::Forbidden, false),
            (410, ApiFailure::Gone, false),
            (429, ApiFailure::Throttled, true),
            (500, ApiFailure::Server, true),
            (503, ApiFailure::Server, true),
            (302, ApiFailure::Other, false),
        ];
        for (code, failure, transient) in cases {
            assert_eq!(ApiFailure::of(&api_error(code)), failure, "{code}");
            assert_eq!(failure.is_transient(), transient, "{code}");
        }
    }

    #[test]
    fn the_delay_a_throttled_call_was_asked_for_is_kept() {
        let throttled = |code: u16, seconds: u32| {
            let details = serde_json::from_value(serde_json::json!({"retryAfterSeconds": seconds}))
                .expect("status details");
            let status = kube::core::Status::failure("slow down", "TooManyRequests")
                .with_code(code)
                .with_details(details);
            call("create", "Job", "ns", "w-1")(kube::Error::Api(status.boxed()))
        };
        assert_eq!(
            throttled(429, 7).retry_after(),
            Some(std::time::Duration::from_secs(7))
        );
        assert_eq!(throttled(429, 0).retry_after(), None);
        // Only a transient failure's delay counts.
        assert_eq!(throttled(422, 7).retry_after(), None);
        assert_eq!(
            call("get", "Job", "ns", "j")(api_error(429)).retry_after(),
            None
        );
    }

    #[test]
    fn an_error_names_its_call_and_object() {
        let error = call("create", "Job", "ns", "w-1")(api_error(422));
        assert_eq!(error.kind(), "refused");
        assert!(!error.is_conflict());
        assert!(
            error.to_string().starts_with("create Job ns/w-1: "),
            "{error}"
        );
        let conflict = call("replace status", "Workflow", "ns", "w")(api_error(409));
        assert!(conflict.is_conflict());
        assert_eq!(
            incomplete("WorkflowInstance", "ns", "w-1", "metadata.uid").to_string(),
            "WorkflowInstance ns/w-1 has no metadata.uid"
        );
    }
}
