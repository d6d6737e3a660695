//! Controllers: pure planners, and the loops that feed them and write their plans back.
//!
//! ```text
//! replicas.rs   per app: the count, the rolling update, Lost replicas (pure)
//! plan.rs       a whole pass: snapshot + now → plan (pure; unit and property tests)
//! snapshot.rs   reads a snapshot: the store, the node registry, what boards told
//! commit.rs     writes a plan: one transaction per app, the app's revision checked
//! desired.rs    each node's desired set, and the delta a session sends
//! run.rs        the loop: on every store change and every second
//! ```

pub mod commit;
pub mod desired;
pub mod plan;
pub mod replicas;
pub mod run;
pub mod snapshot;

use crate::events::Events;
use crate::nodes::NodeRegistry;
use crate::objects::Objects;
use crate::observed::Observed;
use desired::DesiredSets;
use std::sync::Arc;

/// What the controllers read and write — nothing more (not the API, not the CA).
#[derive(Debug, Clone)]
pub struct Context {
    pub objects: Objects,
    pub registry: Arc<NodeRegistry>,
    pub observed: Arc<Observed>,
    pub events: Arc<Events>,
}

/// What the replica controller publishes for the sessions, and what wakes it early.
#[derive(Debug)]
pub struct Published {
    /// Each node's desired set as the controller last computed it (`None` until its first pass:
    /// no session is told anything before that).
    pub desired: tokio::sync::watch::Sender<Option<Arc<DesiredSets>>>,
    /// Asks the replica controller for a pass now.
    pub kick: tokio::sync::Notify,
}

impl Default for Published {
    fn default() -> Self {
        Published { desired: tokio::sync::watch::Sender::new(None), kick: tokio::sync::Notify::new() }
    }
}

impl Published {
    /// Publishes `sets` if they differ from what was published.
    pub fn publish(&self, sets: DesiredSets) {
        self.desired.send_if_modified(|cur| {
            if cur.as_deref() == Some(&sets) {
                false
            } else {
                *cur = Some(Arc::new(sets));
                true
            }
        });
    }
}
