//! The streams that wire the controllers together: the fan-out of instance changes, and
//! channels and clock jumps as streams.

use std::sync::Arc;

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

/// A stream of what `rx` receives.
pub fn stream_of<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// One item per jump of the clock.
pub fn jumps_stream(
    jumps: tokio::sync::watch::Receiver<u64>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(jumps, |mut jumps| async move {
        jumps.changed().await.ok().map(|()| ((), jumps))
    })
}
