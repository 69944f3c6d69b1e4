//! Remembers this controller's own recent writes so a reconcile does not act on a cache that
//! has not seen them yet: it would plan from stale state and its write would only conflict.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::lock;

/// The resourceVersion of this controller's last write to each object (by uid), until the
/// cache has caught up with it.
#[derive(Default)]
pub struct Writes {
    pending: Mutex<HashMap<String, (String, Instant)>>,
}

/// How long to wait for the cache to show a write before trusting it anyway: under a burst of
/// thousands of instances the watch can be seconds behind, and acting on the older view only
/// ends in a conflict.
const WRITE_VISIBLE_WITHIN: Duration = Duration::from_secs(30);

impl Writes {
    /// Records that the object with this metadata (as the write returned it) is ours.
    pub fn wrote(&self, meta: &ObjectMeta) {
        if let (Some(uid), Some(rv)) = (meta.uid.as_deref(), meta.resource_version.as_deref()) {
            lock(&self.pending).insert(uid.to_string(), (rv.to_string(), Instant::now()));
        }
    }

    /// Whether the cached object with this metadata may be behind our last write to it.
    pub fn stale(&self, meta: &ObjectMeta) -> bool {
        let Some(uid) = meta.uid.as_deref() else {
            return false;
        };
        let mut pending = lock(&self.pending);
        match pending.get(uid) {
            Some((rv, _))
                if meta
                    .resource_version
                    .as_deref()
                    .is_some_and(|cached| caught_up(cached, rv)) =>
            {
                pending.remove(uid);
                false
            }
            Some((_, at)) if at.elapsed() < WRITE_VISIBLE_WITHIN => true,
            Some(_) => {
                pending.remove(uid);
                false
            }
            None => false,
        }
    }

    /// Forgets the writes to an object that was deleted.
    pub fn forget(&self, meta: &ObjectMeta) {
        if let Some(uid) = meta.uid.as_deref() {
            lock(&self.pending).remove(uid);
        }
    }
}

/// Whether a cached resourceVersion shows the write that returned `written`: the same
/// version, or (where versions are numbers, as etcd's revisions are) a later one, written by
/// someone else after us. Versions that are not numbers are only compared for equality.
fn caught_up(cached: &str, written: &str) -> bool {
    match (cached.parse::<u64>(), written.parse::<u64>()) {
        (Ok(cached), Ok(written)) => cached >= written,
        _ => cached == written,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: &str, resource_version: &str) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.into()),
            resource_version: Some(resource_version.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_write_is_awaited_until_the_cache_shows_it_or_a_later_version() {
        let writes = Writes::default();
        writes.wrote(&meta("u", "10"));
        assert!(writes.stale(&meta("u", "9")));
        // Someone wrote after us: the cache is past our write, which is then forgotten.
        assert!(!writes.stale(&meta("u", "12")));
        assert!(!writes.stale(&meta("u", "9")));
        // Versions that are not numbers are compared for equality only.
        writes.wrote(&meta("v", "abc"));
        assert!(writes.stale(&meta("v", "abd")));
        assert!(!writes.stale(&meta("v", "abc")));
        assert!(!writes.stale(&meta("never-written", "1")));
        writes.wrote(&meta("w", "3"));
        writes.forget(&meta("w", "3"));
        assert!(!writes.stale(&meta("w", "2")), "forgotten");
    }
}
