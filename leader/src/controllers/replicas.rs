//! The replica controller's decision: how many replicas an app has, which to create, which to
//! delete — Lost ones are replaced (after the app's `replace_after`, if set), extras go
//! unscheduled first, then those on unhealthy nodes, then the newest.

use bramble_proto::manifest::AppSpec;
use bramble_proto::model::{Replica, ReplicaPhase};
use sha2::{Digest, Sha256};

/// The revision of an app's pod template: everything but the replica count. Replicas of one
/// revision are interchangeable; a rolling update moves them to the next.
pub fn revision_hash(spec: &AppSpec) -> String {
    let mut v = serde_json::to_value(spec).expect("spec serialises");
    if let Some(o) = v.as_object_mut() {
        o.remove("replicas");
    }
    let digest = Sha256::digest(serde_json::to_vec(&v).expect("json"));
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create { name: String, revision: String },
    Delete { name: String, reason: &'static str },
}

/// Whether a replica still counts toward the app's replicas at `now_ms`.
fn counts(r: &Replica, spec: &AppSpec, now_ms: u64) -> bool {
    match r.phase {
        ReplicaPhase::Lost => {
            // Held for boards that drop briefly: not replaced until the hold-off passes.
            let hold = spec.replace_after.map_or(0, |d| d.0.as_millis() as u64);
            let since = r.finished_ms.unwrap_or(0);
            now_ms < since + hold
        }
        ReplicaPhase::Succeeded => false,
        _ => true,
    }
}

/// Lower sorts first for deletion.
fn deletion_rank(r: &Replica) -> (u8, std::cmp::Reverse<u64>) {
    let rank = match (r.node.is_none(), r.phase) {
        (true, _) => 0,
        (_, ReplicaPhase::Lost | ReplicaPhase::Failed) => 1,
        (_, ReplicaPhase::Pending | ReplicaPhase::Pulling | ReplicaPhase::Starting) => 2,
        _ => 3,
    };
    (rank, std::cmp::Reverse(r.meta.created_ms))
}

/// What to do so that `app` has `spec.replicas` replicas, given its current `replicas`.
pub fn reconcile(app: &str, spec: &AppSpec, replicas: &[Replica], now_ms: u64) -> Vec<Action> {
    let revision = revision_hash(spec);
    let mut actions = Vec::new();
    // Lost replicas past their hold-off are replaced: delete the record (the agent fences by
    // name, so a board that returns stops its copy).
    for r in replicas.iter().filter(|r| r.phase == ReplicaPhase::Lost && !counts(r, spec, now_ms)) {
        actions.push(Action::Delete { name: r.meta.name.clone(), reason: "its node was lost" });
    }
    let mut live: Vec<&Replica> = replicas.iter().filter(|r| counts(r, spec, now_ms)).collect();
    let want = spec.replicas.0 as usize;
    if live.len() > want {
        live.sort_by_key(|r| deletion_rank(r));
        for r in &live[..live.len() - want] {
            actions.push(Action::Delete { name: r.meta.name.clone(), reason: "scaled down" });
        }
    } else {
        let taken: std::collections::BTreeSet<&str> = replicas.iter().map(|r| r.meta.name.as_str()).collect();
        let mut i = 0;
        for _ in live.len()..want {
            let name = loop {
                let n = format!("{app}-{revision}-{i}");
                i += 1;
                if !taken.contains(n.as_str()) {
                    break n;
                }
            };
            actions.push(Action::Create { name, revision: revision.clone() });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_proto::manifest::parse_manifest;
    use bramble_proto::model::ObjectMeta;

    fn spec(extra: &str) -> AppSpec {
        parse_manifest("t.toml", &format!("[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\n{extra}"))
            .unwrap()
            .apps
            .remove(0)
    }

    fn replica(name: &str, node: Option<&str>, phase: ReplicaPhase, created: u64) -> Replica {
        Replica {
            meta: ObjectMeta { name: name.into(), generation: 1, revision: 0, created_ms: created },
            app: "web".into(),
            revision_hash: "x".into(),
            node: node.map(str::to_string),
            phase,
            reason: String::new(),
            restarts: 0,
            exit_code: None,
            started_ms: None,
            finished_ms: Some(1000),
            container_id: None,
            ip: None,
        }
    }

    #[test]
    fn the_revision_ignores_the_replica_count_only() {
        assert_eq!(revision_hash(&spec("replicas = 2")), revision_hash(&spec("replicas = 5")));
        assert_ne!(revision_hash(&spec("")), revision_hash(&spec("args = [\"-v\"]")));
        assert_eq!(revision_hash(&spec("")).len(), 10);
    }

    #[test]
    fn creates_up_to_the_count_with_fresh_names() {
        let s = spec("replicas = 3");
        let rev = revision_hash(&s);
        let existing = [replica(&format!("web-{rev}-0"), Some("a"), ReplicaPhase::Running, 1)];
        let actions = reconcile("web", &s, &existing, 0);
        assert_eq!(
            actions,
            [
                Action::Create { name: format!("web-{rev}-1"), revision: rev.clone() },
                Action::Create { name: format!("web-{rev}-2"), revision: rev }
            ]
        );
        assert!(reconcile("web", &s, &[], 0).len() == 3);
    }

    #[test]
    fn scales_down_unscheduled_first_then_unhealthy_then_newest() {
        let s = spec("replicas = 1");
        let existing = [
            replica("r-old", Some("a"), ReplicaPhase::Running, 1),
            replica("r-new", Some("b"), ReplicaPhase::Running, 9),
            replica("r-pending", None, ReplicaPhase::Pending, 5),
            replica("r-failed", Some("c"), ReplicaPhase::Failed, 2),
        ];
        let deleted: Vec<String> = reconcile("web", &s, &existing, 0)
            .into_iter()
            .map(|a| match a {
                Action::Delete { name, .. } => name,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(deleted, ["r-pending", "r-failed", "r-new"]);
    }

    #[test]
    fn lost_replicas_are_replaced_after_the_hold_off() {
        let existing =
            [replica("r1", Some("a"), ReplicaPhase::Running, 1), replica("r2", Some("gone"), ReplicaPhase::Lost, 1)];
        let s = spec("replicas = 2");
        let actions = reconcile("web", &s, &existing, 2000);
        assert!(actions.contains(&Action::Delete { name: "r2".into(), reason: "its node was lost" }));
        assert_eq!(actions.iter().filter(|a| matches!(a, Action::Create { .. })).count(), 1, "a replacement");
        let held = spec("replicas = 2\nreplace_after = \"30s\"");
        assert!(reconcile("web", &held, &existing, 2000).is_empty(), "held while the board may come back");
        assert_eq!(reconcile("web", &held, &existing, 31_001).len(), 2, "then replaced");
    }
}
