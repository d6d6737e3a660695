//! Rollouts, pure: each new pod template of an app is a numbered revision record (the last ten
//! are kept), and the planner follows the latest one — Complete once every replica runs it and is
//! available, Failed when it made no progress for `progress_deadline`, and then (by default)
//! RolledBack: the app goes back to the last revision that completed, as a new revision.

use super::replicas::revision_hash;
use crate::objects::{Objects, Versioned};
use crate::store::{Expect, TxnOp};
use bramble_proto::manifest::AppSpec;
use bramble_proto::model::{Replica, ReplicaPhase, RevisionRecord, RolloutState};

/// Revision records kept per app.
pub const KEEP: usize = 10;

/// Whether `r` counts as available: serving, and ready for at least the app's `min_ready`.
pub fn available(r: &Replica, spec: &AppSpec, now_ms: u64) -> bool {
    let min = spec.update.min_ready().as_millis() as u64;
    r.serving() && r.ready_ms.is_none_or(|at| now_ms.saturating_sub(at) >= min)
}

/// `from`'s pod template with `current`'s count, update strategy and node-loss hold-off (what
/// an undo or a rollback changes is the template, not how many or how).
pub fn with_template(current: &AppSpec, from: &AppSpec) -> AppSpec {
    AppSpec {
        replicas: current.replicas,
        update: current.update,
        replace_after: current.replace_after,
        labels: current.labels.clone(),
        ..from.clone()
    }
}

/// A new revision's record; `old` is how many replicas of other revisions the app has (the
/// rollout progresses as they go).
pub fn new_record(app: &str, number: u64, spec: &AppSpec, cause: &str, old: u32, now_ms: u64) -> RevisionRecord {
    RevisionRecord {
        app: app.to_string(),
        number,
        hash: revision_hash(spec),
        spec: spec.clone(),
        created_ms: now_ms,
        cause: cause.to_string(),
        state: RolloutState::Progressing,
        progress_ms: now_ms,
        finished_ms: None,
        message: String::new(),
        available: 0,
        old,
    }
}

/// Replicas of `app` that do not run `hash` (what a rollout to `hash` has to replace).
pub fn old_replicas(replicas: &[Replica], hash: &str) -> u32 {
    replicas.iter().filter(|r| r.revision_hash != hash && r.phase != ReplicaPhase::Succeeded).count() as u32
}

/// The writes of a new revision of `app`: its record, and the latest one marked Superseded if it
/// was still going (the planner drops records beyond [`KEEP`]). Returns the new record too.
pub fn new_revision(
    app: &str,
    history: &[Versioned<RevisionRecord>],
    spec: &AppSpec,
    cause: &str,
    replicas: &[Replica],
    now_ms: u64,
) -> (RevisionRecord, Vec<TxnOp>) {
    let number = history.last().map_or(1, |v| v.value.number + 1);
    let old = old_replicas(replicas, &revision_hash(spec));
    let record = new_record(app, number, spec, cause, old, now_ms);
    let mut ops = vec![Objects::put_history_op(&record, Expect::Absent)];
    if let Some(last) = history.last().filter(|v| v.value.state == RolloutState::Progressing) {
        let mut old = last.value.clone();
        old.state = RolloutState::Superseded;
        old.finished_ms = Some(now_ms);
        old.message = format!("revision {number} was applied before it completed");
        ops.push(Objects::put_history_op(&old, Expect::Revision(last.rev)));
    }
    (record, ops)
}

/// What the latest rollout comes to after a pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Unchanged,
    /// Progress, completion or failure, recorded.
    Update(Box<RevisionRecord>),
    /// It failed and the app goes back: the failed record, the app's new spec, and its record.
    Rollback {
        failed: Box<RevisionRecord>,
        spec: Box<AppSpec>,
        record: Box<RevisionRecord>,
    },
}

/// How the latest rollout of an app with `spec` stands, with `replicas` as this pass leaves them.
pub fn evaluate(spec: &AppSpec, history: &[RevisionRecord], replicas: &[Replica], now_ms: u64) -> Step {
    let Some(latest) = history.last() else { return Step::Unchanged };
    if latest.state != RolloutState::Progressing || latest.hash != revision_hash(spec) {
        return Step::Unchanged;
    }
    let want = spec.replicas.0;
    let live: Vec<&Replica> = replicas.iter().filter(|r| r.phase != ReplicaPhase::Succeeded).collect();
    let available = live.iter().filter(|r| r.revision_hash == latest.hash && available(r, spec, now_ms)).count() as u32;
    let old = live.iter().filter(|r| r.revision_hash != latest.hash).count() as u32;
    let mut r = latest.clone();
    if available >= want && old == 0 {
        r.state = RolloutState::Complete;
        r.finished_ms = Some(now_ms);
        r.available = available;
        r.old = 0;
        r.message = format!("{available} of {want} replicas available");
        return Step::Update(Box::new(r));
    }
    if available > r.available || old < r.old {
        r.available = available;
        r.old = old;
        r.progress_ms = now_ms;
        r.message = format!("{available} of {want} updated replicas available, {old} old left");
        return Step::Update(Box::new(r));
    }
    // What holds it up, when a new replica cannot be placed (said once, as it changes).
    let stuck = live
        .iter()
        .find(|x| x.revision_hash == latest.hash && x.node.is_none() && !x.reason.is_empty())
        .map(|x| format!("a new replica is Pending: {}", x.reason));
    let deadline = spec.update.progress_deadline().as_millis() as u64;
    if now_ms.saturating_sub(r.progress_ms) <= deadline {
        let waiting = match &stuck {
            Some(s) => format!("{available} of {want} updated replicas available, {old} old left; {s}"),
            None => return Step::Unchanged,
        };
        if r.message == waiting {
            return Step::Unchanged;
        }
        r.message = waiting;
        return Step::Update(Box::new(r));
    }
    let why = format!(
        "no progress for {} ({available} of {want} updated replicas available, {old} old left{})",
        bramble_proto::quantity::HumanDuration(spec.update.progress_deadline()),
        stuck.map(|s| format!("; {s}")).unwrap_or_default()
    );
    r.finished_ms = Some(now_ms);
    // Back to the last revision that completed, with another template.
    let back = history.iter().rev().find(|h| h.state == RolloutState::Complete && h.hash != latest.hash);
    match back {
        Some(good) if spec.update.auto_rollback() => {
            r.state = RolloutState::RolledBack;
            r.message = format!("{why}; rolled back to revision {}", good.number);
            let to = with_template(spec, &good.spec);
            let cause = format!("rollback of revision {} to revision {}", latest.number, good.number);
            let old = old_replicas(replicas, &revision_hash(&to));
            let record = new_record(spec.name.as_str(), latest.number + 1, &to, &cause, old, now_ms);
            Step::Rollback { failed: Box::new(r), spec: Box::new(to), record: Box::new(record) }
        }
        _ => {
            r.state = RolloutState::Failed;
            r.message = if spec.update.auto_rollback() {
                format!("{why}; no earlier revision completed to go back to")
            } else {
                format!("{why}; held where it is (auto_rollback = false)")
            };
            Step::Update(Box::new(r))
        }
    }
}

#[cfg(test)]
mod tests;
