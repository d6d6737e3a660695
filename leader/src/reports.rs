//! What agents report over their sessions: replica statuses (written to the store when they
//! change), the images their store holds and what their images offer (memory only), and events.

use crate::controllers::Context;
use crate::objects::Objects;
use crate::store::{Expect, StoreError};
use bramble_proto::model::{Event, Kind, ObjectRef, Replica, ReplicaPhase};
use bramble_proto::wire::ReplicaStatus;
use tracing::{debug, warn};

/// Records what node `node` reports about its replicas. Reports about replicas not bound to that
/// node (moved away, deleted) are ignored: the node's desired set stops them. Only changes are
/// written. Returns whether the controller should look again now (an image's platforms became
/// known).
pub fn statuses(ctx: &Context, node: &str, statuses: Vec<ReplicaStatus>, now: u64) -> bool {
    let mut kick = false;
    for s in statuses {
        if let Some(miss) = &s.platform_miss {
            match ctx.objects.learn_platforms(&miss.image, &miss.offered, now) {
                Ok(news) => kick |= news,
                Err(e) => warn!("cannot record what {} offers: {e}", miss.image),
            }
        }
        ctx.observed.set_detail(&s.replica, s.detail.clone());
        ctx.observed.set_probes(&s.replica, s.probes.clone());
        kick |= record(&ctx.objects, node, &s, now);
    }
    kick
}

/// Writes what changed; true when readiness changed (endpoints and rollouts move on it).
fn record(objects: &Objects, node: &str, s: &ReplicaStatus, now: u64) -> bool {
    for _ in 0..5 {
        let Ok(Some(current)) = objects.get::<Replica>(&s.replica) else { return false };
        let mut r = current.value;
        if r.node.as_deref() != Some(node) {
            debug!(replica = %s.replica, node, "status from a node the replica is not bound to; ignored");
            return false;
        }
        let before = r.clone();
        r.phase = s.phase;
        r.reason = s.reason.clone();
        r.restarts = s.restarts;
        r.exit_code = s.exit_code;
        r.started_ms = s.started_ms;
        r.finished_ms = s.finished_ms;
        r.container_id = s.container_id.clone();
        // The address stays with the replica's network namespace (across container restarts).
        r.ip = s.ip.or(r.ip);
        r.restart_at_ms = s.restart_at_ms;
        let ready = s.ready && s.phase == ReplicaPhase::Running;
        if ready && !r.ready {
            r.ready_ms = Some(now);
        }
        r.ready = ready;
        if r == before {
            return false;
        }
        match objects.put(&r, Expect::Revision(current.rev)) {
            Ok(_) => return r.ready != before.ready,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => {
                warn!("cannot record the status of {}: {e}", s.replica);
                return false;
            }
        }
    }
    false
}

/// Records an event a board sent: it speaks only for its replicas and itself, briefly.
pub fn event(ctx: &Context, node: &str, mut e: Event) {
    let allowed = e.object.kind == Kind::Replica || e.object == ObjectRef::node(node);
    if !allowed {
        return;
    }
    e.message = format!("{} (node {node})", e.message.chars().take(1024).collect::<String>());
    e.app = e.app.map(|a| a.chars().take(63).collect());
    ctx.events.record(e);
}

/// Records the images a board's store holds (a hint for scoring).
pub fn images(ctx: &Context, node: &str, list: Vec<String>) {
    ctx.observed.set_node_images(node, list);
}
