//! Draining: a replica being stopped (scaled down, replaced by a rollout, deleted) first leaves
//! every service, and is stopped only once every connected board has applied the network view
//! without it — or after [`DRAIN_TIMEOUT_MS`], whichever comes first. Boards say which view they
//! applied (`AgentMsg::NetworkApplied`, after their nft sync); the controller notes which view
//! first left each replica out. In memory only: after a leader restart the bound applies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

/// The longest a replica waits for the boards before it is stopped anyway.
pub const DRAIN_TIMEOUT_MS: u64 = 2_000;

#[derive(Debug, Default)]
pub struct Drain {
    inner: Mutex<Inner>,
    /// Boards being drained (`bramble drain`), and how each drain stood at the last pass.
    boards: Mutex<BTreeMap<String, super::plan::DrainStatus>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Terminating replica → the first network view version published without it.
    excluded_at: HashMap<String, u64>,
    /// Node → the latest network view version its board has applied.
    applied: HashMap<String, u64>,
}

impl Drain {
    /// The network view `version` was published; `terminating` are the replicas being drained
    /// (none of them is an endpoint in it).
    pub fn published<'a>(&self, version: u64, terminating: impl Iterator<Item = &'a str>) {
        let mut g = self.inner.lock().expect("drain lock");
        let now: BTreeSet<&str> = terminating.collect();
        g.excluded_at.retain(|r, _| now.contains(r.as_str()));
        for r in now {
            g.excluded_at.entry(r.to_string()).or_insert(version);
        }
    }

    /// Node `node`'s board applied the network view `version`.
    pub fn applied(&self, node: &str, version: u64) {
        let mut g = self.inner.lock().expect("drain lock");
        let v = g.applied.entry(node.to_string()).or_default();
        *v = (*v).max(version);
    }

    /// A node's session ended: what it applied is forgotten (a new session starts over).
    pub fn forget_node(&self, node: &str) {
        self.inner.lock().expect("drain lock").applied.remove(node);
    }

    /// How the drains stand after a pass; returns those that changed since the last one.
    pub fn boards(&self, now: BTreeMap<String, super::plan::DrainStatus>) -> Vec<(String, super::plan::DrainStatus)> {
        let mut g = self.boards.lock().expect("drain lock");
        let changed = now.iter().filter(|(b, s)| g.get(*b) != Some(*s)).map(|(b, s)| (b.clone(), s.clone())).collect();
        *g = now;
        changed
    }

    /// How the drain of `board` stood at the last pass (none: not being drained, or not yet seen).
    pub fn board(&self, board: &str) -> Option<super::plan::DrainStatus> {
        self.boards.lock().expect("drain lock").get(board).cloned()
    }

    /// The terminating replicas that every board in `connected` has stopped sending to.
    pub fn drained<'a>(&self, connected: impl Iterator<Item = &'a str> + Clone) -> BTreeSet<String> {
        let g = self.inner.lock().expect("drain lock");
        g.excluded_at
            .iter()
            .filter(|(_, v)| connected.clone().all(|n| g.applied.get(n).is_some_and(|a| a >= *v)))
            .map(|(r, _)| r.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_drained_once_every_connected_board_applied_a_view_without_it() {
        let d = Drain::default();
        d.published(7, ["web-a"].into_iter());
        d.published(8, ["web-a", "web-b"].into_iter());
        let nodes = ["pi-1", "pi-2"];
        assert!(d.drained(nodes.iter().copied()).is_empty(), "nobody applied anything yet");
        d.applied("pi-1", 7);
        assert!(d.drained(nodes.iter().copied()).is_empty(), "pi-2 has not");
        d.applied("pi-2", 8);
        assert_eq!(d.drained(nodes.iter().copied()), BTreeSet::from(["web-a".to_string()]), "web-b needs pi-1 at 8");
        d.applied("pi-1", 8);
        assert_eq!(d.drained(nodes.iter().copied()).len(), 2);
        d.applied("pi-1", 3);
        assert_eq!(d.drained(nodes.iter().copied()).len(), 2, "an old ack never goes back");
        d.published(9, ["web-b"].into_iter());
        assert_eq!(d.drained(nodes.iter().copied()), BTreeSet::from(["web-b".to_string()]), "web-a is gone");
        d.forget_node("pi-2");
        assert!(d.drained(nodes.iter().copied()).is_empty(), "a reconnected board starts over");
        assert_eq!(d.drained(["pi-1"].into_iter()).len(), 1, "a board without a session is not waited for");
    }
}
