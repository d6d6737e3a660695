//! `apply --dry-run`: the planner run forward in memory. The new specs are laid over a snapshot
//! of the cluster, and passes of the real [`plan`] are committed to that copy — new replicas
//! pretend to start and become ready, replicas that leave their services are taken as drained —
//! until nothing changes. What was there and what is left, per app, is the placement plan:
//! replicas created, replaced (same board, new revision) or removed, and the reasons of those
//! that no board would take. Nothing is written and no board is asked.

use super::plan::{plan, AppState, Change, Plan, Snapshot};
use super::replicas::revision_hash;
use crate::objects::Versioned;
use bramble_proto::manifest::AppSpec;
use bramble_proto::model::{App, ObjectMeta, ReplicaPhase, RevisionRecord, RolloutState, Service};
use bramble_proto::wire::{AppPlanView, PlannedAction, PlannedChange};
use std::collections::{BTreeMap, BTreeSet};

/// Passes at most: a rolling update of 100 replicas one at a time takes about 200.
const MAX_PASSES: usize = 1000;

/// Applies `plan` to `s` as the store would, checking every compare-and-swap it asks for; `rev`
/// is the store revision, bumped per write. An error names the write the store would refuse.
pub fn commit(s: &mut Snapshot, plan: &Plan, rev: &mut u64) -> Result<(), String> {
    for p in &plan.apps {
        let a = s.apps.get_mut(&p.app).ok_or_else(|| format!("planned app {} does not exist", p.app))?;
        if p.app_revision != a.app.meta.revision {
            return Err(format!(
                "app {}: planned at revision {}, stored at {}",
                p.app, p.app_revision, a.app.meta.revision
            ));
        }
        if p.changes.contains(&Change::DeleteApp) {
            if p.changes.len() != 1 {
                return Err(format!("app {}: deleted with other writes in one transaction", p.app));
            }
            *rev += 1;
            s.apps.remove(&p.app);
            continue;
        }
        let mut keys = BTreeSet::new();
        for c in &p.changes {
            *rev += 1;
            let key = commit_change(a, c, *rev)?;
            if !keys.insert(key.clone()) {
                return Err(format!("two writes of {key} in one transaction"));
            }
        }
    }
    Ok(())
}

fn commit_change(a: &mut AppState, c: &Change, rev: u64) -> Result<String, String> {
    let expect = |have: u64, want: u64, what: &str| {
        if have == want {
            Ok(())
        } else {
            Err(format!("{what} expects revision {want}, found {have}"))
        }
    };
    Ok(match c {
        Change::Create(r) => {
            if a.replicas.iter().any(|v| v.value.meta.name == r.meta.name) {
                return Err(format!("replica {} created twice", r.meta.name));
            }
            a.replicas.push(Versioned { value: r.clone(), rev });
            r.meta.name.clone()
        }
        Change::Update { replica, expect: want } => {
            let name = &replica.meta.name;
            let v = a.replicas.iter_mut().find(|v| &v.value.meta.name == name).ok_or(format!("no replica {name}"))?;
            expect(v.rev, *want, name)?;
            *v = Versioned { value: replica.clone(), rev };
            name.clone()
        }
        Change::Delete { name, expect: want } => {
            let i = a.replicas.iter().position(|v| &v.value.meta.name == name).ok_or(format!("no replica {name}"))?;
            expect(a.replicas[i].rev, *want, name)?;
            a.replicas.remove(i);
            name.clone()
        }
        Change::PutRevision { hash, spec } => {
            if a.revisions.insert(hash.clone(), Versioned { value: (**spec).clone(), rev }).is_some() {
                return Err(format!("template {hash} stored twice"));
            }
            format!("rev/{hash}")
        }
        Change::DeleteRevision { hash, expect: want } => {
            let v = a.revisions.remove(hash).ok_or(format!("no template {hash}"))?;
            expect(v.rev, *want, hash)?;
            format!("rev/{hash}")
        }
        Change::PutHistory { record, expect: want } => {
            let at = a.history.iter().position(|v| v.value.number == record.number);
            match (at, want) {
                (None, None) => a.history.push(Versioned { value: (**record).clone(), rev }),
                (Some(i), Some(e)) => {
                    expect(a.history[i].rev, *e, "a revision record")?;
                    a.history[i] = Versioned { value: (**record).clone(), rev };
                }
                (at, _) => return Err(format!("record {} put with the wrong condition ({at:?})", record.number)),
            }
            a.history.sort_by_key(|v| v.value.number);
            format!("history/{}", record.number)
        }
        Change::DeleteHistory { number, expect: want } => {
            let i = a.history.iter().position(|v| v.value.number == *number).ok_or(format!("no record {number}"))?;
            expect(a.history[i].rev, *want, "a revision record")?;
            a.history.remove(i);
            format!("history/{number}")
        }
        Change::DeleteApp => return Err("an app deleted with other writes".into()),
        Change::PutApp(app) => {
            if app.meta.generation != a.app.meta.generation + 1 {
                return Err("an app put without a new generation".into());
            }
            a.app = (**app).clone();
            a.app.meta.revision = rev;
            "app".to_string()
        }
    })
}

/// What agents would do: bound replicas that wait start, and are ready at `now`.
pub fn start_bound(s: &mut Snapshot, now: u64, rev: &mut u64) {
    for a in s.apps.values_mut() {
        for v in &mut a.replicas {
            if v.value.node.is_some() && v.value.phase == ReplicaPhase::Pending {
                v.value.phase = ReplicaPhase::Running;
                v.value.started_ms = Some(now);
                v.value.ready = true;
                v.value.ready_ms = Some(now);
                *rev += 1;
                v.rev = *rev;
            }
        }
    }
}

/// An app as the apply would leave it: its spec and, for a new template, its revision record.
#[derive(Debug, Clone)]
pub struct Applied {
    pub spec: AppSpec,
    pub record: Option<RevisionRecord>,
}

/// Lays `apps` and `services` over `s` as the apply would store them.
pub fn overlay(s: &mut Snapshot, apps: &[Applied], services: &[Service], now: u64) {
    for a in apps {
        let name = a.spec.name.as_str().to_string();
        let state = s.apps.entry(name.clone()).or_insert_with(|| AppState {
            app: App {
                meta: ObjectMeta { name: name.clone(), generation: 0, revision: 0, created_ms: now, changed_by: None },
                spec: a.spec.clone(),
                cronjob: None,
            },
            replicas: Vec::new(),
            revisions: BTreeMap::new(),
            history: Vec::new(),
        });
        state.app.spec = a.spec.clone();
        state.app.meta.generation += 1;
        if let Some(record) = &a.record {
            if let Some(last) = state.history.last_mut().filter(|v| v.value.state == RolloutState::Progressing) {
                last.value.state = RolloutState::Superseded;
                last.value.finished_ms = Some(now);
            }
            state.history.push(Versioned { value: record.clone(), rev: s.revision });
        }
    }
    for svc in services {
        s.services.retain(|old| old.meta.name != svc.meta.name);
        s.services.push(svc.clone());
    }
}

/// Runs passes over `s` from `now` until nothing changes, and says per app of `apps` what was
/// created, replaced and removed. `revisions` names the new revision of an app, if any.
pub fn simulate(mut s: Snapshot, apps: &[(String, Option<&RevisionRecord>)], now: u64) -> Vec<AppPlanView> {
    let before: BTreeMap<String, Vec<(String, Option<String>)>> = apps
        .iter()
        .map(|(name, _)| {
            let old = s.apps.get(name).map(|a| &a.replicas[..]).unwrap_or_default();
            (name.clone(), old.iter().map(|v| (v.value.meta.name.clone(), v.value.node.clone())).collect())
        })
        .collect();
    // A step long enough for `min_ready` to pass between two passes.
    let step = s.apps.values().map(|a| a.app.spec.update.min_ready().as_millis() as u64).max().unwrap_or(0).max(1000);
    let mut rev = s.revision;
    let mut t = now;
    let mut problem = None;
    for _ in 0..MAX_PASSES {
        s.revision = rev;
        let p = plan(&s, t);
        let moved = p.apps.iter().any(|a| {
            a.changes
                .iter()
                .any(|c| matches!(c, Change::Create(_) | Change::Delete { .. } | Change::PutApp(_)) || updates_node(c))
        });
        if let Err(e) = commit(&mut s, &p, &mut rev) {
            problem = Some(e);
            break;
        }
        t += step;
        start_bound(&mut s, t, &mut rev);
        // Every board would confirm at once.
        s.drained = s
            .apps
            .values()
            .flat_map(|a| &a.replicas)
            .filter(|v| v.value.terminating_ms.is_some())
            .map(|v| v.value.meta.name.clone())
            .collect();
        if !moved && s.drained.is_empty() {
            break;
        }
    }
    apps.iter()
        .map(|(name, record)| {
            let state = s.apps.get(name);
            let after = state.map(|a| &a.replicas[..]).unwrap_or_default();
            let mut view = AppPlanView {
                app: name.clone(),
                revision: record.map(|r| r.number),
                cause: record.map(|r| r.cause.clone()),
                changes: changes(&before[name], after),
                outcome: outcome(state, problem.as_deref()),
            };
            view.changes.sort_by(|a, b| (a.node.as_deref(), a.action as u8).cmp(&(b.node.as_deref(), b.action as u8)));
            view
        })
        .collect()
}

/// An update that binds a replica (a placement) is movement too.
fn updates_node(c: &Change) -> bool {
    matches!(c, Change::Update { replica, .. } if replica.node.is_some() && replica.phase == ReplicaPhase::Pending)
}

/// Old replicas that are gone and new ones that are there; a new replica on the board an old one
/// left replaces it.
fn changes(
    before: &[(String, Option<String>)],
    after: &[Versioned<bramble_proto::model::Replica>],
) -> Vec<PlannedChange> {
    let kept: BTreeSet<&str> = after.iter().map(|v| v.value.meta.name.as_str()).collect();
    // Replicas that were there and placed: a Pending one that gets a board arrives like a new one.
    let known: BTreeSet<&str> = before.iter().filter(|(_, node)| node.is_some()).map(|(n, _)| n.as_str()).collect();
    let mut gone: Vec<(String, Option<String>)> =
        before.iter().filter(|(n, _)| !kept.contains(n.as_str())).cloned().collect();
    let mut out = Vec::new();
    let waiting: BTreeSet<&str> = before.iter().filter(|(_, node)| node.is_none()).map(|(n, _)| n.as_str()).collect();
    // What stays as it was (placed, or Pending already) is no change.
    let unchanged = |r: &bramble_proto::model::Replica| {
        known.contains(r.meta.name.as_str()) || (r.node.is_none() && waiting.contains(r.meta.name.as_str()))
    };
    for r in after.iter().map(|v| &v.value).filter(|r| !unchanged(r)) {
        let pending = (r.node.is_none()).then(|| r.reason.clone()).filter(|s| !s.is_empty());
        let pending = pending.or_else(|| r.node.is_none().then(|| "not placed yet".to_string()));
        match gone.iter().position(|(_, node)| node.is_some() && *node == r.node) {
            Some(i) => {
                let (old, node) = gone.remove(i);
                out.push(PlannedChange { action: PlannedAction::Replace, replica: Some(old), node, pending: None });
            }
            None => {
                out.push(PlannedChange { action: PlannedAction::Create, replica: None, node: r.node.clone(), pending })
            }
        }
    }
    out.extend(gone.into_iter().map(|(old, node)| PlannedChange {
        action: PlannedAction::Remove,
        replica: Some(old),
        node,
        pending: None,
    }));
    out
}

/// How the app's latest rollout would stand once the passes stop.
fn outcome(state: Option<&AppState>, problem: Option<&str>) -> String {
    if let Some(p) = problem {
        return format!("the plan could not be followed to its end: {p}");
    }
    let Some(a) = state else { return "the app would not exist".into() };
    let wanted = a.app.spec.replicas.0;
    let hash = revision_hash(&a.app.spec);
    let running =
        a.replicas.iter().filter(|v| v.value.revision_hash == hash && v.value.phase == ReplicaPhase::Running).count();
    let pending: Vec<&str> = a
        .replicas
        .iter()
        .filter(|v| v.value.node.is_none() && !v.value.reason.is_empty())
        .map(|v| v.value.reason.as_str())
        .collect();
    match a.history.last().map(|v| v.value.state) {
        _ if !pending.is_empty() => {
            let mut reasons: Vec<&str> = pending.clone();
            reasons.dedup();
            format!(
                "would stop with {running} of {wanted} replicas running the new template; {} would stay Pending: {}",
                pending.len(),
                reasons.join("; ")
            )
        }
        Some(RolloutState::Complete) | None if running as u32 >= wanted => {
            format!("complete: {running} of {wanted} replicas, if every new replica becomes ready")
        }
        Some(state) => format!("{state:?}: {running} of {wanted} replicas running the new template"),
        None => format!("{running} of {wanted} replicas"),
    }
}
