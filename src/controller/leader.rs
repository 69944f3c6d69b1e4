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

fn micro(t: DateTime<Utc>) -> MicroTime {
    MicroTime(
        k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros())
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()),
    )
}

fn chrono(t: &MicroTime) -> Option<DateTime<Utc>> {
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
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(micro(Utc::now()));
    if let Err(err) = api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        tracing::warn!(%err, "could not release the leader lease");
    }
}

/// Waits until this replica holds the Lease, then runs `work` while renewing it. Returns when
/// `work` ends (after releasing the Lease) or with an error when the Lease was lost.
pub async fn run_elected<F>(
    client: Client,
    config: LeaseConfig,
    metrics: &Metrics,
    work: F,
) -> Result<(), LeaderError>
where
    F: std::future::Future<Output = ()>,
{
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut last_following = None;
    loop {
        match try_acquire(&api, &config).await {
            Ok(Outcome::Leading) => break,
            Ok(Outcome::Following(holder)) => {
                if last_following.as_ref() != Some(&holder) {
                    tracing::info!(lease = %config.name, %holder, "waiting for the leader lease");
                    last_following = Some(holder);
                }
            }
            Err(err) => tracing::warn!(%err, "leader election"),
        }
        tokio::time::sleep(config.retry_period).await;
    }
    tracing::info!(lease = %config.name, identity = %config.identity, "leading");
    metrics.set_leader(true);
    let renew = async {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(config.retry_period).await;
            match try_acquire(&api, &config).await {
                Ok(Outcome::Leading) => last_renewed = tokio::time::Instant::now(),
                Ok(Outcome::Following(holder)) => {
                    tracing::error!(%holder, "another replica took the leader lease");
                    return;
                }
                Err(err) => tracing::warn!(%err, "renewing the leader lease"),
            }
            // Stop before the Lease can expire in others' eyes.
            if last_renewed.elapsed() + config.retry_period >= config.duration {
                return;
            }
        }
    };
    let result = tokio::select! {
        () = work => Ok(()),
        () = renew => Err(LeaderError::Lost(config.name.clone())),
    };
    metrics.set_leader(false);
    if result.is_ok() {
        release(&api, &config).await;
    }
    result
}
