//! What agents report over their sessions: replica statuses (written to the store when they
//! change), the images their store holds and what their images offer (memory only), and events.

use crate::controllers::Context;
use crate::objects::Objects;
use crate::store::{Expect, StoreError};
use bramble_proto::model::{Event, EventReason, Kind, Node, NodeInfo, ObjectRef, Replica, ReplicaPhase};
use bramble_proto::time::now_ms;
use bramble_proto::wire::ReplicaStatus;
use std::net::Ipv4Addr;
use tracing::{debug, warn};

/// Records what node `node` reports about its replicas. Reports about replicas not bound to that
/// node (moved away, deleted) are ignored: the node's desired set stops them. Only changes are
/// written. Returns whether the controller should look again now (an image's platforms became
/// known).
pub fn statuses(ctx: &Context, node: &str, statuses: Vec<ReplicaStatus>, now: u64) -> bool {
    let mut kick = false;
    for s in statuses {
        if let Some(miss) = &s.platform_miss {
            // A board speaks of its own replicas, running the image it names, and for itself.
            if runs_image(&ctx.objects, node, &s.replica, &miss.image) {
                match ctx.objects.learn_platforms(&miss.image, node, &miss.offered, now) {
                    Ok(news) => kick |= news,
                    Err(e) => warn!("cannot record what {} offers: {e}", cut(&miss.image)),
                }
            } else {
                debug!(node, replica = %cut(&s.replica), "a platform miss about a replica this node does not run; ignored");
            }
        }
        ctx.observed.set_detail(&s.replica, s.detail.clone());
        ctx.observed.set_probes(&s.replica, s.probes.clone());
        kick |= record(&ctx.objects, node, &s, now);
    }
    kick
}

/// A replica running on `node` makes its local volumes' home there believed.
fn note_volume_homes(objects: &Objects, node: &str, r: &Replica, now: u64) {
    let key = crate::objects::keys::revision(&r.app, &r.revision_hash);
    let Ok(Some(spec)) = objects.get_at::<bramble_proto::manifest::AppSpec>(&key) else { return };
    for v in spec.local_volumes() {
        if let Err(e) = objects.record_volume_home(node, v, now) {
            warn!("cannot record volume {v} on {node}: {e}");
        }
    }
}

/// Whether `replica` is bound to `node` and its template (the app's, or its revision's) runs
/// `image`.
fn runs_image(objects: &Objects, node: &str, replica: &str, image: &str) -> bool {
    let Ok(Some(r)) = objects.get::<Replica>(replica) else { return false };
    if r.value.node.as_deref() != Some(node) {
        return false;
    }
    let r = r.value;
    let key = crate::objects::keys::revision(&r.app, &r.revision_hash);
    let template = objects.get_at::<bramble_proto::manifest::AppSpec>(&key).ok().flatten();
    let app = objects.get::<bramble_proto::model::App>(&r.app).ok().flatten().map(|v| v.value.spec);
    [template, app].into_iter().flatten().any(|spec| spec.image.as_str() == image)
}

/// Text a board chose, cut for a log line.
fn cut(s: &str) -> String {
    s.chars().take(128).collect()
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
            Ok(_) => {
                if r.phase == ReplicaPhase::Running && before.phase != ReplicaPhase::Running {
                    note_volume_homes(objects, node, &r, now);
                }
                return r.ready != before.ready;
            }
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
    // About itself, or about a replica bound to it (or one already gone from the store: its
    // last words, such as Stopped, come after the leader deleted it).
    let allowed = match e.object.kind {
        Kind::Replica => match ctx.objects.get::<Replica>(&e.object.name) {
            Ok(Some(r)) => r.value.node.as_deref() == Some(node),
            Ok(None) => true,
            Err(_) => false,
        },
        _ => e.object == ObjectRef::node(node),
    };
    if !allowed {
        debug!(node, object = %cut(&e.object.to_string()), "an event about another board's replica; ignored");
        return;
    }
    e.object.name = e.object.name.chars().take(253).collect();
    e.message = format!("{} (node {node})", e.message.chars().take(1024).collect::<String>());
    e.app = e.app.map(|a| a.chars().take(63).collect());
    ctx.events.record(e);
}

/// Records the images a board's store holds (a hint for scoring).
pub fn images(ctx: &Context, node: &str, list: Vec<String>) {
    ctx.observed.set_node_images(node, list);
}

/// What changed between two device lists, in words: `+/dev/ttyUSB0 (serial 10c4:ea60), -/dev/video0`.
pub fn device_diff(old: &[bramble_proto::device::Device], new: &[bramble_proto::device::Device]) -> String {
    let word = |d: &bramble_proto::device::Device| match d.usb {
        Some(id) => format!("{} ({} {id})", d.path, d.class),
        None => format!("{} ({})", d.path, d.class),
    };
    let added = new.iter().filter(|d| !old.iter().any(|o| o.path == d.path)).map(|d| format!("+{}", word(d)));
    let removed = old.iter().filter(|d| !new.iter().any(|n| n.path == d.path)).map(|d| format!("-{}", word(d)));
    added.chain(removed).collect::<Vec<_>>().join(", ")
}

/// Records what an agent reports about its board, and the address its session comes from;
/// writes only if something changed.
pub fn node_info(
    objects: &crate::objects::Objects,
    events: &crate::events::Events,
    kick: &tokio::sync::Notify,
    name: &str,
    mut info: NodeInfo,
    address: Option<Ipv4Addr>,
    cert_expires_ms: Option<u64>,
) -> crate::error::Result<bool> {
    let dropped = info.sanitize();
    if !dropped.is_empty() {
        tracing::debug!(node = name, ?dropped, "what the board reported was cut to bounds");
    }
    let news = std::cell::RefCell::new(None);
    let changed = objects.update::<Node>(name, |node| {
        // Since when the board's network has been unavailable, by this leader's clock.
        let mut info = info.clone();
        match (&node.info.network_problem, &mut info.network_problem) {
            (Some(old), Some(new)) if old.reason == new.reason => new.since_ms = old.since_ms,
            (_, Some(new)) => {
                new.since_ms = now_ms();
                *news.borrow_mut() =
                    Some((EventReason::NetworkUnavailable, format!("{}: {}", new.reason, new.message)));
            }
            (Some(_), None) => {
                *news.borrow_mut() =
                    Some((EventReason::NetworkAvailable, "the board's network works again".to_string()));
            }
            (None, None) => {}
        }
        // Devices plugged in or out: said, and the replica controller looks again.
        if node.info.devices != info.devices {
            let diff = device_diff(&node.info.devices, &info.devices);
            if !diff.is_empty() && news.borrow().is_none() {
                *news.borrow_mut() = Some((EventReason::DevicesChanged, format!("devices: {diff}")));
            }
        }
        let changed = node.info != info
            || (address.is_some() && node.address != address)
            || (cert_expires_ms.is_some() && node.cert_expires_ms != cert_expires_ms);
        node.info = info;
        node.address = address.or(node.address);
        node.cert_expires_ms = cert_expires_ms.or(node.cert_expires_ms);
        Ok(changed)
    })?;
    if let Some((reason, message)) = news.into_inner().filter(|_| changed) {
        tracing::warn!(node = name, "{message}");
        events.node(name, reason, message, now_ms());
        // No new replica goes to a board that cannot network it (or back, once it can).
        kick.notify_one();
    }
    Ok(changed)
}
