//! Each node's desired set (replica → assignment), and the message a session sends to bring a
//! board from what it was sent to what it must run: everything on a session's first message,
//! deltas after.

use super::plan::Kept;
use bramble_proto::wire::{Assignment, LeaderMsg};
use std::collections::{BTreeMap, HashMap};

/// Per node: the replicas it must run, by name.
pub type DesiredSets = HashMap<String, BTreeMap<String, Assignment>>;
/// One node's set.
pub type DesiredSet = BTreeMap<String, Assignment>;

/// The sets of `nodes` (each present, empty if it runs nothing) from the replicas that exist.
pub fn sets<'a>(nodes: impl IntoIterator<Item = &'a str>, kept: impl IntoIterator<Item = &'a Kept>) -> DesiredSets {
    let mut sets: DesiredSets = nodes.into_iter().map(|n| (n.to_string(), BTreeMap::new())).collect();
    for k in kept {
        let Some(node) = &k.replica.node else { continue };
        let a = Assignment {
            replica: k.replica.meta.name.clone(),
            app: k.replica.app.clone(),
            revision: k.replica.revision_hash.clone(),
            spec: k.spec.clone(),
        };
        sets.entry(node.clone()).or_default().insert(a.replica.clone(), a);
    }
    sets
}

/// What to send a board that was last sent `sent` (`None`: nothing yet this session) so that
/// it runs `now`; `None` when nothing changed.
pub fn delta(sent: Option<&DesiredSet>, now: &DesiredSet) -> Option<LeaderMsg> {
    let Some(before) = sent else {
        return Some(LeaderMsg::Desired { full: true, upsert: now.values().cloned().collect(), remove: Vec::new() });
    };
    let upsert: Vec<Assignment> =
        now.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(_, v)| v.clone()).collect();
    let remove: Vec<String> = before.keys().filter(|k| !now.contains_key(*k)).cloned().collect();
    (!upsert.is_empty() || !remove.is_empty()).then_some(LeaderMsg::Desired { full: false, upsert, remove })
}
