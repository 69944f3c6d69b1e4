//! The streams that wire the controllers together: the fan-out of instance changes, and
//! channels and clock jumps as streams.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::mpsc;

use charon_core::resources::WorkflowInstance;

/// Hands each changed instance to every controller, in order, waiting for one that is
/// behind by more than its buffer (so the watch slows down rather than a change being lost).
#[derive(Clone)]
pub struct FanOut(Arc<[mpsc::Sender<Arc<WorkflowInstance>>; 3]>);

impl FanOut {
    /// The fan-out and one stream per subscriber.
    pub fn new(
        buffer: usize,
    ) -> (
        FanOut,
        [impl futures::Stream<Item = Arc<WorkflowInstance>> + Send + 'static; 3],
    ) {
        let (a, ra) = mpsc::channel(buffer);
        let (b, rb) = mpsc::channel(buffer);
        let (c, rc) = mpsc::channel(buffer);
        let stream = |mut rx: mpsc::Receiver<Arc<WorkflowInstance>>| {
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        };
        (
            FanOut(Arc::new([a, b, c])),
            [stream(ra), stream(rb), stream(rc)],
        )
    }

    /// Hands `instance` to every subscriber, in order.
    pub async fn send(&self, instance: Arc<WorkflowInstance>) {
        for subscriber in self.0.iter() {
            // A subscriber gone means its controller stopped: nothing is owed to it.
            let _ = subscriber.send(instance.clone()).await;
        }
    }
}

/// While a relist is under way: what the cache held when it began, and what it listed.
type Listing = (
    Vec<Arc<WorkflowInstance>>,
    HashSet<ObjectRef<WorkflowInstance>>,
);

/// Relays the shared instance watch, already applied to `cached`, to the controllers: each
/// changed instance as the cache holds it goes to `fan_out`, and each deleted one to `deleted`.
///
/// A (re)list is applied to the cache only when it is complete, so the instances it lists are
/// handed on then, not one by one: looked up earlier they are not in the cache yet (the new
/// ones were never handed on at all, and an instance created while the watch was down waited
/// for ever without a status). A relist reports no deletions: what the cache held before it
/// and the list no longer has was deleted meanwhile.
pub async fn relay_instances(
    events: impl Stream<Item = Result<watcher::Event<WorkflowInstance>, watcher::Error>>,
    cached: Store<WorkflowInstance>,
    fan_out: FanOut,
    mut deleted: impl FnMut(&WorkflowInstance),
) {
    let mut events = std::pin::pin!(events);
    // While a list is under way: what the cache held when it began, and what it listed.
    let mut listing: Option<Listing> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(instance)) => {
                // Just applied, so the cache has it (the watch applies the next event only
                // after this one is handed on).
                if let Some(stored) = cached.get(&ObjectRef::from_obj(&instance)) {
                    fan_out.send(stored).await;
                }
            }
            Ok(watcher::Event::Delete(instance)) => deleted(&instance),
            Ok(watcher::Event::Init) => {
                tracing::info!("listing WorkflowInstances");
                listing = Some((cached.state(), HashSet::new()));
            }
            Ok(watcher::Event::InitApply(instance)) => {
                if let Some((_, listed)) = listing.as_mut() {
                    listed.insert(ObjectRef::from_obj(&instance));
                }
            }
            Ok(watcher::Event::InitDone) => {
                tracing::info!("listed WorkflowInstances");
                let Some((before, listed)) = listing.take() else {
                    continue;
                };
                for instance in before {
                    if !listed.contains(&ObjectRef::from_obj(instance.as_ref())) {
                        deleted(&instance);
                    }
                }
                for reference in listed {
                    if let Some(stored) = cached.get(&reference) {
                        fan_out.send(stored).await;
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "watching WorkflowInstances"),
        }
    }
}

/// A stream of what `rx` receives.
pub fn stream_of<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Reconcile requests read from the objects of a watch (the instance a Job belongs to, a
/// workflow itself), for `Controller::reconcile_on`. Requests made by name alone are smaller
/// than the controller's own: handed to it as related objects, each pending request would
/// carry the type and version of its object as well, and as the controller's own objects,
/// their uid and version, kept twice by its scheduler; at a burst of 100,000 runs those were a
/// large part of the operator's memory. The watch backs off on errors itself; they wake no
/// one and are logged here.
pub fn requests_of<K, T, S>(
    watch: S,
    request: impl Fn(K) -> Option<T> + Send + 'static,
) -> impl futures::Stream<Item = T> + Send + 'static
where
    S: futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    T: Send + 'static,
{
    watch.filter_map(move |object| {
        let request = match object {
            Ok(object) => request(object),
            Err(error) => {
                tracing::debug!(%error, "watch failed; it backs off");
                None
            }
        };
        futures::future::ready(request)
    })
}

/// A reconcile request for `object`, by namespace and name alone (see [`requests_of`]).
pub fn by_name<K: kube::Resource<DynamicType = ()>>(object: &K) -> ObjectRef<K> {
    let name = object.meta().name.as_deref().unwrap_or_default();
    match object.meta().namespace.as_deref() {
        Some(namespace) => ObjectRef::new(name).within(namespace),
        None => ObjectRef::new(name),
    }
}

/// Fires whenever this replica gains a shard: its controllers then reconcile everything, and
/// act on the objects of the shard gained.
pub fn gained_stream(
    shards: &super::shards::Shards,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    jumps_stream(shards.gained())
}

/// One item per jump of the clock.
pub fn jumps_stream(
    jumps: tokio::sync::watch::Receiver<u64>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(jumps, |mut jumps| async move {
        jumps.changed().await.ok().map(|()| ((), jumps))
    })
}
