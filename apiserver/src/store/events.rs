//! Changes to stored objects: the events watches are sent, the bounded history they resume
//! from, and the subscription controllers follow them with.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::error::ApiError;

/// A change to one object.
#[derive(Clone, Debug)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// `group/plural` of the object.
    pub type_key: String,
    /// Its namespace ("" when cluster-scoped).
    pub namespace: String,
    /// ADDED, MODIFIED or DELETED.
    pub kind: &'static str,
    /// The object after the change (before it, for DELETED), shared by the history and
    /// every subscriber rather than copied for each.
    pub object: Arc<Value>,
}

/// What a [`Subscription`] hands its subscriber.
#[derive(Debug)]
pub enum Change {
    /// The next change, in order.
    Event(Event),
    /// Changes were lost while the subscriber was behind: it must rebuild its view from the
    /// store, as whatever it missed is there.
    Missed,
}

/// A controller's subscription to the store's changes, which catches up by itself when the
/// controller falls behind the broadcast channel.
pub struct Subscription {
    events: broadcast::Receiver<Event>,
}

impl From<broadcast::Receiver<Event>> for Subscription {
    fn from(events: broadcast::Receiver<Event>) -> Self {
        Subscription { events }
    }
}

impl Subscription {
    /// Waits for the next change, then hands `handle` it and every change already queued
    /// behind it, so a burst is worked through in one go. A subscriber that fell behind and
    /// lost changes is moved on to the newest (what is still queued is older than the store,
    /// and a receiver that fell behind once would otherwise stay a full channel behind,
    /// catching up each time) and gets [`Change::Missed`]. False once the store is gone.
    ///
    /// Cancel safe, for `select!`: it only waits before the first change, and hands out
    /// everything it takes.
    pub async fn next_batch(&mut self, mut handle: impl FnMut(Change)) -> bool {
        let mut next = self.events.recv().await;
        loop {
            match next {
                Ok(e) => handle(Change::Event(e)),
                Err(RecvError::Lagged(_)) => {
                    self.events = self.events.resubscribe();
                    handle(Change::Missed);
                }
                Err(RecvError::Closed) => return false,
            }
            next = match self.events.try_recv() {
                Ok(e) => Ok(e),
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => return false,
                Err(TryRecvError::Empty) => return true,
            };
        }
    }
}

/// The watch cache's capacity per resource type: it starts at the lower bound and doubles
/// while its oldest event is still fresh, up to the upper bound, as the real API server's
/// watch cache sizes itself (`defaultLowerBoundCapacity`, `defaultUpperBoundCapacity`).
const LOWER_BOUND: usize = 100;
const UPPER_BOUND: usize = 100 * 1024;
/// How long an event is kept however many come after it (below the upper bound): the real
/// server's `eventFreshDuration`, a bookmark period plus margin, so that a client keeping up
/// with its watch can always resume where it was.
const FRESH_FOR: Duration = Duration::from_secs(75);

/// How many of a type's newest events the history keeps as the shared objects the store and
/// the live watches hold; older ones are kept serialized. Most of a full history is versions
/// no longer stored (each a copy of its object), and a serialized object takes a fraction of
/// the memory of a parsed one; only a watch resuming from far back parses them again.
const SHARED_NEWEST: usize = 1024;

/// The object of a kept event.
enum Kept {
    /// Shared with the store (while current) and the watches that sent it.
    Shared(Arc<Value>),
    /// Its JSON, for an older event.
    Serialized(Box<[u8]>),
}

impl Kept {
    fn object(&self) -> Arc<Value> {
        match self {
            Kept::Shared(object) => object.clone(),
            // It was serialized from a Value: it parses back (Null if it somehow did not).
            Kept::Serialized(json) => Arc::new(serde_json::from_slice(json).unwrap_or_default()),
        }
    }
}

/// An event as a type's history keeps it.
struct KeptEvent {
    at: Instant,
    rv: u64,
    namespace: String,
    kind: &'static str,
    object: Kept,
}

/// One resource type's bounded history.
struct TypeHistory {
    events: VecDeque<KeptEvent>,
    capacity: usize,
    /// Events of this type up to and including this version were dropped.
    compacted: u64,
}

/// The bounded history of changes that watches resume from, kept per resource type (as the
/// real server keeps a watch cache per resource), so a burst of one type never pushes
/// another's events out.
#[derive(Default)]
pub struct History {
    types: HashMap<String, TypeHistory>,
    /// Every event up to and including this version is forgotten, whatever its type.
    compacted: u64,
}

impl History {
    /// Keeps `event`, dropping its type's oldest once the type's cache is full and that
    /// oldest is no longer fresh (or the cache is at its upper bound).
    pub fn push(&mut self, event: Event) {
        self.push_at(event, Instant::now());
    }

    fn push_at(&mut self, event: Event, now: Instant) {
        let floor = self.compacted;
        let history = self
            .types
            .entry(event.type_key.clone())
            .or_insert_with(|| TypeHistory {
                events: VecDeque::new(),
                capacity: LOWER_BOUND,
                compacted: floor,
            });
        if history.events.len() >= history.capacity {
            let fresh = history
                .events
                .front()
                .is_some_and(|e| now.duration_since(e.at) < FRESH_FOR);
            if fresh && history.capacity < UPPER_BOUND {
                history.capacity = (history.capacity * 2).min(UPPER_BOUND);
            } else if let Some(old) = history.events.pop_front() {
                history.compacted = old.rv;
            }
        }
        history.events.push_back(KeptEvent {
            at: now,
            rv: event.rv,
            namespace: event.namespace,
            kind: event.kind,
            object: Kept::Shared(event.object),
        });
        // The event that just left the newest: serialize it.
        if let Some(older) = history
            .events
            .len()
            .checked_sub(SHARED_NEWEST + 1)
            .and_then(|i| history.events.get_mut(i))
            && let Kept::Shared(object) = &older.object
            && let Ok(json) = serde_json::to_vec(&**object)
        {
            older.object = Kept::Serialized(json.into_boxed_slice());
        }
    }

    /// Events of the type `type_key` in `namespace` ("" = all) after `rv`; `Err` when
    /// compacted (410 Gone).
    pub fn since(&self, type_key: &str, namespace: &str, rv: u64) -> Result<Vec<Event>, ApiError> {
        let history = self.types.get(type_key);
        let compacted = history.map_or(self.compacted, |h| h.compacted.max(self.compacted));
        if rv < compacted {
            let mut gone = ApiError::gone(rv);
            // The real watch cache names the oldest version it can still resume from.
            gone.message = format!("too old resource version: {rv} ({compacted})");
            return Err(gone);
        }
        let Some(history) = history else {
            return Ok(Vec::new());
        };
        // Events are in version order: skip those at or before `rv` without looking at them.
        let first = history.events.partition_point(|e| e.rv <= rv);
        Ok(history
            .events
            .range(first..)
            .filter(|e| namespace.is_empty() || e.namespace == namespace)
            .map(|e| Event {
                rv: e.rv,
                type_key: type_key.to_string(),
                namespace: e.namespace.clone(),
                kind: e.kind,
                object: e.object.object(),
            })
            .collect())
    }

    /// Forgets every event up to `rv`, the current version.
    pub fn compact(&mut self, rv: u64) {
        self.compacted = rv;
        self.types.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rv: u64, type_key: &str) -> Event {
        Event {
            rv,
            type_key: type_key.to_string(),
            namespace: "default".to_string(),
            kind: "ADDED",
            object: Arc::new(Value::Null),
        }
    }

    #[test]
    fn a_burst_of_one_type_keeps_every_other_types_history() {
        let mut history = History::default();
        let now = Instant::now();
        history.push_at(event(1, "pods"), now);
        for rv in 2..200_000 {
            history.push_at(event(rv, "configmaps"), now);
        }
        let pods = history
            .since("pods", "", 0)
            .expect("pods are not compacted");
        assert_eq!(pods.len(), 1);
        // Past the upper bound even fresh events go, oldest first.
        let gone = history.since("configmaps", "", 1).expect_err("compacted");
        assert_eq!(gone.code, 410);
        let kept = history.since("configmaps", "", 200_000 - 1 - UPPER_BOUND as u64);
        assert_eq!(kept.expect("kept").len(), UPPER_BOUND);
    }

    #[test]
    fn fresh_events_are_kept_and_stale_ones_dropped_once_the_cache_is_full() {
        let mut history = History::default();
        let start = Instant::now();
        for rv in 1..=5_000 {
            history.push_at(event(rv, "pods"), start);
        }
        assert_eq!(history.since("pods", "", 0).expect("fresh").len(), 5_000);
        // Later, the cache is full of stale events: each new one pushes the oldest out.
        let later = start + FRESH_FOR + Duration::from_secs(1);
        let capacity = history.types["pods"].capacity;
        for rv in 5_001..=5_000 + capacity as u64 {
            history.push_at(event(rv, "pods"), later);
        }
        assert_eq!(history.types["pods"].capacity, capacity);
        assert!(history.since("pods", "", 4_999).is_err());
        assert_eq!(
            history.since("pods", "", 5_000).expect("kept").len(),
            capacity
        );
    }

    #[test]
    fn older_events_come_back_as_they_were_sent() {
        let mut history = History::default();
        let now = Instant::now();
        let total = SHARED_NEWEST as u64 + 10;
        for rv in 1..=total {
            let mut e = event(rv, "pods");
            e.object =
                Arc::new(serde_json::json!({"metadata": {"resourceVersion": rv.to_string()}}));
            history.push_at(e, now);
        }
        let kept = &history.types["pods"].events;
        assert!(matches!(kept[9].object, Kept::Serialized(_)));
        assert!(matches!(kept[10].object, Kept::Shared(_)));
        let events = history.since("pods", "", 0).expect("kept");
        assert_eq!(events.len() as u64, total);
        for (e, rv) in events.iter().zip(1..) {
            assert_eq!(e.rv, rv);
            assert_eq!(e.object["metadata"]["resourceVersion"], rv.to_string());
        }
    }

    #[test]
    fn compaction_forgets_every_type() {
        let mut history = History::default();
        history.push(event(1, "pods"));
        history.compact(2);
        assert!(history.since("pods", "", 1).is_err());
        assert!(history.since("configmaps", "", 1).is_err());
        assert!(history.since("pods", "", 2).expect("current").is_empty());
    }
}
