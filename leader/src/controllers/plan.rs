//! The replica controller's planner: a pure function from a snapshot of the cluster and `now` to
//! a plan — which replicas to create, delete, bind or mark Lost, which pod templates to keep or
//! drop, and the events that say so. No store, no clock, no network: `run.rs` reads the
//! snapshot, calls [`plan`], and commits each app's part in one transaction.
//!
//! Per app, in order: replicas of nodes that stopped answering are marked Lost; replicas on
//! boards whose arch the image lacks go; the count and rolling update decide creates and deletes
//! ([`super::replicas::reconcile`]); unbound replicas are placed by the scheduler; templates no
//! replica uses any more are dropped; the latest rollout is followed ([`super::rollout`]): its
//! progress recorded, its completion, or its failure and the rollback.

use super::drain::DRAIN_TIMEOUT_MS;
use super::replicas::{reconcile, revision_hash, Action};
use super::rollout::{self, Step};
use crate::objects::Versioned;
use crate::scheduler::{Misses, NodeSnapshot, Request as Placement, Scheduler};
use bramble_proto::manifest::AppSpec;
use bramble_proto::model::{
    App, ConditionStatus, Event, EventReason, Node, ObjectRef, Platform, Replica, ReplicaPhase, Resources,
    RevisionRecord, RolloutState,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Why a replica is Lost when its node is gone for good.
pub const NODE_DELETED: &str = "was deleted";

/// A node as the planner sees it.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub node: Node,
    /// `False`: its replicas are Lost. `Unknown` (not heard from since the leader started):
    /// neither placed on nor lost, until the grace period decides.
    pub ready: ConditionStatus,
    /// Image references its store holds, as its agent last said.
    pub images: BTreeSet<String>,
    /// The local volumes it holds, as its agent last said.
    pub volumes: BTreeSet<String>,
}

/// An app with its replicas and stored pod templates.
#[derive(Debug, Clone)]
pub struct AppState {
    /// `meta.revision` is the store revision it was read at (the commit checks it).
    pub app: App,
    pub replicas: Vec<Versioned<Replica>>,
    pub revisions: BTreeMap<String, Versioned<AppSpec>>,
    /// Its revision records, oldest first.
    pub history: Vec<Versioned<RevisionRecord>>,
}

/// Everything one pass looks at.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeState>,
    pub apps: BTreeMap<String, AppState>,
    /// Replicas whose app is gone.
    pub orphans: Vec<Versioned<Replica>>,
    /// Stored revisions `(app, hash, store revision)` of apps that are gone.
    pub orphan_revisions: Vec<(String, String, u64)>,
    /// Revision records `(app, number, store revision)` of apps that are gone.
    pub orphan_history: Vec<(String, u64, u64)>,
    /// What an image offers, per image reference and per board that has told.
    pub platforms: BTreeMap<String, Versioned<Misses>>,
    /// The store revision the snapshot was read at: with the time, what makes new names unique.
    pub revision: u64,
    /// Every service (for the endpoints; the planner does not change them).
    pub services: Vec<bramble_proto::model::Service>,
    /// Replicas being stopped that every connected board has stopped sending to.
    pub drained: BTreeSet<String>,
    /// How long after its board went NotReady a job's lost run waits before it is replaced,
    /// besides its stop grace (`job::lost_run_wait_ms`): by then the board has fenced it.
    pub lost_run_wait_ms: u64,
}

/// One write of an app's transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Create(Replica),
    Update {
        replica: Replica,
        expect: u64,
    },
    Delete {
        name: String,
        expect: u64,
    },
    PutRevision {
        hash: String,
        spec: Box<AppSpec>,
    },
    DeleteRevision {
        hash: String,
        expect: u64,
    },
    /// A revision record: new (`expect` None) or updated.
    PutHistory {
        record: Box<RevisionRecord>,
        expect: Option<u64>,
    },
    DeleteHistory {
        number: u64,
        expect: u64,
    },
    /// The app itself, with a new spec (a rollback), under the app's revision.
    PutApp(Box<App>),
    /// The app itself goes, under the app's revision (a finished job past its
    /// `ttl_after_finished`); what is left of it is garbage for later passes.
    DeleteApp,
}

/// A replica with the pod template it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub replica: Replica,
    /// Shared by the replicas of one revision.
    pub spec: Arc<AppSpec>,
}

/// One app's part of a plan: committed all or nothing, with the app's revision checked.
#[derive(Debug, Clone)]
pub struct AppPlan {
    pub app: String,
    /// The store revision of the app the plan was made from.
    pub app_revision: u64,
    pub changes: Vec<Change>,
    /// Recorded only if the changes are committed.
    pub events: Vec<Event>,
    /// The replicas once the changes are committed.
    pub after: Vec<Kept>,
    /// The replicas as they are (what stays if the commit fails).
    pub before: Vec<Kept>,
}

/// Garbage of apps that are gone, each removed on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Garbage {
    Replica {
        replica: Box<Replica>,
        expect: u64,
    },
    Revision {
        app: String,
        hash: String,
        expect: u64,
    },
    History {
        app: String,
        number: u64,
        expect: u64,
    },
    /// What an image offers, once no app uses the image.
    ImagePlatforms {
        image: String,
        expect: u64,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub apps: Vec<AppPlan>,
    pub garbage: Vec<Garbage>,
    /// Each board being drained, and how its drain stands in words (`drained` once nothing that
    /// must leave is left on it).
    pub drains: BTreeMap<String, DrainStatus>,
}

/// How a drain stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainStatus {
    /// Replicas are moving (which app, and what it waits for).
    Moving(String),
    /// It cannot go on: which app, and why.
    Blocked(String),
    /// Nothing that must leave is left (the words say what stays).
    Drained(String),
}

/// What the drain of some boards asks of one app's replicas.
struct Draining<'a> {
    /// Board → whether every-board apps leave it too.
    boards: &'a BTreeMap<&'a str, bool>,
    /// This app is the one being moved now (one app at a time).
    moving: bool,
}

/// The replicas of `app` a drain of `boards` must move (those that are not on their way out).
fn drain_victims<'a>(app: &'a AppState, boards: &BTreeMap<&str, bool>) -> Vec<&'a Replica> {
    if app.app.spec.is_job() {
        return Vec::new(); // a drain waits for runs to end
    }
    app.replicas
        .iter()
        .map(|v| &v.value)
        .filter(|r| {
            r.terminating_ms.is_none()
                && !matches!(r.phase, ReplicaPhase::Lost | ReplicaPhase::Succeeded | ReplicaPhase::Failed)
                && r.node.as_deref().and_then(|n| boards.get(n)).is_some_and(|all| *all || !app.app.spec.every_board())
        })
        .collect()
}

/// Whether passes at any later time over the same snapshot would plan nothing, as `plan` (made
/// from it at `now_ms`) does: nothing in the cluster waits on the clock. No job (runs, backoffs,
/// TTLs), no rollout in progress, no drain, no garbage, and every replica Running, ready and
/// available (`min_ready` passed) on a Ready node, at its app's current template. Conservative —
/// `false` whenever in doubt — because the replica controller's loop skips its every-second pass
/// while a settled cluster's inputs stay the same (`run.rs`).
pub fn settled(snapshot: &Snapshot, plan: &Plan, now_ms: u64) -> bool {
    let quiet = plan.garbage.is_empty()
        && plan.drains.is_empty()
        && plan.apps.iter().all(|a| a.changes.is_empty() && a.events.is_empty());
    let no_leftovers = snapshot.orphans.is_empty()
        && snapshot.orphan_revisions.is_empty()
        && snapshot.orphan_history.is_empty()
        && snapshot.drained.is_empty()
        && snapshot.nodes.iter().all(|n| n.node.draining.is_none());
    if !quiet || !no_leftovers {
        return false;
    }
    let ready: BTreeSet<&str> =
        snapshot.nodes.iter().filter(|n| n.ready == ConditionStatus::True).map(|n| n.node.meta.name.as_str()).collect();
    // The cheap checks first, for every app; a template's hash (its spec serialised) only then.
    let steady = |a: &AppState| {
        let spec = &a.app.spec;
        let Some(latest) = a.history.last().map(|v| &v.value) else { return false };
        !spec.is_job()
            && latest.state != RolloutState::Progressing
            && a.replicas.iter().all(|v| {
                let r = &v.value;
                r.phase == ReplicaPhase::Running
                    && r.revision_hash == latest.hash
                    && r.node.as_deref().is_some_and(|n| ready.contains(n))
                    && rollout::available(r, spec, now_ms)
            })
    };
    snapshot.apps.values().all(steady)
        && snapshot.apps.values().all(|a| a.history.last().is_some_and(|v| v.value.hash == revision_hash(&a.app.spec)))
}

/// Plans one pass over the whole cluster at `now_ms`.
pub fn plan(snapshot: &Snapshot, now_ms: u64) -> Plan {
    let mut scheduler = scheduler_for(snapshot);
    let not_ready: BTreeSet<&str> = snapshot
        .nodes
        .iter()
        .filter(|n| n.ready == ConditionStatus::False)
        .map(|n| n.node.meta.name.as_str())
        .collect();
    let known: BTreeSet<&str> = snapshot.nodes.iter().map(|n| n.node.meta.name.as_str()).collect();
    // Why a node's replicas are Lost, if they are.
    let lost = |node: &str| match (not_ready.contains(node), known.contains(node)) {
        (true, _) => Some("is not ready"),
        (_, false) => Some(NODE_DELETED),
        _ => None,
    };
    let served: BTreeSet<&str> = snapshot.services.iter().map(|s| s.spec.app.as_str()).collect();
    // Start order: apps with a ready replica, and jobs that are complete.
    let ready: BTreeSet<&str> = snapshot
        .apps
        .values()
        .filter(|a| match a.app.spec.is_job() {
            true => job_status(a, now_ms).state == bramble_proto::job::JobState::Complete,
            false => a.replicas.iter().any(|r| r.value.serving()),
        })
        .map(|a| a.app.spec.name.as_str())
        .collect();
    let waiting = |spec: &AppSpec| {
        let dep = spec.after.iter().find(|d| !ready.contains(d.as_str()))?;
        Some(match snapshot.apps.get(dep.as_str()) {
            Some(d) if d.app.spec.is_job() => match job_status(d, now_ms) {
                s if s.state == bramble_proto::job::JobState::Failed => {
                    format!("waiting for job {dep} to complete; it failed ({}) (it starts after it)", s.reason)
                }
                _ => format!("waiting for job {dep} to complete (it starts after it)"),
            },
            Some(_) => format!("waiting for app {dep} to have a ready replica (it starts after it)"),
            None => format!("waiting for app {dep}, which does not exist (it starts after it)"),
        })
    };
    // Boards being drained; one app at a time moves off them: the first by name with a replica
    // still there.
    let boards: BTreeMap<&str, bool> = snapshot
        .nodes
        .iter()
        .filter_map(|n| Some((n.node.meta.name.as_str(), n.node.draining.as_ref()?.include_every_board)))
        .collect();
    let moving =
        snapshot.apps.values().find(|a| !drain_victims(a, &boards).is_empty()).map(|a| a.app.spec.name.as_str());
    let mut status = None;
    let apps = snapshot
        .apps
        .values()
        .map(|a| {
            let offered = snapshot.platforms.get(a.app.spec.image.as_str()).map(|v| &v.value);
            let drain = DrainInput { served: served.contains(a.app.spec.name.as_str()), drained: &snapshot.drained };
            let draining = Draining { boards: &boards, moving: moving == Some(a.app.spec.name.as_str()) };
            let waiting = waiting(&a.app.spec);
            let (plan, s) = plan_app(
                a,
                &lost,
                offered,
                &drain,
                &draining,
                &mut scheduler,
                now_ms,
                salt(snapshot.revision, now_ms),
                waiting,
                snapshot.lost_run_wait_ms,
            );
            if s.is_some() {
                status = s;
            }
            plan
        })
        .collect();
    let mut drains = BTreeMap::new();
    for (board, all) in &boards {
        let staying: Vec<&str> = snapshot
            .apps
            .values()
            .filter(|a| a.app.spec.every_board() && !all)
            .filter(|a| a.replicas.iter().any(|r| r.value.node.as_deref() == Some(*board)))
            .map(|a| a.app.spec.name.as_str())
            .collect();
        // (Those leaving their services still count: drained is when they are gone.)
        let here = |a: &AppState| {
            a.replicas.iter().any(|r| {
                r.value.node.as_deref() == Some(*board)
                    && !matches!(r.value.phase, ReplicaPhase::Lost | ReplicaPhase::Succeeded | ReplicaPhase::Failed)
            })
        };
        let left = snapshot.apps.values().any(|a| (*all || !a.app.spec.every_board()) && here(a));
        let jobs: Vec<&str> = snapshot
            .apps
            .values()
            .filter(|a| a.app.spec.is_job() && here(a))
            .map(|a| a.app.spec.name.as_str())
            .collect();
        let s = match (&status, left) {
            (Some(s), true) => s.clone(),
            (None, true) if !jobs.is_empty() => {
                DrainStatus::Moving(format!("waiting for runs of job {} to end", jobs.join(", ")))
            }
            (None, true) => DrainStatus::Moving("replicas are leaving".into()),
            (_, false) if staying.is_empty() => DrainStatus::Drained("drained".into()),
            (_, false) => DrainStatus::Drained(format!(
                "drained; every-board apps stay: {} (--include-every-board moves them too)",
                staying.join(", ")
            )),
        };
        drains.insert(board.to_string(), s);
    }
    Plan { apps, garbage: garbage(snapshot), drains }
}

/// The scheduler's view: every node, with what the bound replicas of live apps already take.
fn scheduler_for(snapshot: &Snapshot) -> Scheduler {
    let mut nodes: Vec<NodeSnapshot> = snapshot
        .nodes
        .iter()
        .map(|n| NodeSnapshot {
            name: n.node.meta.name.clone(),
            arch: n.node.info.arch.clone(),
            ready: n.ready == ConditionStatus::True,
            unschedulable: n.node.unschedulable,
            network_unavailable: n.node.info.network_problem.is_some(),
            labels: n.node.effective_labels(),
            taints: n.node.taints.clone(),
            allocatable: n.node.info.allocatable,
            requested: Resources::default(),
            host_ports: BTreeSet::new(),
            images: n.images.clone(),
            volumes: n.volumes.clone(),
            apps: BTreeMap::new(),
            revisions: BTreeMap::new(),
            devices: n.node.info.devices.clone(),
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut scheduler = Scheduler::new(nodes);
    for (name, a) in &snapshot.apps {
        for r in a.replicas.iter().map(|v| &v.value).filter(|r| holds_node(r)) {
            if let Some(i) = r.node.as_deref().and_then(|n| scheduler.index_of(n)) {
                let req =
                    Placement { app: name, spec: &a.app.spec, misses: None, revision: &r.revision_hash, homes: None };
                scheduler.bind(i, &req);
            }
        }
    }
    scheduler
}

/// Whether a replica still takes room on its node.
pub fn holds_node(r: &Replica) -> bool {
    !matches!(r.phase, ReplicaPhase::Succeeded | ReplicaPhase::Failed | ReplicaPhase::Lost)
}

fn garbage(snapshot: &Snapshot) -> Vec<Garbage> {
    let orphans =
        snapshot.orphans.iter().map(|v| Garbage::Replica { replica: Box::new(v.value.clone()), expect: v.rev });
    let with_replicas: BTreeSet<&str> = snapshot.orphans.iter().map(|v| v.value.app.as_str()).collect();
    let revisions = snapshot
        .orphan_revisions
        .iter()
        .filter(|(app, _, _)| !with_replicas.contains(app.as_str()))
        .map(|(app, hash, rev)| Garbage::Revision { app: app.clone(), hash: hash.clone(), expect: *rev });
    let history = snapshot
        .orphan_history
        .iter()
        .filter(|(app, _, _)| !with_replicas.contains(app.as_str()))
        .map(|(app, number, rev)| Garbage::History { app: app.clone(), number: *number, expect: *rev });
    let used: BTreeSet<&str> = snapshot.apps.values().map(|a| a.app.spec.image.as_str()).collect();
    let images = snapshot
        .platforms
        .iter()
        .filter(|(image, _)| !used.contains(image.as_str()))
        .map(|(image, v)| Garbage::ImagePlatforms { image: image.clone(), expect: v.rev });
    orphans.chain(revisions).chain(history).chain(images).collect()
}

/// One app's work in progress: the replicas as they will be, and what was there.
struct Work<'a> {
    app: &'a AppState,
    name: &'a str,
    now: u64,
    /// Unique per pass (new names come from it).
    salt: u64,
    replicas: Vec<Replica>,
    /// Marked Lost in this pass: written now, deleted in a later pass (one write per key).
    just_lost: BTreeSet<String>,
    events: Vec<Event>,
    /// An every-board app's boards: its replicas go nowhere else.
    boards: Option<BTreeSet<String>>,
    /// Replicas a drain moves off their boards: not counted (so new copies are made), stopped
    /// once those are ready (`release_moved`).
    moving: BTreeSet<String>,
    /// The spec the count and the rollout follow: the app's own, or for an every-board app one
    /// with as many replicas as boards it matches, rolled without surge.
    effective: std::borrow::Cow<'a, AppSpec>,
    /// Why its new replicas may not start yet (start order), if they may not.
    waiting: Option<String>,
    /// A finished job past its `ttl_after_finished`: the app goes, and why.
    expired: Option<String>,
    /// See [`Snapshot::lost_run_wait_ms`].
    lost_run_wait_ms: u64,
}

impl Work<'_> {
    fn event(&mut self, replica: &str, reason: EventReason, message: String) {
        self.events.push(Event::replica(self.now, self.name, replica, reason, message));
    }

    fn spec(&self) -> &AppSpec {
        &self.effective
    }
}

/// The boards an every-board app belongs on: those whose arch, labels, devices and taints let it
/// (up or not, cordoned or not).
fn every_board_nodes(spec: &AppSpec, offered: Option<&Misses>, scheduler: &Scheduler) -> BTreeSet<String> {
    let req = Placement { app: spec.name.as_str(), spec, misses: offered, revision: "", homes: None };
    scheduler.nodes.iter().filter(|n| crate::scheduler::mismatch(n, &req).is_none()).map(|n| n.name.clone()).collect()
}

/// An every-board app's spec for counting and rolling: one replica per board it belongs on, and
/// a board at a time (a second replica on the same board is never placed, so no surge).
fn every_board_spec(spec: &AppSpec, boards: usize) -> AppSpec {
    let mut s = spec.clone();
    s.replicas = bramble_proto::manifest::Replicas(boards.min(u32::MAX as usize) as u32);
    s.update.max_surge = bramble_proto::manifest::Step(0);
    s.update.max_unavailable = bramble_proto::manifest::Step(spec.update.max_unavailable.0.max(1));
    s
}

/// Replicas of an every-board app on boards it no longer belongs on (a label gone, a device
/// unplugged, the board deleted) go; those that take traffic leave their services first.
fn leave_other_boards(w: &mut Work<'_>, boards: &BTreeSet<String>, drain: &DrainInput<'_>, scheduler: &mut Scheduler) {
    let now = w.now;
    let mut gone = Vec::new();
    for r in w.replicas.iter_mut() {
        let Some(node) = r.node.clone() else { continue };
        if boards.contains(&node) || r.terminating_ms.is_some() || w.just_lost.contains(&r.meta.name) {
            continue;
        }
        let drains = drain.served && r.serving();
        if drains {
            r.terminating_ms = Some(now);
        }
        gone.push((r.meta.name.clone(), drains, node));
    }
    for (name, drains, node) in gone {
        let why = format!("node {node} is no longer one of the app's boards");
        if !drains {
            remove_replica(w, &name, scheduler);
            w.event(&name, EventReason::Deleted, format!("deleted: {why}"));
        } else {
            w.event(&name, EventReason::Draining, format!("leaving its services before it stops ({why})"));
        }
    }
}

/// What draining needs to know of one app.
struct DrainInput<'a> {
    /// A service sends traffic to the app: its replicas leave it before they stop.
    served: bool,
    drained: &'a BTreeSet<String>,
}

/// A job's state from its stored runs (lost ones not counted).
fn job_status(a: &AppState, now_ms: u64) -> bramble_proto::job::JobStatus {
    let runs: Vec<&Replica> = a.replicas.iter().map(|v| &v.value).filter(|r| r.phase != ReplicaPhase::Lost).collect();
    bramble_proto::job::status(&a.app.spec, a.app.meta.created_ms, &runs, now_ms)
}

/// What makes this pass's new names its own: no two committed passes share a store revision
/// and a time.
fn salt(revision: u64, now_ms: u64) -> u64 {
    revision.rotate_left(40) ^ now_ms
}

#[allow(clippy::too_many_arguments)]
fn plan_app(
    app: &AppState,
    lost: &dyn Fn(&str) -> Option<&'static str>,
    offered: Option<&Misses>,
    drain: &DrainInput<'_>,
    draining: &Draining<'_>,
    scheduler: &mut Scheduler,
    now: u64,
    salt: u64,
    waiting: Option<String>,
    lost_run_wait_ms: u64,
) -> (AppPlan, Option<DrainStatus>) {
    let name = app.app.spec.name.as_str();
    let mut w = Work {
        app,
        name,
        now,
        salt,
        replicas: app.replicas.iter().map(|v| v.value.clone()).collect(),
        just_lost: BTreeSet::new(),
        events: Vec::new(),
        effective: std::borrow::Cow::Borrowed(&app.app.spec),
        moving: BTreeSet::new(),
        boards: None,
        waiting,
        expired: None,
        lost_run_wait_ms,
    };
    mark_lost(&mut w, lost);
    if let Some(offered) = offered {
        evict_foreign(&mut w, offered, scheduler);
    }
    if app.app.spec.is_job() {
        // Runs to completion: neither counted nor rolled nor moved by drains (a drain waits for
        // them to end).
        job_runs(&mut w, scheduler);
    } else if app.app.spec.every_board() {
        let mut boards = every_board_nodes(&app.app.spec, offered, scheduler);
        // Drained with --include-every-board: not one of its boards once its turn has come (or
        // once it has nothing there), while the drain lasts.
        boards.retain(|b| {
            draining.boards.get(b.as_str()) != Some(&true)
                || (!draining.moving
                    && w.replicas.iter().any(|r| r.node.as_deref() == Some(b.as_str()) && r.terminating_ms.is_none()))
        });
        w.effective = std::borrow::Cow::Owned(every_board_spec(&app.app.spec, boards.len()));
        leave_other_boards(&mut w, &boards, drain, scheduler);
        w.boards = Some(boards);
    } else {
        evict_unplugged(&mut w, scheduler);
        if draining.moving {
            w.moving = drain_victims(app, draining.boards).iter().map(|r| r.meta.name.clone()).collect();
        }
    }
    if !app.app.spec.is_job() {
        finish_draining(&mut w, drain, scheduler);
        keep_count(&mut w, drain, scheduler);
    }
    place(&mut w, offered, scheduler);
    let status = if !draining.moving {
        None
    } else if app.app.spec.every_board() {
        Some(DrainStatus::Moving(format!("app {name}: its every-board replicas are stopping")))
    } else {
        Some(release_moved(&mut w, drain, scheduler))
    };
    if let Some(why) = w.expired.take() {
        // The app goes; its runs, templates and records are the garbage of a deleted app.
        let event =
            Event { app: Some(name.to_string()), ..Event::new(now, ObjectRef::app(name), EventReason::Deleted, why) };
        w.events.push(event);
        let kept = app.replicas.iter().map(|v| Kept { replica: v.value.clone(), spec: Arc::new(app.app.spec.clone()) });
        let kept: Vec<Kept> = kept.collect();
        let plan = AppPlan {
            app: name.to_string(),
            app_revision: app.app.meta.revision,
            after: kept.clone(),
            before: kept,
            changes: vec![Change::DeleteApp],
            events: w.events,
        };
        return (plan, None);
    }
    let mut changes = replica_changes(app, &w.replicas);
    changes.extend(revision_changes(app, &w.replicas));
    if !app.app.spec.is_job() {
        changes.extend(follow_rollout(&mut w));
    }
    // One template per revision, shared by its replicas.
    let current = Arc::new(app.app.spec.clone());
    let stored: BTreeMap<&str, Arc<AppSpec>> =
        app.revisions.iter().map(|(h, v)| (h.as_str(), Arc::new(v.value.clone()))).collect();
    let templates = |rs: &mut dyn Iterator<Item = Replica>| -> Vec<Kept> {
        rs.map(|replica| {
            let spec = stored.get(replica.revision_hash.as_str()).unwrap_or(&current).clone();
            Kept { replica, spec }
        })
        .collect()
    };
    let plan = AppPlan {
        app: name.to_string(),
        app_revision: app.app.meta.revision,
        after: templates(&mut w.replicas.clone().into_iter()),
        before: templates(&mut app.replicas.iter().map(|v| v.value.clone())),
        changes,
        events: w.events,
    };
    (plan, status)
}

/// The replicas a drain moves off their boards go once their new copies are ready — or, when a
/// new copy cannot be placed, as long as the app keeps `min_available` ready; otherwise the
/// drain waits and says why.
fn release_moved(w: &mut Work<'_>, drain: &DrainInput<'_>, scheduler: &mut Scheduler) -> DrainStatus {
    let name = w.name;
    let want = w.spec().replicas.0;
    let floor = w.app.app.spec.min_available(want);
    let moving: Vec<String> = w.moving.iter().cloned().collect();
    let others = |w: &Work<'_>| {
        w.replicas
            .iter()
            .filter(|r| !w.moving.contains(&r.meta.name) && r.terminating_ms.is_none() && r.serving())
            .count() as u32
    };
    let unplaced: Option<String> = w
        .replicas
        .iter()
        .find(|r| r.node.is_none() && !r.reason.is_empty() && !w.moving.contains(&r.meta.name))
        .map(|r| r.reason.clone());
    let mut blocked = None;
    for victim in moving {
        let Some(r) = w.replicas.iter().find(|r| r.meta.name == victim) else { continue };
        let node = r.node.clone().unwrap_or_default();
        let serving = r.serving();
        let ready = others(w);
        let why = if !serving {
            Some("it serves nobody".to_string())
        } else if ready >= want {
            Some("its new copy is ready".to_string())
        } else if unplaced.is_some() && ready >= floor {
            Some(format!("its new copy cannot be placed yet, and {ready} ready stay (min_available {floor})"))
        } else {
            None
        };
        let Some(why) = why else {
            blocked = Some(match &unplaced {
                Some(reason) => DrainStatus::Blocked(format!(
                    "app {name}: its new copy cannot be placed ({reason}), and stopping {victim} on {node} would leave \
                     {ready} ready, below min_available {floor}"
                )),
                None => DrainStatus::Moving(format!(
                    "app {name}: waiting for its new copy to be ready ({ready} of {want} ready elsewhere)"
                )),
            });
            continue;
        };
        let why = format!("moved off node {node}, which is being drained ({why})");
        if drain.served && serving {
            let now = w.now;
            if let Some(r) = w.replicas.iter_mut().find(|r| r.meta.name == victim) {
                r.terminating_ms = Some(now);
            }
            w.event(&victim, EventReason::Draining, format!("leaving its services before it stops: {why}"));
        } else {
            remove_replica(w, &victim, scheduler);
            w.event(&victim, EventReason::Deleted, format!("deleted: {why}"));
        }
    }
    blocked.unwrap_or_else(|| DrainStatus::Moving(format!("app {name}: its replicas are leaving")))
}

/// Replicas on nodes that stopped answering are Lost from the moment the node is NotReady (or
/// deleted).
fn mark_lost(w: &mut Work<'_>, lost: &dyn Fn(&str) -> Option<&'static str>) {
    let now = w.now;
    let mut marked = Vec::new();
    for r in &mut w.replicas {
        let Some((node, why)) = r.node.as_deref().and_then(|n| Some((n, lost(n)?))) else { continue };
        if r.phase == ReplicaPhase::Lost && why == NODE_DELETED && !r.reason.contains(NODE_DELETED) {
            // Waiting for its node, which is now gone for good: replaced (its volumes went too).
            r.reason = format!("node {node} {why}");
            marked.push((r.meta.name.clone(), r.reason.clone()));
            continue;
        }
        // A job's failed run is its history (it counts toward backoff_limit), not lost work.
        let finished_run = w.app.app.spec.is_job() && r.phase == ReplicaPhase::Failed;
        if matches!(r.phase, ReplicaPhase::Lost | ReplicaPhase::Succeeded) || finished_run {
            continue;
        }
        r.phase = ReplicaPhase::Lost;
        r.reason = format!("node {node} {why}");
        if w.app.app.spec.pinned() && why != NODE_DELETED {
            r.reason.push_str("; it waits for its node, which holds its local volumes (placement.may_move = false)");
        }
        r.finished_ms = Some(now);
        marked.push((r.meta.name.clone(), r.reason.clone()));
    }
    for (replica, reason) in marked {
        w.event(&replica, EventReason::ReplicaLost, reason);
        w.just_lost.insert(replica);
    }
}

/// A replica on a board whose arch the image does not offer can never run there: it goes, and
/// its replacement is placed where the image runs.
fn evict_foreign(w: &mut Work<'_>, misses: &Misses, scheduler: &mut Scheduler) {
    let mut gone = Vec::new();
    for r in &w.replicas {
        let Some(i) = r.node.as_deref().and_then(|n| scheduler.index_of(n)) else { continue };
        let arch = scheduler.nodes[i].arch.clone();
        // (One just marked Lost goes too: it would never run there, so it holds no place.)
        let Some(offered) = misses.get(&scheduler.nodes[i].name) else { continue };
        if Platform::choose(offered, &arch).is_some() {
            continue;
        }
        if holds_node(r) {
            scheduler.unbind(i, w.name, w.spec(), &r.revision_hash);
        }
        let list: Vec<String> = offered.iter().map(|p| p.to_string()).collect();
        let node = &scheduler.nodes[i].name;
        gone.push((
            r.meta.name.clone(),
            format!("deleted: the image offers {} and node {node} is {arch}", list.join(", ")),
        ));
    }
    for (replica, why) in gone {
        w.replicas.retain(|r| r.meta.name != replica);
        w.event(&replica, EventReason::ImagePlatform, why);
    }
}

/// A replica on a board that no longer has a device the app asks for (unplugged) goes; its
/// replacement is placed on a board that has it, or waits Pending saying which device is missing.
fn evict_unplugged(w: &mut Work<'_>, scheduler: &mut Scheduler) {
    if w.spec().devices.is_empty() {
        return;
    }
    let mut gone = Vec::new();
    for r in &w.replicas {
        if matches!(r.phase, ReplicaPhase::Lost | ReplicaPhase::Succeeded) || r.terminating_ms.is_some() {
            continue;
        }
        let Some(i) = r.node.as_deref().and_then(|n| scheduler.index_of(n)) else { continue };
        let missing = bramble_proto::device::missing(&w.app.app.spec.devices, &scheduler.nodes[i].devices);
        if missing.is_empty() {
            continue;
        }
        let list: Vec<String> = missing.iter().map(|d| d.to_string()).collect();
        let node = &scheduler.nodes[i].name;
        gone.push((r.meta.name.clone(), format!("deleted: node {node} no longer has device {}", list.join(", "))));
    }
    for (replica, why) in gone {
        remove_replica(w, &replica, scheduler);
        w.event(&replica, EventReason::DeviceMissing, why);
    }
}

/// Replicas that were leaving their services go once every board stopped sending to them, or
/// after the bound.
fn finish_draining(w: &mut Work<'_>, drain: &DrainInput<'_>, scheduler: &mut Scheduler) {
    let done: Vec<(String, &'static str)> = w
        .replicas
        .iter()
        .filter_map(|r| {
            let since = r.terminating_ms?;
            if drain.drained.contains(&r.meta.name) {
                Some((r.meta.name.clone(), "every board stopped sending to it"))
            } else if w.now >= since + DRAIN_TIMEOUT_MS {
                Some((r.meta.name.clone(), "not every board confirmed in time"))
            } else {
                None
            }
        })
        .collect();
    for (name, why) in done {
        remove_replica(w, &name, scheduler);
        w.event(&name, EventReason::Deleted, format!("deleted after leaving its services ({why})"));
    }
}

/// A job's runs: lost ones go once their board has surely stopped them (it fences them when cut
/// off; until then they hold their place, so a run never runs twice at once) and a new run
/// replaces them; while it runs, new runs up to its parallelism (none while a failure's backoff
/// lasts); once complete or failed, the runs still going stop. Finished runs stay (their logs
/// and exit codes) until the job is deleted.
fn job_runs(w: &mut Work<'_>, scheduler: &mut Scheduler) {
    let wait = w.lost_run_wait_ms + w.spec().stop_grace().as_millis() as u64;
    let (mut gone, mut held) = (Vec::new(), 0u32);
    for r in w.replicas.iter().filter(|r| r.phase == ReplicaPhase::Lost && !w.just_lost.contains(&r.meta.name)) {
        if w.now >= r.finished_ms.unwrap_or(0).saturating_add(wait) {
            gone.push(r.meta.name.clone());
        } else {
            held += 1;
        }
    }
    for name in gone {
        remove_replica(w, &name, scheduler);
        w.event(
            &name,
            EventReason::Deleted,
            "deleted: its node was lost and has stopped it (the job starts another run)".into(),
        );
    }
    // (Just marked: held too.)
    held += w.just_lost.len() as u32;
    let spec = w.spec().clone();
    let runs: Vec<&Replica> = w.replicas.iter().filter(|r| r.phase != ReplicaPhase::Lost).collect();
    let status = bramble_proto::job::status(&spec, w.app.app.meta.created_ms, &runs, w.now);
    if status.state.finished() {
        let going: Vec<String> =
            w.replicas.iter().filter(|r| bramble_proto::job::is_active(r)).map(|r| r.meta.name.clone()).collect();
        let why = match status.state {
            bramble_proto::job::JobState::Failed => format!("the job failed ({})", status.reason),
            _ => "the job is complete".to_string(),
        };
        for name in going {
            remove_replica(w, &name, scheduler);
            w.event(&name, EventReason::Deleted, format!("deleted: {why}"));
        }
        let ttl = spec.job().ttl_after_finished_ms;
        if let (Some(ttl), Some(done)) = (ttl, status.finished_ms) {
            if w.now >= done.saturating_add(ttl) {
                let after = spec.ttl_after_finished.map(|d| d.to_string()).unwrap_or_default();
                w.expired = Some(format!("job {} deleted: finished {after} ago (ttl_after_finished)", w.name));
            }
        }
        return;
    }
    let revision = revision_hash(&spec);
    for _ in 0..bramble_proto::job::runs_to_start(&spec, &status, w.now).saturating_sub(held) {
        let taken = |n: &str| w.replicas.iter().any(|r| r.meta.name == n);
        let name = super::replicas::fresh_name(w.name, &revision, w.salt, &taken);
        w.replicas.push(Replica::new(w.name, &name, &revision, w.now));
        w.event(&name, EventReason::Created, format!("run of job {} created", w.name));
    }
}

/// Takes replica `name` out of the plan and off its node.
fn remove_replica(w: &mut Work<'_>, name: &str, scheduler: &mut Scheduler) {
    let Some(pos) = w.replicas.iter().position(|r| r.meta.name == name) else { return };
    let r = w.replicas.remove(pos);
    if holds_node(&r) {
        if let Some(i) = r.node.as_deref().and_then(|n| scheduler.index_of(n)) {
            scheduler.unbind(i, w.name, w.spec(), &r.revision_hash);
        }
    }
}

/// The count, the rolling update and Lost replicas past their hold-off. A rollout that failed
/// and holds (no rollback) stays as it is. A replica that takes traffic leaves its services
/// first (it drains) and goes in a later pass; others go at once.
fn keep_count(w: &mut Work<'_>, drain: &DrainInput<'_>, scheduler: &mut Scheduler) {
    let current = revision_hash(w.spec());
    let frozen = w.app.history.last().is_some_and(|h| h.value.state == RolloutState::Failed && h.value.hash == current);
    // Replicas already leaving count no more, nor those a drain moves.
    let counted: Vec<Replica> =
        w.replicas.iter().filter(|r| r.terminating_ms.is_none() && !w.moving.contains(&r.meta.name)).cloned().collect();
    for action in reconcile(w.name, w.spec(), &counted, w.now, w.salt, frozen) {
        match action {
            Action::Delete { name: victim, reason } => {
                // A replica just marked Lost is deleted in a later pass (one write per key).
                if w.just_lost.contains(&victim) {
                    continue;
                }
                let now = w.now;
                let Some(r) = w.replicas.iter_mut().find(|r| r.meta.name == victim) else { continue };
                if drain.served && r.serving() {
                    r.terminating_ms = Some(now);
                    let why = format!("leaving its services before it stops ({reason})");
                    w.event(&victim, EventReason::Draining, why);
                    continue;
                }
                remove_replica(w, &victim, scheduler);
                w.event(&victim, EventReason::Deleted, format!("deleted: {reason}"));
            }
            Action::Create { name: new, revision } => {
                w.replicas.push(Replica::new(w.name, &new, &revision, w.now));
                w.event(&new, EventReason::Created, format!("created for app {}", w.name));
            }
        }
    }
}

/// Where a pinned app's replicas may go: the boards its replicas are bound to (lost ones too) and
/// those that hold one of its local volumes — once there are as many as it has replicas. Before,
/// anywhere (a new replica makes a new home; spreading keeps them apart).
fn homes(w: &Work<'_>, scheduler: &Scheduler) -> Option<BTreeSet<String>> {
    let spec = w.spec();
    if !spec.pinned() {
        return None;
    }
    let names: BTreeSet<&str> = spec.local_volumes().collect();
    let mut homes: BTreeSet<String> = w.replicas.iter().filter_map(|r| r.node.clone()).collect();
    homes.extend(
        scheduler.nodes.iter().filter(|n| n.volumes.iter().any(|v| names.contains(v.as_str()))).map(|n| n.name.clone()),
    );
    (homes.len() >= spec.replicas.0 as usize).then_some(homes)
}

/// Places what is unbound; what fits nowhere keeps a reason (an event only when it changes).
fn place(w: &mut Work<'_>, offered: Option<&Misses>, scheduler: &mut Scheduler) {
    let spec = &w.app.app.spec;
    let revision = revision_hash(spec);
    let homes = w.boards.clone().or_else(|| homes(w, scheduler));
    let req = Placement { app: w.name, spec, misses: offered, revision: &revision, homes: homes.as_ref() };
    let mut events = Vec::new();
    for r in w.replicas.iter_mut().filter(|r| r.node.is_none()) {
        if let Some(why) = &w.waiting {
            if r.reason != *why {
                events.push((r.meta.name.clone(), EventReason::WaitingForApps, why.clone()));
                r.reason = why.clone();
            }
            continue;
        }
        match scheduler.place(&req) {
            Ok(i) => {
                scheduler.bind(i, &req);
                let node = scheduler.nodes[i].name.clone();
                events.push((r.meta.name.clone(), EventReason::Scheduled, format!("assigned to node {node}")));
                r.node = Some(node);
                r.reason = String::new();
            }
            Err(why) => {
                let why = why.to_string();
                if r.reason != why {
                    events.push((r.meta.name.clone(), EventReason::FailedScheduling, why.clone()));
                }
                r.reason = why;
            }
        }
    }
    for (replica, reason, message) in events {
        w.event(&replica, reason, message);
    }
}

/// The latest rollout: recorded if the app has no record of its template yet, its progress,
/// completion or failure written, and a rollback when it failed; the oldest records beyond
/// [`rollout::KEEP`] dropped.
fn follow_rollout(w: &mut Work<'_>) -> Vec<Change> {
    let spec = w.spec().clone();
    let history: Vec<RevisionRecord> = w.app.history.iter().map(|v| v.value.clone()).collect();
    let latest = w.app.history.last();
    let mut changes = Vec::new();
    let app_event = |reason, message: String| Event {
        app: Some(w.name.to_string()),
        ..Event::new(w.now, ObjectRef::app(w.name), reason, message)
    };
    let mut events = Vec::new();
    match latest {
        Some(v) if v.value.hash == revision_hash(&spec) => match rollout::evaluate(&spec, &history, &w.replicas, w.now)
        {
            Step::Unchanged => {}
            Step::Update(r) => {
                match r.state {
                    RolloutState::Complete => events.push(app_event(
                        EventReason::RolloutComplete,
                        format!("revision {} rolled out: {}", r.number, r.message),
                    )),
                    RolloutState::Failed => events.push(app_event(
                        EventReason::RolloutFailed,
                        format!("revision {} failed: {}", r.number, r.message),
                    )),
                    _ => {}
                }
                changes.push(Change::PutHistory { record: r, expect: Some(v.rev) });
            }
            Step::Rollback { failed, spec: to, record } => {
                events.push(app_event(
                    EventReason::RolledBack,
                    format!("revision {} failed: {}", failed.number, failed.message),
                ));
                changes.push(Change::PutHistory { record: failed, expect: Some(v.rev) });
                let mut app = w.app.app.clone();
                // (The count and the update strategy stay the app's own, not an every-board
                // app's effective ones.)
                app.spec = super::rollout::with_template(&w.app.app.spec, &to);
                app.meta.generation += 1;
                changes.push(Change::PutApp(Box::new(app)));
                changes.push(Change::PutHistory { record, expect: None });
            }
        },
        _ => {
            // No record of this template (an app from before rollouts were recorded): one now.
            let number = latest.map_or(1, |v| v.value.number + 1);
            let old = rollout::old_replicas(&w.replicas, &revision_hash(&spec));
            let record = rollout::new_record(w.name, number, &spec, "recorded", old, w.now);
            changes.push(Change::PutHistory { record: Box::new(record), expect: None });
        }
    }
    w.events.extend(events);
    let excess = w.app.history.len().saturating_sub(rollout::KEEP);
    for v in &w.app.history[..excess] {
        changes.push(Change::DeleteHistory { number: v.value.number, expect: v.rev });
    }
    changes
}

/// The writes that turn the stored replicas into `after`: one per key at most.
fn replica_changes(app: &AppState, after: &[Replica]) -> Vec<Change> {
    let before: BTreeMap<&str, &Versioned<Replica>> =
        app.replicas.iter().map(|v| (v.value.meta.name.as_str(), v)).collect();
    let names: BTreeSet<&str> = after.iter().map(|r| r.meta.name.as_str()).collect();
    let mut changes = Vec::new();
    for r in after {
        match before.get(r.meta.name.as_str()) {
            None => changes.push(Change::Create(r.clone())),
            Some(v) if v.value != *r => changes.push(Change::Update { replica: r.clone(), expect: v.rev }),
            Some(_) => {}
        }
    }
    for (name, v) in &before {
        if !names.contains(name) {
            changes.push(Change::Delete { name: name.to_string(), expect: v.rev });
        }
    }
    changes
}

/// The current revision's template is stored once a replica runs it; a template no replica
/// uses any more goes.
fn revision_changes(app: &AppState, after: &[Replica]) -> Vec<Change> {
    let current = revision_hash(&app.app.spec);
    let used: BTreeSet<&str> = after.iter().map(|r| r.revision_hash.as_str()).collect();
    let mut changes = Vec::new();
    if used.contains(current.as_str()) && !app.revisions.contains_key(&current) {
        changes.push(Change::PutRevision { hash: current, spec: Box::new(app.app.spec.clone()) });
    }
    for (hash, v) in &app.revisions {
        if !used.contains(hash.as_str()) {
            changes.push(Change::DeleteRevision { hash: hash.clone(), expect: v.rev });
        }
    }
    changes
}

#[cfg(test)]
mod tests;
