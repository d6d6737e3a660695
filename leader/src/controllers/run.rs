//! The replica controller's loop: reads apps, replicas and nodes, decides with the pure
//! [`reconcile`](super::replicas::reconcile) and [`Scheduler`], writes the result back with
//! compare-and-swap (one transaction per app), and publishes each node's desired set for the
//! sessions to send. It writes only what changes, so an idle cluster writes nothing.

use super::replicas::{reconcile, revision_hash, Action};
use crate::api::{now_ms, Api};
use crate::apps::app_key;
use crate::scheduler::{NodeSnapshot, Request as Placement, Scheduler};
use crate::store::{Expect, StoreError, TxnOp};
use bramble_proto::manifest::AppSpec;
use bramble_proto::model::{App, ConditionStatus, Event, ObjectMeta, Replica, ReplicaPhase, Resources};
use bramble_proto::wire::{ApiError, Assignment, ErrorCode};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Per node: the replicas it must run, by name.
pub type DesiredSets = HashMap<String, BTreeMap<String, Assignment>>;

pub fn replica_key(name: &str) -> String {
    format!("/replicas/{name}")
}

/// A stored replica with the revision it was read at.
#[derive(Debug, Clone)]
pub struct Stored {
    pub replica: Replica,
    pub rev: u64,
}

pub fn list_replicas(api: &Api) -> Result<Vec<Stored>, ApiError> {
    let kvs = api.store.list("/replicas/").map_err(crate::tokens::store_error)?;
    kvs.into_iter()
        .map(|kv| {
            let mut replica: Replica = serde_json::from_slice(&kv.value)
                .map_err(|e| ApiError::new(ErrorCode::Internal, format!("stored object {} is corrupt: {e}", kv.key)))?;
            replica.meta.revision = kv.mod_revision;
            Ok(Stored { replica, rev: kv.mod_revision })
        })
        .collect()
}

fn put(r: &Replica, expect: Expect) -> TxnOp {
    TxnOp::Put { key: replica_key(&r.meta.name), value: serde_json::to_vec(r).expect("replica serialises"), expect }
}

/// One pass over the whole cluster. Returns the desired sets it saw.
pub fn pass(api: &Api, now: u64) -> Result<DesiredSets, ApiError> {
    let nodes = api.nodes()?;
    // Ready: new replicas may go there. Lost: its replicas are Lost. A node the leader has not
    // heard from since it started is neither until the grace period says (Unknown).
    let status: BTreeMap<String, ConditionStatus> =
        nodes.iter().map(|n| (n.meta.name.clone(), api.registry.view(&n.meta.name, now).ready.status)).collect();
    let ready: BTreeMap<String, bool> = status.iter().map(|(n, s)| (n.clone(), *s == ConditionStatus::True)).collect();
    let lost: BTreeSet<String> =
        status.iter().filter(|(_, s)| **s == ConditionStatus::False).map(|(n, _)| n.clone()).collect();
    let apps: BTreeMap<String, App> =
        crate::apps::apps(api)?.into_iter().map(|a| (a.spec.name.as_str().to_string(), a)).collect();
    let mut by_app: BTreeMap<String, Vec<Stored>> = BTreeMap::new();
    let mut events = Vec::new();
    // Replicas of deleted apps go, each on its own (an app deleted is gone all at once anyway).
    for s in list_replicas(api)? {
        if apps.contains_key(&s.replica.app) {
            by_app.entry(s.replica.app.clone()).or_default().push(s);
        } else {
            let key = replica_key(&s.replica.meta.name);
            match api.store.delete(&key, Expect::Revision(s.rev)) {
                Ok(_) => events.push(event(now, &s.replica.meta.name, "Deleted", "its app was deleted".into())),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => warn!("cannot delete {key}: {e}"),
            }
        }
    }
    // The scheduler's view: every bound replica that still holds its node.
    let mut snapshot: Vec<NodeSnapshot> = nodes
        .iter()
        .map(|n| NodeSnapshot {
            name: n.meta.name.clone(),
            arch: n.info.arch.clone(),
            ready: ready.get(&n.meta.name).copied().unwrap_or(false),
            unschedulable: n.unschedulable,
            labels: n.effective_labels(),
            taints: n.taints.clone(),
            allocatable: n.info.allocatable,
            requested: Resources::default(),
            host_ports: BTreeSet::new(),
            images: BTreeSet::new(),
            apps: BTreeMap::new(),
        })
        .collect();
    snapshot.sort_by(|a, b| a.name.cmp(&b.name));
    let mut scheduler = Scheduler::new(snapshot);
    let index: HashMap<String, usize> = scheduler.nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
    for (app, list) in &by_app {
        let spec = &apps[app].spec;
        for s in list {
            if let (Some(node), true) = (&s.replica.node, holds_node(&s.replica)) {
                if let Some(&i) = index.get(node) {
                    scheduler.bind(i, &Placement { app, spec, platforms: None });
                }
            }
        }
    }
    let mut desired: DesiredSets = nodes.iter().map(|n| (n.meta.name.clone(), BTreeMap::new())).collect();
    for (name, app) in &apps {
        let list = by_app.remove(name).unwrap_or_default();
        match app_pass(api, app, list, &lost, &mut scheduler, now, &mut events) {
            Ok(kept) => {
                let revision = revision_hash(&app.spec);
                for r in kept {
                    if let Some(node) = r.node.clone() {
                        let a = Assignment {
                            replica: r.meta.name.clone(),
                            app: name.clone(),
                            revision: r.revision_hash.clone(),
                            spec: app.spec.clone(),
                        };
                        debug_assert!(r.revision_hash == revision || !r.revision_hash.is_empty());
                        desired.entry(node).or_default().insert(r.meta.name.clone(), a);
                    }
                }
            }
            Err(e) => warn!(app = %name, "replica controller: {}", e.message),
        }
    }
    for e in events {
        api.registry.record(e);
    }
    Ok(desired)
}

/// Whether a replica still takes room on its node.
fn holds_node(r: &Replica) -> bool {
    !matches!(r.phase, ReplicaPhase::Succeeded | ReplicaPhase::Lost)
}

fn event(now: u64, replica: &str, reason: &str, message: String) -> Event {
    Event { time_ms: now, object: format!("replica/{replica}"), reason: reason.into(), message }
}

/// Brings one app's replicas to its spec; returns the replicas that exist afterwards.
fn app_pass(
    api: &Api,
    app: &App,
    list: Vec<Stored>,
    lost_nodes: &BTreeSet<String>,
    scheduler: &mut Scheduler,
    now: u64,
    events: &mut Vec<Event>,
) -> Result<Vec<Replica>, ApiError> {
    let name = app.spec.name.as_str();
    let spec: &AppSpec = &app.spec;
    let mut ops = Vec::new();
    let mut current: Vec<(Replica, Option<u64>)> = list.into_iter().map(|s| (s.replica, Some(s.rev))).collect();
    // Replicas on nodes that stopped answering are Lost from the moment the node is NotReady.
    for (r, rev) in current.iter_mut() {
        let node_lost = r.node.as_ref().is_some_and(|n| lost_nodes.contains(n));
        if node_lost && !matches!(r.phase, ReplicaPhase::Lost | ReplicaPhase::Succeeded) {
            r.phase = ReplicaPhase::Lost;
            r.reason = format!("node {} is not ready", r.node.as_deref().unwrap_or("?"));
            r.finished_ms = Some(now);
            ops.push(put(r, Expect::Revision(rev.expect("stored"))));
            events.push(event(now, &r.meta.name, "ReplicaLost", r.reason.clone()));
            *rev = None; // written in this transaction; not to be written again
        }
    }
    let replicas: Vec<Replica> = current.iter().map(|(r, _)| r.clone()).collect();
    let mut gone = BTreeSet::new();
    for action in reconcile(name, spec, &replicas, now) {
        match action {
            Action::Delete { name: victim, reason } => {
                let Some((r, rev)) = current.iter().find(|(r, _)| r.meta.name == victim) else { continue };
                // A replica just marked Lost is deleted in a later pass (one op per key).
                let Some(rev) = rev else { continue };
                ops.push(TxnOp::Delete { key: replica_key(&victim), expect: Expect::Revision(*rev) });
                if let (Some(node), true) = (&r.node, holds_node(r)) {
                    if let Some(i) = scheduler.nodes.iter().position(|n| &n.name == node) {
                        unbind(scheduler, i, name, spec);
                    }
                }
                events.push(event(now, &victim, "Deleted", format!("deleted: {reason}")));
                gone.insert(victim);
            }
            Action::Create { name: new, revision } => {
                let r = Replica {
                    meta: ObjectMeta { name: new.clone(), generation: 1, revision: 0, created_ms: now },
                    app: name.to_string(),
                    revision_hash: revision,
                    node: None,
                    phase: ReplicaPhase::Pending,
                    reason: String::new(),
                    restarts: 0,
                    exit_code: None,
                    started_ms: None,
                    finished_ms: None,
                    container_id: None,
                    ip: None,
                };
                events.push(event(now, &new, "Created", format!("created for app {name}")));
                current.push((r, None));
            }
        }
    }
    current.retain(|(r, _)| !gone.contains(&r.meta.name));
    // Place what is unbound.
    for (r, rev) in current.iter_mut() {
        if r.node.is_some() {
            continue;
        }
        let req = Placement { app: name, spec, platforms: None };
        let before = (r.node.clone(), r.reason.clone());
        match scheduler.place(&req) {
            Ok(i) => {
                scheduler.bind(i, &req);
                let node = scheduler.nodes[i].name.clone();
                events.push(event(now, &r.meta.name, "Scheduled", format!("assigned to node {node}")));
                r.node = Some(node);
                r.reason = String::new();
            }
            Err(why) => {
                r.reason = why.to_string();
                if before.1 != r.reason {
                    events.push(event(now, &r.meta.name, "FailedScheduling", r.reason.clone()));
                }
            }
        }
        let is_new = rev.is_none()
            && !ops.iter().any(|op| matches!(op, TxnOp::Put { key, .. } if *key == replica_key(&r.meta.name)));
        if is_new {
            ops.push(put(r, Expect::Absent));
        } else if let Some(old) = rev {
            if (r.node.clone(), r.reason.clone()) != before {
                ops.push(put(r, Expect::Revision(*old)));
            }
        }
    }
    if !ops.is_empty() {
        // The app must not have changed since it was read.
        ops.push(TxnOp::Check { key: app_key(name), expect: Expect::Revision(app.meta.revision) });
        match api.store.txn(&ops) {
            Ok(_) => {}
            Err(StoreError::Conflict { key, .. }) => {
                debug!(app = name, "changed meanwhile ({key}); next pass");
                events.clear();
                return Ok(current.into_iter().filter(|(_, rev)| rev.is_some()).map(|(r, _)| r).collect());
            }
            Err(e) => return Err(crate::tokens::store_error(e)),
        }
    }
    Ok(current.into_iter().map(|(r, _)| r).collect())
}

fn unbind(s: &mut Scheduler, i: usize, app: &str, spec: &AppSpec) {
    let n = &mut s.nodes[i];
    n.requested.cpu_millis = n.requested.cpu_millis.saturating_sub(spec.resources.cpu.map_or(0, |c| c.0));
    n.requested.memory_bytes = n.requested.memory_bytes.saturating_sub(spec.resources.memory.map_or(0, |m| m.0));
    n.requested.replicas = n.requested.replicas.saturating_sub(1);
    for p in &spec.ports {
        if let Some(h) = p.host {
            n.host_ports.remove(&(h.0, p.protocol));
        }
    }
    if let Some(c) = n.apps.get_mut(app) {
        *c = c.saturating_sub(1);
    }
}

/// Runs passes on every change to the store and at least every second, until cancelled.
pub async fn run(api: Arc<Api>, cancel: CancellationToken) {
    let mut watch = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if watch.is_none() {
            watch = api.store.watch("/", api.store.revision()).ok();
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
            _ = api.kick.notified() => {}
            r = async { watch.as_mut().expect("set above").next().await }, if watch.is_some() => {
                if r.is_err() {
                    watch = None;
                }
            }
        }
        let a = api.clone();
        match tokio::task::spawn_blocking(move || pass(&a, now_ms())).await {
            Ok(Ok(desired)) => {
                api.desired.send_if_modified(|cur| {
                    if cur.as_deref() == Some(&desired) {
                        false
                    } else {
                        *cur = Some(Arc::new(desired));
                        true
                    }
                });
            }
            Ok(Err(e)) => warn!("replica controller: {}", e.message),
            Err(e) => warn!("replica controller: {e}"),
        }
    }
}
