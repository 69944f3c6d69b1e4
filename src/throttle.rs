//! Client-side manners of the operator on a shared API server: a token-bucket rate limit on
//! its requests (`--api-qps`, `--api-burst`) and waiting out `Retry-After` on 429.
//!
//! kube's own retry layer is turned off (see [`client`]), and a real API server sheds load with
//! `429 Too Many Requests` and `Retry-After` (max-in-flight and API Priority and Fairness).
//! Those 429s are answered before the request reaches its handler, so nothing was done and
//! repeating any verb is safe, a create included. That is the only status repeated here:
//! 5xx are not, since a 500 or 504 may come after a write was applied; they
//! go back to the reconcile, which reads the state again and decides (SPEC §7: both are
//! transient). A 429 without `Retry-After`, or asking for longer than [`MAX_RETRY_AFTER`], or
//! still there after [`RETRIES`], also goes back to the reconcile, which requeues after the
//! server's delay (see `Error::retry_after`).

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{HeaderMap, Request, Response, StatusCode};
use kube::client::{Body, ClientBuilder};
use tower::buffer::BufferLayer;
use tower::retry::{Policy, RetryLayer};
use tower::{Layer, Service};

/// Longest `Retry-After` waited out inside a request; a longer one fails the request, and
/// the reconcile requeues after it instead of holding a worker that long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// How many times one request is repeated after a 429.
pub const RETRIES: u32 = 3;

/// Requests waiting for the rate limit or a retry, beyond which callers wait to queue.
const QUEUE: usize = 1024;

/// A client-side rate limit: `qps` requests a second on average, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Average requests per second (above zero).
    pub qps: f64,
    /// Requests let through at once after a quiet spell (at least one).
    pub burst: u32,
}

impl RateLimit {
    /// The limit `qps` with `burst`, or with twice `qps` when `burst` is not given (client-go
    /// and controller-runtime also allow bursts above the average), checked.
    pub fn new(qps: f64, burst: Option<u32>) -> Result<Self, String> {
        if !qps.is_finite() || qps <= 0.0 {
            return Err(format!(
                "--api-qps: expected a positive number of requests per second, got {qps}"
            ));
        }
        // At least a request every hour: anything slower is a typo, and the period must fit.
        if qps < 1.0 / 3600.0 {
            return Err(format!(
                "--api-qps: {qps} is below one request an hour; leave it out for no limit"
            ));
        }
        let burst = match burst {
            Some(0) => return Err("--api-burst: expected at least 1, got 0".into()),
            Some(burst) => burst,
            None => (qps * 2.0).ceil().clamp(1.0, f64::from(u32::MAX)) as u32,
        };
        Ok(RateLimit { qps, burst })
    }

    fn quota(self) -> Quota {
        let period = Duration::from_secs_f64(1.0 / self.qps);
        // `new` keeps qps within (1/3600, ∞): the period is at most an hour; a period that
        // rounds to zero nanoseconds means no limit worth keeping, so it becomes 1 ns.
        let period = period.max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(period)
            // `period` is at least 1 ns, the only case `with_period` refuses.
            .expect("a period above zero")
            .allow_burst(burst)
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// Holds each request until the rate limit lets it through (a GCRA token bucket from
/// `governor`). Every request counts, retries included, as in client-go.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<Limiter>,
}

impl RateLimitLayer {
    /// The layer for `limit`.
    pub fn new(limit: RateLimit) -> Self {
        RateLimitLayer {
            limiter: Arc::new(RateLimiter::direct(limit.quota())),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimited<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

/// Waits until `limiter` lets one request through.
async fn admitted(limiter: &Limiter) {
    let clock = DefaultClock::default();
    while let Err(not_until) = limiter.check() {
        tokio::time::sleep(not_until.wait_time_from(clock.now())).await;
    }
}

impl<S, R> Service<Request<R>> for RateLimited<S>
where
    S: Service<Request<R>> + Clone + Send + 'static,
    S::Future: Send,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<R>) -> Self::Future {
        // The service made ready by `poll_ready` goes with the request; a clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        Box::pin(async move {
            admitted(&limiter).await;
            inner.call(request).await
        })
    }
}

/// The delay a `Retry-After` header asks for, in whole seconds as the API server sends it
/// (an HTTP date is not used by Kubernetes and counts as absent).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Repeats a request that got 429 with a `Retry-After` of at most [`MAX_RETRY_AFTER`], after
/// that delay, at most [`RETRIES`] times. Bodies kube buffers (every `Api` call's) are sent
/// again as they were; a streamed body is never repeated.
#[derive(Clone, Debug)]
pub struct RetryAfterPolicy {
    retries_left: u32,
    max_wait: Duration,
}

impl Default for RetryAfterPolicy {
    fn default() -> Self {
        RetryAfterPolicy {
            retries_left: RETRIES,
            max_wait: MAX_RETRY_AFTER,
        }
    }
}

impl<B, E> Policy<Request<Body>, Response<B>, E> for RetryAfterPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut Request<Body>,
        result: &mut Result<Response<B>, E>,
    ) -> Option<Self::Future> {
        let Ok(response) = result else {
            return None;
        };
        if response.status() != StatusCode::TOO_MANY_REQUESTS || self.retries_left == 0 {
            return None;
        }
        let wait = retry_after(response.headers()).filter(|wait| *wait <= self.max_wait)?;
        self.retries_left -= 1;
        tracing::debug!(
            method = %request.method(),
            path = request.uri().path(),
            ?wait,
            "throttled by the API server: waiting as asked"
        );
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(&mut self, request: &Request<Body>) -> Option<Request<Body>> {
        let body = request.body().try_clone()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

/// The service stack kube's `ClientBuilder::try_from(config)` builds.
pub type BaseService =
    tower::util::BoxService<Request<Body>, Response<Box<kube::client::DynBody>>, tower::BoxError>;

/// A client for `config` that waits out `Retry-After` on 429 and, when `limit` is given,
/// keeps to it. kube's own retry layer is turned off: it repeats 503 and 504 for every verb,
/// a create included, up to 15 times with waits growing to 1,000 s, inside a reconcile.
pub fn client(
    mut config: kube::Config,
    limit: Option<RateLimit>,
) -> Result<kube::Client, kube::Error> {
    config.default_retry = false;
    Ok(client_from(ClientBuilder::try_from(config)?, limit))
}

/// [`client`] on a stack of the caller's (one that counts requests, say), built from a
/// config with `default_retry` off.
pub fn client_from(builder: ClientBuilder<BaseService>, limit: Option<RateLimit>) -> kube::Client {
    // The retry layer clones the service under it for each repeat: a buffer makes kube's
    // boxed stack cloneable.
    let builder = builder.with_layer(&BufferLayer::<Request<Body>>::new(QUEUE));
    let builder = builder.with_layer(&tower::util::option_layer(limit.map(RateLimitLayer::new)));
    builder
        .with_layer(&RetryLayer::new(RetryAfterPolicy::default()))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;

    use axum::http::HeaderValue;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Api;
    use kube::api::PostParams;

    /// What the test server saw: each request's method, body and arrival.
    #[derive(Default)]
    struct Seen {
        requests: Mutex<Vec<(String, String, Instant)>>,
    }

    /// A server that answers the first `throttled` requests with 429 and `Retry-After:
    /// retry_after`, then echoes the body with 201.
    async fn server(throttled: usize, retry_after: &'static str) -> (String, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let state = seen.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let seen = state.clone();
            async move {
                let method = request.method().to_string();
                let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                    .await
                    .unwrap_or_default();
                let body = String::from_utf8_lossy(&body).into_owned();
                let n = {
                    let mut requests = seen.requests.lock().unwrap_or_else(|e| e.into_inner());
                    requests.push((method, body.clone(), Instant::now()));
                    requests.len()
                };
                let mut response = if n <= throttled {
                    let mut r = axum::response::Response::new(axum::body::Body::from(
                        r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Too many requests, please try again later.","reason":"TooManyRequests","details":{"retryAfterSeconds":1},"code":429}"#,
                    ));
                    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    r.headers_mut()
                        .insert(http::header::RETRY_AFTER, HeaderValue::from_static(retry_after));
                    r
                } else {
                    let mut r = axum::response::Response::new(axum::body::Body::from(body));
                    *r.status_mut() = StatusCode::CREATED;
                    r
                };
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, seen)
    }

    fn configmap(name: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"},
            "data": {"k": "v"},
        }))
        .expect("configmap")
    }

    fn api(url: &str, limit: Option<RateLimit>) -> Api<ConfigMap> {
        let config = kube::Config::new(url.parse().expect("url"));
        Api::namespaced(client(config, limit).expect("client"), "default")
    }

    #[tokio::test]
    async fn a_create_throttled_with_retry_after_is_sent_again_after_the_delay() {
        let (url, seen) = server(2, "1").await;
        let created = api(&url, None)
            .create(&PostParams::default(), &configmap("a"))
            .await
            .expect("created after two 429s");
        assert_eq!(created.metadata.name.as_deref(), Some("a"));
        let requests = seen.requests.lock().expect("seen").clone();
        assert_eq!(requests.len(), 3, "two 429s, then the answer");
        assert!(requests.iter().all(|(m, _, _)| m == "POST"));
        assert!(
            requests.windows(2).all(|w| w[0].1 == w[1].1),
            "the same body each time"
        );
        for pair in requests.windows(2) {
            let gap = pair[1].2 - pair[0].2;
            assert!(gap >= Duration::from_millis(990), "waited {gap:?}, not 1s");
        }
    }

    #[tokio::test]
    async fn throttling_that_outlasts_the_retries_reaches_the_caller() {
        let (url, seen) = server(usize::MAX, "0").await;
        let error = api(&url, None)
            .create(&PostParams::default(), &configmap("a"))
            .await
            .expect_err("still throttled");
        assert!(
            matches!(&error, kube::Error::Api(s) if s.code == 429),
            "{error}"
        );
        assert_eq!(
            seen.requests.lock().expect("seen").len(),
            1 + RETRIES as usize
        );
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_bound_is_left_to_the_caller() {
        let (url, seen) = server(1, "60").await;
        let started = Instant::now();
        let error = api(&url, None)
            .create(&PostParams::default(), &configmap("a"))
            .await
            .expect_err("not waited out");
        assert!(
            matches!(&error, kube::Error::Api(s) if s.code == 429),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(seen.requests.lock().expect("seen").len(), 1);
    }

    #[tokio::test]
    async fn the_rate_limit_spreads_a_burst() {
        let (url, seen) = server(0, "0").await;
        let api = api(&url, Some(RateLimit::new(10.0, Some(2)).expect("limit")));
        let started = Instant::now();
        let creates = (0..12).map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &configmap(&format!("c{i}")))
                    .await
                    .expect("created")
            }
        });
        futures::future::join_all(creates).await;
        // Two at once, then one every 100 ms: the last of 12 no sooner than 1 s in.
        assert!(started.elapsed() >= Duration::from_millis(950));
        let requests = seen.requests.lock().expect("seen").clone();
        assert_eq!(requests.len(), 12);
        let first = requests[0].2;
        for (i, (_, _, at)) in requests.iter().enumerate() {
            let allowed = Duration::from_millis(100 * (i.saturating_sub(1) as u64));
            assert!(
                *at - first + Duration::from_millis(60) >= allowed,
                "request {i} after {:?}",
                *at - first
            );
        }
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(
            RateLimit::new(5.0, None),
            Ok(RateLimit {
                qps: 5.0,
                burst: 10
            })
        );
        assert_eq!(RateLimit::new(0.5, None).map(|l| l.burst), Ok(1));
        assert!(RateLimit::new(0.0, None).unwrap_err().contains("--api-qps"));
        assert!(RateLimit::new(f64::NAN, None).is_err());
        assert!(
            RateLimit::new(5.0, Some(0))
                .unwrap_err()
                .contains("--api-burst")
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
