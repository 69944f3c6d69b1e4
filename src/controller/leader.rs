//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go does it: the holder
//! renews `renewTime` well within `leaseDurationSeconds`; a candidate takes the Lease over
//! once it has not been renewed for a whole duration. Every write carries the
//! resourceVersion it was based on, so two candidates cannot both win.
//!
//! Only the leader runs the controllers. A leader that cannot renew in time stops its work
//! (the caller exits) rather than risk two writers; on shutdown it releases the Lease so a
//! standby takes over at once.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use thiserror::Error;

use super::Metrics;

use super::error::{ApiErrorExt, ApiFailure};

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews and a candidate retries.
    pub retry_period: Duration,
}

/// Why leading ended.
#[derive(Debug, Error)]
pub enum LeaderError {
    /// The Lease could not be renewed before it expired.
    #[error("lost the leader lease {0}: not renewed in time")]
    Lost(String),
}

/// What one attempt to acquire or renew saw.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Leading,
    Following(String),
}

/// A Lease time from a chrono time (now, if out of range).
pub(super) fn micro(t: DateTime<Utc>) -> MicroTime {
    MicroTime(
        k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros())
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()),
    )
}

/// A chrono time from a Lease time.
pub(super) fn chrono(t: &MicroTime) -> Option<DateTime<Utc>> {
    Utc.timestamp_micros(t.0.as_microsecond()).single()
}

/// One acquire-or-renew round.
async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<Outcome, kube::Error> {
    let now = Utc::now();
    let seconds = i32::try_from(config.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(micro(now)),
                renew_time: Some(micro(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Outcome::Leading),
            Err(e) if e.failure() == ApiFailure::Conflict => Ok(Outcome::Following(String::new())),
            Err(err) => Err(err),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let renewed = spec.renew_time.as_ref().and_then(chrono);
    let duration =
        chrono::Duration::seconds(i64::from(spec.lease_duration_seconds.unwrap_or(seconds)));
    let expired = holder.is_empty() || renewed.is_none_or(|r| r + duration < now);
    if holder != config.identity && !expired {
        return Ok(Outcome::Following(holder));
    }
    if holder != config.identity {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(micro(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(micro(now));
    spec.lease_duration_seconds = Some(seconds);
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(Outcome::Leading),
        Err(e) if e.failure() == ApiFailure::Conflict => Ok(Outcome::Following(holder)),
        Err(err) => Err(err),
    }
}

/// Gives the Lease up (on clean shutdown) so another replica need not wait for it to expire.
/// Whether it was given up.
async fn release(api: &Api<Lease>, config: &LeaseConfig) -> bool {
    let mut lease = match api.get_opt(&config.name).await {
        Ok(Some(lease)) => lease,
        Ok(None) => return false,
        Err(err) => {
            tracing::warn!(%err, "could not release the leader lease");
            return false;
        }
    };
    let Some(spec) = lease.spec.as_mut() else {
        return false;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return false;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(micro(Utc::now()));
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => true,
        Err(err) => {
            tracing::warn!(%err, "could not release the leader lease");
            false
        }
    }
}

/// How leading ends on shutdown: once `signal` resolves the controllers get `grace` to
/// finish the reconciles under way, and releasing the Lease gets `release` more. Both are
/// bounded so a replica whose API server has gone away still exits within its pod's grace
/// period.
pub struct Stop<S> {
    /// Resolves when the replica is asked to stop (SIGTERM, Ctrl-C).
    pub signal: S,
    /// How long the controllers may take to stop once `signal` resolved.
    pub grace: Duration,
    /// How long releasing the Lease may take.
    pub release: Duration,
}

/// One acquire-or-renew round that must answer by `deadline`: an answer that comes later is
/// no proof of leading, and a request to a server that does not answer would otherwise wait
/// for ever (kube sets no read timeout).
async fn attempt(
    api: &Api<Lease>,
    config: &LeaseConfig,
    deadline: tokio::time::Instant,
) -> Option<Result<Outcome, kube::Error>> {
    tokio::time::timeout_at(deadline, try_acquire(api, config))
        .await
        .ok()
}

/// Waits until this replica holds the Lease, then runs `work` while renewing it. Returns when
/// `work` ends or the replica is stopped (after releasing the Lease), or with an error when
/// the Lease was lost.
pub async fn run_elected<F, S>(
    client: Client,
    config: LeaseConfig,
    metrics: &Metrics,
    work: F,
    stop: Stop<S>,
) -> Result<(), LeaderError>
where
    F: std::future::Future<Output = ()>,
    S: std::future::Future<Output = ()> + Clone,
{
    let Stop {
        signal,
        grace,
        release: release_within,
    } = stop;
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let acquire = async {
        let mut last_following = None;
        loop {
            let started = tokio::time::Instant::now();
            // Leading must leave at least a retry period before the new Lease expires.
            let deadline = started + config.duration.saturating_sub(config.retry_period);
            match attempt(&api, &config, deadline).await {
                Some(Ok(Outcome::Leading)) => return started,
                Some(Ok(Outcome::Following(holder))) => {
                    if last_following.as_ref() != Some(&holder) {
                        tracing::info!(lease = %config.name, %holder, "waiting for the leader lease");
                        last_following = Some(holder);
                    }
                }
                Some(Err(err)) => tracing::warn!(%err, "leader election"),
                None => tracing::warn!(lease = %config.name, "leader election: no answer in time"),
            }
            tokio::time::sleep(config.retry_period).await;
        }
    };
    let acquired = tokio::select! {
        started = acquire => started,
        // Not leading: nothing to release.
        () = signal.clone() => return Ok(()),
    };
    tracing::info!(lease = %config.name, identity = %config.identity, "leading");
    metrics.set_leader(true);
    let renew = async {
        // When the last successful renewal was sent: the Lease runs from then in others' eyes.
        let mut last_renewed = acquired;
        loop {
            tokio::time::sleep(config.retry_period).await;
            let started = tokio::time::Instant::now();
            // A renewal answered after the Lease expired in others' eyes proves nothing.
            match attempt(&api, &config, last_renewed + config.duration).await {
                Some(Ok(Outcome::Leading)) => last_renewed = started,
                Some(Ok(Outcome::Following(holder))) => {
                    tracing::error!(%holder, "another replica took the leader lease");
                    return;
                }
                Some(Err(err)) => tracing::warn!(%err, "renewing the leader lease"),
                None => {
                    tracing::warn!(lease = %config.name, "renewing the leader lease: no answer in time")
                }
            }
            // Stop before the Lease can expire in others' eyes.
            if last_renewed.elapsed() + config.retry_period >= config.duration {
                return;
            }
        }
    };
    let overdue = async {
        signal.await;
        tokio::time::sleep(grace).await;
        tracing::warn!(?grace, "the controllers did not stop in time: leaving them");
    };
    let result = tokio::select! {
        () = work => Ok(()),
        () = overdue => Ok(()),
        () = renew => Err(LeaderError::Lost(config.name.clone())),
    };
    metrics.set_leader(false);
    if result.is_ok() {
        match tokio::time::timeout(release_within, release(&api, &config)).await {
            Ok(true) => tracing::info!(lease = %config.name, "released the leader lease"),
            Ok(false) => {}
            Err(_) => tracing::warn!(
                lease = %config.name,
                "could not release the leader lease in time: it expires by itself"
            ),
        }
    }
    result
}
