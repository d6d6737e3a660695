//! Controllers: pure planners, and the loops that feed them and write their plans back.
//!
//! ```text
//! replicas.rs    per app: the count, the rolling update, Lost replicas (pure)
//! rollout.rs     revision records and how the latest rollout stands (no I/O: `new_revision`
//!                returns the store writes it needs as values, `commit.rs` makes them)
//! drain.rs       which replicas being stopped every board has stopped sending to
//! plan.rs        a whole pass: snapshot + now → plan (pure; unit and property tests)
//! dry_run.rs     `apply --dry-run`: passes of the real plan over an in-memory copy
//! snapshot.rs    reads a snapshot: the store, the node registry, what boards told
//! commit.rs      writes a plan: one transaction per app, the app's revision checked
//! desired.rs     each node's desired set, and the delta a session sends
//! run.rs         the loop: on every store change and every second
//! autoscale.rs   the autoscaler's decision (pure: usage, targets, recommendations → a count)
//! autoscaler.rs  the autoscaler's loop: fresh usage in, a count written like `bramble scale`
//! cron.rs        the cron controller's loop: due runs' jobs made with the store's record of them
//! ```

pub mod autoscale;
pub mod autoscaler;
pub mod commit;
pub mod cron;
pub mod desired;
pub mod drain;
pub mod dry_run;
pub mod plan;
pub mod replicas;
pub mod rollout;
pub mod run;
pub mod snapshot;

use crate::boards::nodes::NodeRegistry;
use crate::boards::observed::Observed;
use crate::events::Events;
use crate::network::view::NetworkView;
use crate::objects::Objects;
use bramble_proto::network::ClusterNetwork;
use desired::DesiredSets;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What the controllers read and write — nothing more (not the API, not the CA).
#[derive(Debug, Clone)]
pub struct Context {
    pub objects: Objects,
    pub registry: Arc<NodeRegistry>,
    pub observed: Arc<Observed>,
    pub events: Arc<Events>,
    /// The cluster's network, as chosen at init.
    pub network: Arc<ClusterNetwork>,
    /// Replicas leaving their services before they stop, and what boards applied.
    pub drain: Arc<drain::Drain>,
    /// The cluster's own ports, told to boards so that pods cannot reach them.
    pub control_ports: Arc<Vec<(bramble_proto::manifest::Protocol, u16)>>,
}

/// What the replica controller publishes for the sessions, and what wakes it early.
#[derive(Debug)]
pub struct Published {
    /// Each node's desired set as the controller last computed it (`None` until its first pass:
    /// no session is told anything before that).
    pub desired: tokio::sync::watch::Sender<Option<Arc<DesiredSets>>>,
    /// The network as boards must know it (`None` until the first pass).
    pub network: tokio::sync::watch::Sender<Option<Arc<NetworkView>>>,
    /// Asks the replica controller for a pass now.
    pub kick: tokio::sync::Notify,
    /// Bumped when a secret changes: sessions send boards what changed of theirs.
    pub secrets: tokio::sync::watch::Sender<u64>,
    /// How long the controller's passes and plans take (for `/metrics`).
    pub timings: Timings,
}

impl Default for Published {
    fn default() -> Self {
        Published {
            desired: tokio::sync::watch::Sender::new(None),
            network: tokio::sync::watch::Sender::new(None),
            kick: tokio::sync::Notify::new(),
            secrets: tokio::sync::watch::Sender::new(0),
            timings: Timings::default(),
        }
    }
}

impl Published {
    /// Publishes what a pass left, where it differs from what was published; returns the
    /// version of the network view now published (a new one when it changed).
    pub fn publish(&self, sets: DesiredSets, network: NetworkView) -> u64 {
        // The network first: a board learns of its subnet before it is told to start pods.
        let mut incoming = Some(network);
        let mut version = 0;
        self.network.send_if_modified(|cur| {
            let mut view = incoming.take().expect("once");
            view.version = cur.as_ref().map_or(0, |c| c.version);
            if cur.as_deref() == Some(&view) {
                version = view.version;
                return false;
            }
            view.version += 1;
            version = view.version;
            if let Some(before) = cur.as_deref() {
                view.note_changes(before);
            }
            *cur = Some(Arc::new(view));
            true
        });
        replace_if_changed(&self.desired, sets);
        version
    }
}

fn replace_if_changed<T: PartialEq>(tx: &tokio::sync::watch::Sender<Option<Arc<T>>>, value: T) {
    tx.send_if_modified(|cur| {
        if cur.as_deref() == Some(&value) {
            false
        } else {
            *cur = Some(Arc::new(value));
            true
        }
    });
}

/// Runs `pass` (it blocks: on a blocking thread) every second at the time it starts, until
/// `cancel`; a pass that changed something wakes the replica controller.
pub async fn every_second<F>(what: &'static str, published: Arc<Published>, cancel: CancellationToken, pass: F)
where
    F: Fn(u64) -> crate::error::Result<bool> + Send + Sync + 'static,
{
    let pass = Arc::new(pass);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (p, now) = (pass.clone(), bramble_proto::time::now_ms());
        match tokio::task::spawn_blocking(move || p(now)).await {
            Ok(Ok(true)) => published.kick.notify_one(),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!("{what} pass failed: {e}"),
            Err(e) => tracing::warn!("{what} pass failed: {e}"),
        }
    }
}

/// The controller's timings, kept for the leader's life.
#[derive(Debug, Clone)]
pub struct Timings {
    /// A whole pass: snapshot, plan, commits.
    pub pass: Histogram,
    /// The pure plan, scheduling included.
    pub plan: Histogram,
    /// Ticks without a pass: the cluster settled and nothing a pass reads changed.
    pub skipped: Counter,
}

impl Default for Timings {
    fn default() -> Self {
        // 50 µs to ~1.6 s.
        Timings {
            pass: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            plan: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            skipped: Counter::default(),
        }
    }
}
