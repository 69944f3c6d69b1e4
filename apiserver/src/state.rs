//! What the HTTP handlers, the controllers and the kubelet share: the store, the captured
//! logs, the test aids, and which background loops run. It sits below all of them, so none
//! of them needs another to reach it.

use crate::faults::{Audit, Faults};
use crate::logs::Logs;
use crate::store::Store;

/// Which background loops run; the HTTP layer needs to know too (graceful pod deletes only
/// make sense with a kubelet, foreground and orphan deletes only with a garbage collector).
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    /// Job controller, garbage collector and namespace controller.
    pub controllers: bool,
    /// The simulated kubelet.
    pub kubelet: bool,
}

/// State shared by the HTTP handlers and the background loops.
pub struct AppState {
    /// The objects.
    pub store: Store,
    /// Address clients reach the server at.
    pub address: String,
    /// Which controllers and kubelet run (deletes behave differently without them).
    pub features: Features,
    /// Container output captured by the kubelet, for `pods/log`.
    pub logs: Logs,
    /// Requests seen.
    pub audit: Audit,
    /// Faults injected into requests.
    pub faults: Faults,
    /// The bearer token every request must carry, when set (see `Config::token`).
    pub token: Option<String>,
    /// The ServiceAccount tokens issued (TokenRequest).
    pub tokens: crate::auth::Tokens,
}
