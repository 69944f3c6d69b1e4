//! Two test aids on the request path: an audit of the requests seen (who asked for what,
//! in RBAC's terms) and fault injection switchable at run time, also over HTTP (`control`).

pub mod control;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::ApiError;
use crate::lock::lock;

/// One kind of API request, as an RBAC rule would name it, with how often it was seen.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Request {
    /// The `User-Agent` header.
    pub user_agent: String,
    /// get, list, watch, create, update, patch, delete or deletecollection.
    pub verb: String,
    /// API group ("" for core).
    pub api_group: String,
    /// Resource (plural), "" for non-resource URLs.
    pub resource: String,
    /// Subresource (`status`, `log`), or "".
    pub subresource: String,
    /// Namespace, or "" for cluster-scoped and all-namespace requests.
    pub namespace: String,
    /// The path, for non-resource URLs (`/version`, `/apis`); "" otherwise.
    pub path: String,
    /// How many such requests were seen.
    pub count: u64,
}

/// Requests seen, counted by kind: cheap enough to keep for a whole run.
#[derive(Default)]
pub struct Audit {
    seen: Mutex<HashMap<Request, u64>>,
}

impl Audit {
    /// Counts one request (`count` is ignored).
    pub fn record(&self, request: Request) {
        *lock(&self.seen).entry(request).or_default() += 1;
    }

    /// Every kind of request seen, sorted, with its count.
    pub fn requests(&self) -> Vec<Request> {
        let seen = lock(&self.seen);
        let mut out: Vec<Request> = seen
            .iter()
            .map(|(r, n)| Request {
                count: *n,
                ..r.clone()
            })
            .collect();
        out.sort();
        out
    }
}

#[derive(Default)]
struct Settings {
    /// Verb ("*" for any) → (probability, status code).
    errors: HashMap<String, (f64, u16)>,
    latency: Duration,
}

/// Faults applied to incoming requests.
pub struct Faults {
    settings: Mutex<Settings>,
    /// Open watch streams end when this changes.
    pub drop_watches: watch::Sender<u64>,
    /// How many of the next watches get 410 Gone.
    expire_watches: AtomicU32,
    /// While true, requests wait.
    paused: watch::Sender<bool>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            settings: Mutex::new(Settings::default()),
            drop_watches: watch::channel(0).0,
            expire_watches: AtomicU32::new(0),
            paused: watch::channel(false).0,
        }
    }
}

fn random_unit() -> f64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let n = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    f64::from(n) / f64::from(u32::MAX)
}

impl Faults {
    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        lock(&self.settings)
    }

    /// Fails a share (0.0–1.0) of requests with `verb` ("*" for all, or a verb and a
    /// resource such as "list jobs" for that resource alone) with `code`.
    pub fn set_error_rate(&self, verb: &str, rate: f64, code: u16) {
        let mut s = self.settings();
        if rate <= 0.0 {
            s.errors.remove(verb);
        } else {
            s.errors.insert(verb.to_string(), (rate.min(1.0), code));
        }
    }

    /// Delays every request by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.settings().latency = latency;
    }

    /// Ends every open watch stream.
    pub fn drop_watches(&self) {
        self.drop_watches.send_modify(|n| *n += 1);
    }

    /// The next `n` watches get 410 Gone.
    pub fn expire_watches(&self, n: u32) {
        self.expire_watches.store(n, Ordering::SeqCst);
    }

    /// Whether this watch should get 410 Gone (uses up one).
    pub fn take_expired_watch(&self) -> bool {
        self.expire_watches
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Holds (true) or releases (false) requests.
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// The current settings as JSON, for the control API: `errors` by verb (`rate`,
    /// `code`), `latencyMillis`, `expireWatches` (410s still to come) and `paused`.
    pub fn snapshot(&self) -> serde_json::Value {
        let (errors, latency) = {
            let s = self.settings();
            let errors: serde_json::Map<String, serde_json::Value> = s
                .errors
                .iter()
                .map(|(verb, (rate, code))| {
                    (
                        verb.clone(),
                        serde_json::json!({"rate": rate, "code": code}),
                    )
                })
                .collect();
            (errors, s.latency)
        };
        serde_json::json!({
            "errors": errors,
            "latencyMillis": u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            "expireWatches": self.expire_watches.load(Ordering::SeqCst),
            "paused": *self.paused.borrow(),
        })
    }

    /// Clears error rates, latency and pending 410s, and resumes.
    pub fn clear(&self) {
        *self.settings() = Settings::default();
        self.expire_watches.store(0, Ordering::SeqCst);
        self.set_paused(false);
    }

    /// Waits while paused, sleeps the configured latency, and maybe fails the request.
    /// The most specific setting applies: `"<verb> <resource>"`, then the verb, then `"*"`.
    pub async fn before(&self, verb: &str, resource: &str) -> Result<(), ApiError> {
        let mut paused = self.paused.subscribe();
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                break;
            }
        }
        let (latency, error) = {
            let s = self.settings();
            let error = s
                .errors
                .get(&format!("{verb} {resource}"))
                .or_else(|| s.errors.get(verb))
                .or_else(|| s.errors.get("*"))
                .copied();
            (s.latency, error)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match error {
            Some((rate, code)) if random_unit() < rate => Err(ApiError::injected(code)),
            _ => Ok(()),
        }
    }
}
