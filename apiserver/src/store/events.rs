//! Changes to stored objects: the events watches are sent, the bounded history they resume
//! from, and the subscription controllers follow them with.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::error::ApiError;

/// Watch events kept for clients that resume from a resourceVersion; older ones are compacted
/// and such clients get 410 Gone.
const HISTORY: usize = 10_000;

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

/// The bounded history of changes that watches resume from.
#[derive(Default)]
pub struct History {
    events: VecDeque<Event>,
    /// Events up to and including this version were dropped.
    compacted: u64,
}

impl History {
    /// Keeps `event`, dropping the oldest past [`HISTORY`].
    pub fn push(&mut self, event: Event) {
        self.events.push_back(event);
        while self.events.len() > HISTORY {
            if let Some(old) = self.events.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    /// Events of the type `type_key` in `namespace` ("" = all) after `rv`; `Err` when
    /// compacted (410 Gone).
    pub fn since(&self, type_key: &str, namespace: &str, rv: u64) -> Result<Vec<Event>, ApiError> {
        if rv < self.compacted {
            let mut gone = ApiError::gone(rv);
            // The real watch cache names the oldest version it can still resume from.
            gone.message = format!("too old resource version: {rv} ({})", self.compacted);
            return Err(gone);
        }
        Ok(self
            .events
            .iter()
            .filter(|e| {
                e.rv > rv
                    && e.type_key == type_key
                    && (namespace.is_empty() || e.namespace == namespace)
            })
            .cloned()
            .collect())
    }

    /// Forgets every event up to `rv`, the current version.
    pub fn compact(&mut self, rv: u64) {
        self.compacted = rv;
        self.events.clear();
    }
}
