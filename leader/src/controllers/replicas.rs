//! The replica controller's decision: how many replicas an app has, which to create, which to
//! delete — Lost ones are replaced (after the app's `replace_after`, if set), extras go
//! unscheduled first, then those on unhealthy nodes, then the newest.

use super::rollout::available;
use bramble_proto::manifest::AppSpec;
use bramble_proto::model::{Replica, ReplicaPhase};
use sha2::{Digest, Sha256};

/// The revision of an app's pod template: everything but the replica count, the update strategy
/// and the node-loss hold-off (changing those restarts nothing). Replicas of one revision are
/// interchangeable; a rolling update moves them to the next.
pub fn revision_hash(spec: &AppSpec) -> String {
    let mut v = serde_json::to_value(spec).expect("spec serialises");
    if let Some(o) = v.as_object_mut() {
        for k in [
            "replicas",
            "update",
            "replace_after",
            "autoscale",
            "labels",
            "min_available",
            "after",
            "completions",
            "parallelism",
            "backoff_limit",
            "active_deadline",
            "ttl_after_finished",
        ] {
            o.remove(k);
        }
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
        // Pinned by its local volumes: it waits for its node, unless the node was deleted.
        ReplicaPhase::Lost if spec.pinned() && !r.reason.contains(super::plan::NODE_DELETED) => true,
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
        (_, ReplicaPhase::Lost | ReplicaPhase::Failed | ReplicaPhase::BackOff) => 1,
        (_, ReplicaPhase::Pending | ReplicaPhase::Pulling | ReplicaPhase::Starting) => 2,
        _ => 3,
    };
    (rank, std::cmp::Reverse(r.meta.created_ms))
}

/// The `n` replicas a scale-down removes: unscheduled, then unhealthy, then starting ones; among
/// equals, one from the node that holds the most of them (so the spread survives, as Kubernetes
/// ranks co-located pods first), then the newest.
fn scale_down<'a>(replicas: &[&'a Replica], n: usize) -> Vec<&'a Replica> {
    let mut per_node: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for r in replicas {
        if let Some(node) = r.node.as_deref() {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let mut left: Vec<&Replica> = replicas.to_vec();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.min(left.len()) {
        let key = |r: &Replica| {
            let (rank, newest) = deletion_rank(r);
            let crowd = r.node.as_deref().map_or(0, |n| per_node[n]);
            (rank, std::cmp::Reverse(crowd), newest, r.meta.name.clone())
        };
        let (i, _) = left.iter().enumerate().min_by_key(|(_, r)| key(r)).expect("one left");
        let r = left.swap_remove(i);
        if let Some(node) = r.node.as_deref() {
            *per_node.get_mut(node).expect("counted") -= 1;
        }
        out.push(r);
    }
    out
}

/// Characters of name suffixes: no vowels (no words) and no look-alikes, as Kubernetes does.
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A name for a new replica: `<app>-<revision>-<5 characters>`. Names are never reused, because a
/// board that was cut off fences its copies by name: the suffix comes from `salt` (unique per
/// pass: the store revision and the time) and a counter, and skips names in `taken`.
pub fn fresh_name(app: &str, revision: &str, salt: u64, taken: &dyn Fn(&str) -> bool) -> String {
    (0u64..)
        .map(|i| {
            let digest = Sha256::digest(format!("{app}/{revision}/{salt}/{i}"));
            let suffix: String =
                digest.iter().take(5).map(|b| SUFFIX_ALPHABET[*b as usize % SUFFIX_ALPHABET.len()] as char).collect();
            format!("{app}-{revision}-{suffix}")
        })
        .find(|n| !taken(n))
        .expect("an unbounded search ends")
}

/// What to do so that `app` has `spec.replicas` replicas of the current revision. Replicas of an
/// older revision are replaced as a rolling update: at most `max_surge` above the count, and at
/// most `max_unavailable` below it in available replicas (ready, for `min_ready`). A `frozen`
/// rollout (it failed, and holds where it is) neither adds nor removes. New names come from
/// `salt`.
pub fn reconcile(app: &str, spec: &AppSpec, replicas: &[Replica], now_ms: u64, salt: u64, frozen: bool) -> Vec<Action> {
    let revision = revision_hash(spec);
    let mut actions = Vec::new();
    // Lost replicas past their hold-off are replaced: delete the record (the agent fences by
    // name, so a board that returns stops its copy).
    for r in replicas.iter().filter(|r| r.phase == ReplicaPhase::Lost && !counts(r, spec, now_ms)) {
        actions.push(Action::Delete { name: r.meta.name.clone(), reason: "its node was lost" });
    }
    let live: Vec<&Replica> = replicas.iter().filter(|r| counts(r, spec, now_ms)).collect();
    let (current, mut old): (Vec<&Replica>, Vec<&Replica>) = live.iter().partition(|r| r.revision_hash == revision);
    let want = spec.replicas.0 as usize;
    let mut creates = 0;
    if old.is_empty() {
        if current.len() > want {
            for r in scale_down(&current, current.len() - want) {
                actions.push(Action::Delete { name: r.meta.name.clone(), reason: "scaled down" });
            }
        } else {
            creates = want - current.len();
        }
    } else if !frozen {
        // A rolling update: new replicas first (within the surge), old ones go as new ones are
        // available.
        let max_total = want + spec.update.max_surge.0 as usize;
        creates = want.saturating_sub(current.len()).min(max_total.saturating_sub(live.len()));
        let min_available = want.saturating_sub(spec.update.max_unavailable.0 as usize);
        let mut up = live.iter().filter(|r| available(r, spec, now_ms)).count();
        // Old replicas that serve nobody go at once; those that serve go while enough others
        // are available. Among equals, first from the node holding the most of the app (where a
        // new one just started), so the update ends as spread as it began.
        let mut per_node: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for node in live.iter().filter_map(|r| r.node.as_deref()) {
            *per_node.entry(node).or_default() += 1;
        }
        let crowd = |r: &Replica| r.node.as_deref().map_or(0, |n| per_node[n]);
        old.sort_by_key(|r| {
            let (rank, newest) = deletion_rank(r);
            (rank, std::cmp::Reverse(crowd(r)), newest, r.meta.name.clone())
        });
        for r in &old {
            let is_up = available(r, spec, now_ms);
            if !r.serving() || up > min_available {
                actions.push(Action::Delete { name: r.meta.name.clone(), reason: "replaced by a new revision" });
                if is_up {
                    up -= 1;
                }
            }
        }
    }
    let mut taken: std::collections::BTreeSet<String> = replicas.iter().map(|r| r.meta.name.clone()).collect();
    for _ in 0..creates {
        let name = fresh_name(app, &revision, salt, &|n| taken.contains(n));
        taken.insert(name.clone());
        actions.push(Action::Create { name, revision: revision.clone() });
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_proto::manifest::parse_manifest;
    use std::collections::BTreeSet;

    fn spec(extra: &str) -> AppSpec {
        parse_manifest("t.toml", &format!("[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\n{extra}"))
            .unwrap()
            .apps
            .remove(0)
    }

    fn replica(name: &str, node: Option<&str>, phase: ReplicaPhase, created: u64) -> Replica {
        replica_of(&revision_hash(&spec("")), name, node, phase, created)
    }

    fn replica_of(rev: &str, name: &str, node: Option<&str>, phase: ReplicaPhase, created: u64) -> Replica {
        Replica {
            node: node.map(str::to_string),
            phase,
            ready: phase == ReplicaPhase::Running,
            finished_ms: Some(1000),
            ..Replica::new("web", name, rev, created)
        }
    }

    #[test]
    fn the_revision_ignores_the_replica_count_only() {
        assert_eq!(revision_hash(&spec("replicas = 2")), revision_hash(&spec("replicas = 5")));
        assert_eq!(
            revision_hash(&spec("")),
            revision_hash(&spec("labels = { tier = \"web\" }")),
            "labels roll nothing"
        );
        assert_ne!(revision_hash(&spec("")), revision_hash(&spec("devices = [\"i2c\"]")));
        assert_ne!(revision_hash(&spec("")), revision_hash(&spec("args = [\"-v\"]")));
        assert_eq!(revision_hash(&spec("")).len(), 10);
    }

    #[test]
    fn creates_up_to_the_count_with_fresh_names() {
        let s = spec("replicas = 3");
        let rev = revision_hash(&s);
        let taken = fresh_name("web", &rev, 7, &|_| false);
        let existing = [replica(&taken, Some("a"), ReplicaPhase::Running, 1)];
        let names: Vec<String> = reconcile("web", &s, &existing, 0, 7, false)
            .into_iter()
            .map(|a| match a {
                Action::Create { name, revision } if revision == rev => name,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names.len(), 2);
        for n in &names {
            assert!(n.starts_with(&format!("web-{rev}-")) && n.len() == "web-".len() + 10 + 6, "{n}");
            assert_ne!(n, &taken, "a name in use is skipped");
        }
        assert_ne!(names[0], names[1]);
        assert!(reconcile("web", &s, &[], 0, 7, false).len() == 3);
        // Another pass (another salt) never comes back to a name by its index.
        let later: BTreeSet<String> = (0..1000).map(|salt| fresh_name("web", &rev, salt, &|_| false)).collect();
        assert_eq!(later.len(), 1000, "a thousand passes, a thousand names");
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
        let deleted: Vec<String> = reconcile("web", &s, &existing, 0, 0, false)
            .into_iter()
            .map(|a| match a {
                Action::Delete { name, .. } => name,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(deleted, ["r-pending", "r-failed", "r-new"]);
    }

    #[test]
    fn scaling_down_keeps_the_spread() {
        // Six replicas made in one pass (equal ages), two per node, plus three newer ones: down to
        // two leaves two nodes with one each, whatever the names.
        let mut existing = Vec::new();
        for (i, node) in ["a", "b", "c", "a", "b", "c"].iter().enumerate() {
            existing.push(replica(&format!("r-{}", (b'z' - i as u8) as char), Some(node), ReplicaPhase::Running, 1));
        }
        for node in ["a", "b", "c"] {
            existing.push(replica(&format!("r-new-{node}"), Some(node), ReplicaPhase::Running, 9));
        }
        let s = spec("replicas = 2");
        let deleted: BTreeSet<String> = reconcile("web", &s, &existing, 0, 0, false)
            .into_iter()
            .map(|a| match a {
                Action::Delete { name, .. } => name,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(deleted.len(), 7);
        let kept: Vec<&str> =
            existing.iter().filter(|r| !deleted.contains(&r.meta.name)).map(|r| r.node.as_deref().unwrap()).collect();
        assert_eq!(kept.iter().collect::<BTreeSet<_>>().len(), 2, "two nodes keep one each: {kept:?}");
        assert!(deleted.contains("r-new-a") && deleted.contains("r-new-b"), "the newest go among equals");
    }

    /// Running and ready.
    fn up(r: &mut Replica) {
        r.phase = ReplicaPhase::Running;
        r.ready = true;
    }

    /// Applies the actions the way the controller does; new replicas start Pending.
    fn step(s: &AppSpec, rs: &mut Vec<Replica>, now: u64) -> Vec<Action> {
        let actions = reconcile("web", s, rs, now, now, false);
        for a in &actions {
            match a {
                Action::Delete { name, .. } => rs.retain(|r| &r.meta.name != name),
                Action::Create { name, revision } => {
                    rs.push(replica_of(revision, name, Some("a"), ReplicaPhase::Pending, now))
                }
            }
        }
        actions
    }

    #[test]
    fn a_new_revision_rolls_within_surge_and_unavailability() {
        let v1 = spec("replicas = 3");
        let mut rs = Vec::new();
        step(&v1, &mut rs, 0);
        rs.iter_mut().for_each(up);
        let v2 = spec("replicas = 3\nargs = [\"-v\"]");
        let new_rev = revision_hash(&v2);
        for round in 1..=10 {
            step(&v2, &mut rs, round);
            let ready = rs.iter().filter(|r| r.serving()).count();
            assert!(rs.len() <= 4, "at most one above the count (max_surge 1): {}", rs.len());
            assert!(ready >= 3 || rs.iter().all(|r| r.revision_hash == new_rev), "never below 3 ready");
            rs.iter_mut().for_each(up);
        }
        assert_eq!(rs.len(), 3);
        assert!(rs.iter().all(|r| r.revision_hash == new_rev), "all replaced");
        assert!(step(&v2, &mut rs, 11).is_empty(), "and then steady");
        // Old replicas that are not running go at once.
        let mut rs: Vec<Replica> =
            (0..3).map(|i| replica_of("old", &format!("o{i}"), Some("a"), ReplicaPhase::Failed, 1)).collect();
        let deleted = step(&v2, &mut rs, 1).iter().filter(|a| matches!(a, Action::Delete { .. })).count();
        assert_eq!(deleted, 3, "crash-looping old replicas do not hold the rollout");
    }

    #[test]
    fn lost_replicas_are_replaced_after_the_hold_off() {
        let existing =
            [replica("r1", Some("a"), ReplicaPhase::Running, 1), replica("r2", Some("gone"), ReplicaPhase::Lost, 1)];
        let s = spec("replicas = 2");
        let actions = reconcile("web", &s, &existing, 2000, 0, false);
        assert!(actions.contains(&Action::Delete { name: "r2".into(), reason: "its node was lost" }));
        assert_eq!(actions.iter().filter(|a| matches!(a, Action::Create { .. })).count(), 1, "a replacement");
        let held = spec("replicas = 2\nreplace_after = \"30s\"");
        let rev = revision_hash(&held);
        assert_eq!(rev, revision_hash(&s), "the hold-off is not part of the template");
        let existing = [
            replica_of(&rev, "r1", Some("a"), ReplicaPhase::Running, 1),
            replica_of(&rev, "r2", Some("gone"), ReplicaPhase::Lost, 1),
        ];
        assert!(reconcile("web", &held, &existing, 2000, 0, false).is_empty(), "held while the board may come back");
        assert_eq!(reconcile("web", &held, &existing, 31_001, 0, false).len(), 2, "then replaced");
    }

    #[test]
    fn replicas_pinned_by_local_volumes_wait_for_their_node_unless_it_was_deleted() {
        let vol = "[[app.volumes]]\ntype = \"local\"\nname = \"d\"\npath = \"/d\"\n";
        let pinned = spec(&format!("replicas = 2\n{vol}"));
        let rev = revision_hash(&pinned);
        let mut lost = replica_of(&rev, "r2", Some("gone"), ReplicaPhase::Lost, 1);
        lost.reason = "node gone is not ready; it waits for its node".into();
        let existing = [replica_of(&rev, "r1", Some("a"), ReplicaPhase::Running, 1), lost.clone()];
        assert!(reconcile("web", &pinned, &existing, 10_000_000, 0, false).is_empty(), "it waits");
        lost.reason = format!("node gone {}", super::super::plan::NODE_DELETED);
        let existing = [replica_of(&rev, "r1", Some("a"), ReplicaPhase::Running, 1), lost];
        assert_eq!(
            reconcile("web", &pinned, &existing, 10_000_000, 0, false).len(),
            2,
            "replaced: its volume went too"
        );
        let moving = spec(&format!("replicas = 2\nplacement = {{ may_move = true }}\n{vol}"));
        let rev = revision_hash(&moving);
        let existing = [
            replica_of(&rev, "r1", Some("a"), ReplicaPhase::Running, 1),
            replica_of(&rev, "r2", Some("gone"), ReplicaPhase::Lost, 1),
        ];
        assert_eq!(reconcile("web", &moving, &existing, 10_000_000, 0, false).len(), 2, "may_move: replaced");
    }
}
