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
    // Pod templates of deleted apps go too.
    for kv in api.store.list("/revisions/").map_err(crate::tokens::store_error)? {
        let app = kv.key.trim_start_matches("/revisions/").split('/').next().unwrap_or_default();
        if !apps.contains_key(app) && !by_app.contains_key(app) {
            let _ = api.store.delete(&kv.key, Expect::Revision(kv.mod_revision));
        }
    }
    // The scheduler's view: every bound replica that still holds its node.
    let node_images = api.node_images.lock().expect("images lock").clone();
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
            images: node_images.get(&n.meta.name).cloned().unwrap_or_default(),
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
    let platforms = api.image_platforms.lock().expect("platforms lock").clone();
    for (name, app) in &apps {
        let list = by_app.remove(name).unwrap_or_default();
        let known = Known { lost_nodes: &lost, offered: platforms.get(app.spec.image.as_str()).map(Vec::as_slice) };
        match app_pass(api, app, list, &known, &mut scheduler, now, &mut events) {
            Ok(kept) => {
                for (r, spec) in kept {
                    if let Some(node) = r.node.clone() {
                        let a = Assignment {
                            replica: r.meta.name.clone(),
                            app: name.clone(),
                            revision: r.revision_hash.clone(),
                            spec,
                        };
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

/// What a pass knows beyond the store: nodes whose replicas are Lost, and the platforms the
/// app's image offers (if a board has told).
struct Known<'a> {
    lost_nodes: &'a BTreeSet<String>,
    offered: Option<&'a [bramble_images::Platform]>,
}

/// Brings one app's replicas to its spec; returns the replicas that exist afterwards.
fn app_pass(
    api: &Api,
    app: &App,
    list: Vec<Stored>,
    known: &Known<'_>,
    scheduler: &mut Scheduler,
    now: u64,
    events: &mut Vec<Event>,
) -> Result<Vec<(Replica, AppSpec)>, ApiError> {
    let name = app.spec.name.as_str();
    let spec: &AppSpec = &app.spec;
    let (lost_nodes, offered) = (known.lost_nodes, known.offered);
    let first_event = events.len();
    let original: Vec<Replica> = list.iter().map(|s| s.replica.clone()).collect();
    // The pod template of every revision that still has replicas, so that old replicas keep
    // theirs during a rolling update.
    let revisions = load_revisions(api, name)?;
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
    let mut gone = BTreeSet::new();
    // A replica on a board whose arch the image does not offer can never run there: it goes, and
    // its replacement is placed where the image runs.
    if let Some(offered) = offered {
        for (r, rev) in &current {
            let Some(node) = &r.node else { continue };
            let Some(i) = scheduler.nodes.iter().position(|n| &n.name == node) else { continue };
            let arch = scheduler.nodes[i].arch.clone();
            if bramble_images::Platform::choose(offered, &arch).is_some() {
                continue;
            }
            let Some(rev) = rev else { continue };
            ops.push(TxnOp::Delete { key: replica_key(&r.meta.name), expect: Expect::Revision(*rev) });
            if holds_node(r) {
                unbind(scheduler, i, name, spec);
            }
            let list: Vec<String> = offered.iter().map(|p| p.to_string()).collect();
            let why = format!("deleted: the image offers {} and node {node} is {arch}", list.join(", "));
            events.push(event(now, &r.meta.name, "ImagePlatform", why));
            gone.insert(r.meta.name.clone());
        }
        current.retain(|(r, _)| !gone.contains(&r.meta.name));
    }
    let replicas: Vec<Replica> = current.iter().map(|(r, _)| r.clone()).collect();
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
        let req = Placement { app: name, spec, platforms: offered };
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
    let current_rev = revision_hash(spec);
    let used: BTreeSet<&str> = current.iter().map(|(r, _)| r.revision_hash.as_str()).collect();
    if used.contains(current_rev.as_str()) && !revisions.contains_key(&current_rev) {
        let value = serde_json::to_vec(spec).expect("spec serialises");
        ops.push(TxnOp::Put { key: revision_key(name, &current_rev), value, expect: Expect::Absent });
    }
    for (hash, (_, rev)) in &revisions {
        if !used.contains(hash.as_str()) {
            ops.push(TxnOp::Delete { key: revision_key(name, hash), expect: Expect::Revision(*rev) });
        }
    }
    let spec_of = |r: &Replica| revisions.get(&r.revision_hash).map_or_else(|| spec.clone(), |(s, _)| s.clone());
    if !ops.is_empty() {
        // The app must not have changed since it was read.
        ops.push(TxnOp::Check { key: app_key(name), expect: Expect::Revision(app.meta.revision) });
        match api.store.txn(&ops) {
            Ok(_) => {}
            Err(StoreError::Conflict { key, .. }) => {
                // Nothing was written: the replicas stay as they were read; the next pass retries.
                debug!(app = name, "changed meanwhile ({key}); next pass");
                events.truncate(first_event);
                return Ok(original
                    .into_iter()
                    .map(|r| {
                        let s = spec_of(&r);
                        (r, s)
                    })
                    .collect());
            }
            Err(e) => return Err(crate::tokens::store_error(e)),
        }
    }
    Ok(current
        .into_iter()
        .map(|(r, _)| {
            let s = spec_of(&r);
            (r, s)
        })
        .collect())
}

fn revision_key(app: &str, hash: &str) -> String {
    format!("/revisions/{app}/{hash}")
}

/// An app's stored pod templates by revision hash, with their store revisions.
fn load_revisions(api: &Api, app: &str) -> Result<BTreeMap<String, (AppSpec, u64)>, ApiError> {
    let prefix = format!("/revisions/{app}/");
    let kvs = api.store.list(&prefix).map_err(crate::tokens::store_error)?;
    kvs.into_iter()
        .map(|kv| {
            let spec: AppSpec = serde_json::from_slice(&kv.value)
                .map_err(|e| ApiError::new(ErrorCode::Internal, format!("stored object {} is corrupt: {e}", kv.key)))?;
            Ok((kv.key[prefix.len()..].to_string(), (spec, kv.mod_revision)))
        })
        .collect()
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
                // One pass for a burst of changes (e.g. statuses from many boards at once).
                while let Some(w) = watch.as_mut() {
                    match tokio::time::timeout(Duration::ZERO, w.next()).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(_)) => watch = None,
                        Err(_) => break,
                    }
                }
            }
        }
        let a = api.clone();
        match tokio::task::spawn_blocking(move || pass(&a, now_ms())).await {
            Ok(Ok(desired)) => {
                // Live detail of replicas that are gone is forgotten.
                api.details.lock().expect("details lock").retain(|k, _| desired.values().any(|s| s.contains_key(k)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::node_key;
    use crate::nodes::{NodeRegistry, Session};
    use crate::store::{RedbStore, Store};
    use bramble_proto::manifest::parse_manifest;
    use bramble_proto::model::{Arch, Node, NodeInfo};
    use std::time::Instant;

    fn node(name: &str) -> Node {
        let res = Resources { cpu_millis: 4000, memory_bytes: 4 << 30, replicas: 64 };
        Node {
            meta: ObjectMeta { name: name.into(), generation: 1, revision: 0, created_ms: 1 },
            key_fingerprint: "x".into(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            unschedulable: false,
            info: NodeInfo {
                arch: Arch::Arm64,
                os: "linux".into(),
                kernel: "6.1".into(),
                agent_version: "0".into(),
                labels: BTreeMap::new(),
                capacity: res,
                allocatable: res,
                addresses: Vec::new(),
            },
            pod_cidr: None,
        }
    }

    fn cluster(dir: &std::path::Path, registry: Arc<NodeRegistry>) -> Api {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.join("s.redb")).unwrap());
        for n in ["pi-1", "pi-2", "pi-3"] {
            let _ = store.put(&node_key(n), &serde_json::to_vec(&node(n)).unwrap(), Expect::Absent);
        }
        Api::new(store, bramble_transport::pki::Ca::generate("test").unwrap(), registry)
    }

    fn connect(r: &NodeRegistry, names: &[&str], at: Instant) {
        for n in names {
            let s = Session { epoch: 1, address: "10.0.0.1:1".into(), connection: None };
            r.connect(n, s, at, 0).unwrap();
        }
    }

    fn counts(d: &DesiredSets) -> Vec<usize> {
        let mut v: Vec<(String, usize)> = d.iter().map(|(n, s)| (n.clone(), s.len())).collect();
        v.sort();
        v.into_iter().map(|(_, c)| c).collect()
    }

    fn apply(api: &Api, text: &str) {
        let apps = parse_manifest("t.toml", text).unwrap().apps;
        crate::apps::apply(api, apps, Vec::new()).unwrap();
    }

    const WEB: &str = "[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\nreplicas = 6\n";

    #[test]
    fn places_spread_writes_nothing_when_steady_and_replaces_lost_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(NodeRegistry::new(Duration::from_secs(15)));
        let api = cluster(dir.path(), registry.clone());
        let t0 = Instant::now();
        connect(&registry, &["pi-1", "pi-2", "pi-3"], t0);
        apply(&api, WEB);
        let d = pass(&api, 1_000).unwrap();
        assert_eq!(counts(&d), [2, 2, 2]);
        let rev = api.store.revision();
        assert_eq!(pass(&api, 2_000).unwrap(), d, "the same desired sets");
        assert_eq!(api.store.revision(), rev, "a steady cluster writes nothing");

        // pi-3 falls silent past the grace period: its replicas are Lost, then replaced.
        let later = t0 + Duration::from_secs(16);
        registry.heartbeat("pi-1", 1, later, 16_000);
        registry.heartbeat("pi-2", 1, later, 16_000);
        registry.check(["pi-1".into(), "pi-2".into(), "pi-3".into()], later, 16_000);
        pass(&api, 16_000).unwrap();
        let lost: Vec<Replica> = list_replicas(&api)
            .unwrap()
            .into_iter()
            .map(|s| s.replica)
            .filter(|r| r.phase == ReplicaPhase::Lost)
            .collect();
        assert_eq!(lost.len(), 2);
        assert!(lost.iter().all(|r| r.node.as_deref() == Some("pi-3") && r.reason == "node pi-3 is not ready"));
        let d = pass(&api, 16_100).unwrap();
        assert_eq!(counts(&d), [3, 3, 0], "replaced on the nodes that answer");
        let names: BTreeSet<String> = d.values().flat_map(|s| s.keys().cloned()).collect();
        assert!(lost.iter().all(|r| !names.contains(&r.meta.name)), "replacements get new names (fencing)");

        // Scale down, then delete: replicas go with the app.
        apply(&api, &WEB.replace("replicas = 6", "replicas = 2"));
        assert_eq!(counts(&pass(&api, 17_000).unwrap()).iter().sum::<usize>(), 2);
        crate::apps::delete(&api, vec!["web".into()], Vec::new()).unwrap();
        assert!(pass(&api, 18_000).unwrap().values().all(|s| s.is_empty()));
        assert!(list_replicas(&api).unwrap().is_empty());
    }

    #[test]
    fn a_restarted_leader_loses_nothing_before_the_grace_period_and_holds_off_if_asked() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(NodeRegistry::new(Duration::from_secs(15)));
        let api = cluster(dir.path(), registry.clone());
        let t0 = Instant::now();
        connect(&registry, &["pi-1", "pi-2", "pi-3"], t0);
        apply(&api, &format!("{WEB}replace_after = \"1m\"\n"));
        let before = pass(&api, 1_000).unwrap();
        drop(api);
        // A new leader process: nodes Unknown until they reconnect or the grace period passes.
        let registry = Arc::new(NodeRegistry::new(Duration::from_secs(15)));
        let api = cluster(dir.path(), registry.clone());
        assert_eq!(pass(&api, 2_000).unwrap(), before, "Unknown is not Lost");
        // pi-1 never comes back: Lost after the grace period, held for replace_after.
        connect(&registry, &["pi-2", "pi-3"], t0);
        registry.check(["pi-1".into()], t0, 20_000);
        let d = pass(&api, 20_000).unwrap();
        assert_eq!(counts(&d), [2, 2, 2], "pi-1 keeps its two (Lost) in case it comes back");
        let lost = list_replicas(&api).unwrap().iter().filter(|s| s.replica.phase == ReplicaPhase::Lost).count();
        assert_eq!(lost, 2);
        assert_eq!(counts(&pass(&api, 70_000).unwrap()), [2, 2, 2], "held off for a minute");
        assert_eq!(counts(&pass(&api, 81_000).unwrap()), [0, 3, 3], "then replaced");
    }

    fn mark_all_running(api: &Api) {
        for s in list_replicas(api).unwrap() {
            let mut r = s.replica;
            if r.phase == ReplicaPhase::Pending && r.node.is_some() {
                r.phase = ReplicaPhase::Running;
                api.store
                    .put(&replica_key(&r.meta.name), &serde_json::to_vec(&r).unwrap(), Expect::Revision(s.rev))
                    .unwrap();
            }
        }
    }

    #[test]
    fn a_new_revision_rolls_out_and_old_replicas_keep_their_template() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(NodeRegistry::new(Duration::from_secs(15)));
        let api = cluster(dir.path(), registry.clone());
        connect(&registry, &["pi-1", "pi-2", "pi-3"], Instant::now());
        let v1 = WEB.replace("replicas = 6", "replicas = 3");
        apply(&api, &v1);
        pass(&api, 1_000).unwrap();
        mark_all_running(&api);
        apply(&api, &format!("{v1}args = [\"-v\"]\n"));
        let mut saw_both = false;
        for t in 2..20 {
            let d = pass(&api, t * 1000).unwrap();
            let all: Vec<&Assignment> = d.values().flat_map(|s| s.values()).collect();
            assert!(all.len() <= 4, "max_surge 1");
            let (new, old): (Vec<&&Assignment>, Vec<&&Assignment>) = all.iter().partition(|a| a.spec.args == ["-v"]);
            assert!(old.iter().all(|a| a.spec.args.is_empty()), "old replicas keep the old template");
            saw_both |= !new.is_empty() && !old.is_empty();
            mark_all_running(&api);
        }
        let d = pass(&api, 30_000).unwrap();
        assert!(saw_both, "a rolling update, not all at once");
        assert_eq!(d.values().map(|s| s.len()).sum::<usize>(), 3);
        assert!(d.values().flat_map(|s| s.values()).all(|a| a.spec.args == ["-v"]));
        let templates = api.store.list("/revisions/web/").unwrap();
        assert_eq!(templates.len(), 1, "the old template goes with its last replica");
    }

    #[test]
    fn an_image_that_lacks_a_boards_arch_is_moved_to_boards_it_runs_on() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(NodeRegistry::new(Duration::from_secs(15)));
        let api = cluster(dir.path(), registry.clone());
        let mut pc = node("pc-1");
        pc.info.arch = Arch::Amd64;
        api.store.put(&node_key("pc-1"), &serde_json::to_vec(&pc).unwrap(), Expect::Absent).unwrap();
        connect(&registry, &["pi-1", "pi-2", "pi-3", "pc-1"], Instant::now());
        apply(&api, &WEB.replace("replicas = 6", "replicas = 4"));
        let d = pass(&api, 1_000).unwrap();
        assert_eq!(counts(&d), [1, 1, 1, 1], "spread while nothing is known of the image");
        // A board reports that the image offers only amd64.
        api.image_platforms.lock().unwrap().insert("reg/web:1".into(), vec!["linux/amd64".parse().unwrap()]);
        pass(&api, 2_000).unwrap();
        let d = pass(&api, 2_100).unwrap();
        let on: BTreeMap<String, usize> = d.iter().map(|(n, s)| (n.clone(), s.len())).collect();
        assert_eq!(on["pc-1"], 4, "every replica where the image runs: {on:?}");
        let events = registry.events_where(|e| e.reason == "ImagePlatform");
        assert_eq!(events.len(), 3);
        assert!(events[0].message.contains("the image offers linux/amd64 and node pi-"), "{}", events[0].message);
    }

    #[test]
    fn boards_that_hold_the_image_are_preferred() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(NodeRegistry::new(Duration::from_secs(15)));
        let api = cluster(dir.path(), registry.clone());
        connect(&registry, &["pi-1", "pi-2", "pi-3"], Instant::now());
        api.node_images.lock().unwrap().insert("pi-2".into(), ["reg/web:1".to_string()].into());
        apply(&api, &WEB.replace("replicas = 6", "replicas = 1"));
        let d = pass(&api, 1_000).unwrap();
        assert_eq!(d["pi-2"].len(), 1, "no pull needed there: {d:?}");
    }

    #[test]
    fn a_replica_that_fits_nowhere_stays_pending_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(NodeRegistry::new(Duration::from_secs(15)));
        let api = cluster(dir.path(), registry.clone());
        connect(&registry, &["pi-1", "pi-2", "pi-3"], Instant::now());
        apply(&api, "[[app]]\nname = \"big\"\nimage = \"reg/big:1\"\nresources = { memory = \"8Gi\" }\n");
        pass(&api, 1_000).unwrap();
        let r = list_replicas(&api).unwrap().remove(0).replica;
        assert_eq!(
            (r.phase, r.node, r.reason.as_str()),
            (ReplicaPhase::Pending, None, "0/3 nodes: 3 insufficient memory")
        );
        let rev = api.store.revision();
        pass(&api, 2_000).unwrap();
        assert_eq!(api.store.revision(), rev, "the same reason is not written again");
    }
}
