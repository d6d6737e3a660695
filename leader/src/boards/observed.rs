//! What the leader learns from boards and keeps in memory only (relearned after a restart):
//! live detail per replica (pull progress, probe results) and the images and local volumes each board holds. Controllers read it;
//! sessions write it. (What an image offers is stored: see `objects::ImagePlatforms`.)

use bramble_proto::wire::ProbeStatus;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Image references a board may report, and their longest accepted form.
const MAX_IMAGES: usize = 4096;
const MAX_REFERENCE: usize = 512;

#[derive(Debug, Default)]
pub struct Observed {
    details: Mutex<HashMap<String, String>>,
    probes: Mutex<HashMap<String, Vec<ProbeStatus>>>,
    node_images: Mutex<HashMap<String, BTreeSet<String>>>,
    node_volumes: Mutex<HashMap<String, BTreeSet<String>>>,
    /// How many times a board's images or volumes changed (the replica controller skips passes
    /// while this, readiness and the store stay the same over a settled cluster).
    changes: AtomicU64,
}

impl Observed {
    pub fn new() -> Observed {
        Observed::default()
    }

    pub fn detail(&self, replica: &str) -> Option<String> {
        self.details.lock().expect("details lock").get(replica).cloned()
    }

    pub fn set_detail(&self, replica: &str, detail: Option<String>) {
        let mut d = self.details.lock().expect("details lock");
        match detail {
            Some(text) => d.insert(replica.to_string(), text),
            None => d.remove(replica),
        };
    }

    pub fn probes(&self, replica: &str) -> Vec<ProbeStatus> {
        self.probes.lock().expect("probes lock").get(replica).cloned().unwrap_or_default()
    }

    pub fn set_probes(&self, replica: &str, probes: Vec<ProbeStatus>) {
        let mut p = self.probes.lock().expect("probes lock");
        if probes.is_empty() {
            p.remove(replica);
        } else {
            p.insert(replica.to_string(), probes);
        }
    }

    /// Forgets the detail and probe results of replicas `keep` rejects.
    pub fn retain_details(&self, keep: impl Fn(&str) -> bool) {
        self.probes.lock().expect("probes lock").retain(|k, _| keep(k));
        self.details.lock().expect("details lock").retain(|k, _| keep(k));
    }

    /// Records the images `node` holds (bounded: a hint for scoring, nothing more).
    pub fn set_node_images(&self, node: &str, images: Vec<String>) {
        self.record(&self.node_images, node, images);
    }

    pub fn node_images(&self, node: &str) -> BTreeSet<String> {
        self.node_images.lock().expect("images lock").get(node).cloned().unwrap_or_default()
    }

    /// Records the local volumes `node` holds (bounded like images; where pinned apps return).
    pub fn set_node_volumes(&self, node: &str, volumes: Vec<String>) {
        self.record(&self.node_volumes, node, volumes);
    }

    /// Replaces `node`'s set in `map` (bounded) and counts a change in [`Self::board_changes`];
    /// the same set again (every report) is compared where it lies, not copied.
    fn record(&self, map: &Mutex<HashMap<String, BTreeSet<String>>>, node: &str, names: Vec<String>) {
        let set: BTreeSet<String> = names.into_iter().take(MAX_IMAGES).filter(|r| r.len() <= MAX_REFERENCE).collect();
        let mut map = map.lock().expect("observed lock");
        if map.get(node) != Some(&set) {
            map.insert(node.to_string(), set);
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn node_volumes(&self, node: &str) -> BTreeSet<String> {
        self.node_volumes.lock().expect("volumes lock").get(node).cloned().unwrap_or_default()
    }

    /// How many times a board's images or volumes changed so far.
    pub fn board_changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    pub fn all_node_images(&self) -> HashMap<String, BTreeSet<String>> {
        self.node_images.lock().expect("images lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_different_set_counts_as_a_board_change() {
        let o = Observed::new();
        o.set_node_images("pi", vec!["a:1".into(), "b:1".into()]);
        assert_eq!(o.board_changes(), 1);
        // The same images again, in another order: the same set.
        o.set_node_images("pi", vec!["b:1".into(), "a:1".into()]);
        assert_eq!(o.board_changes(), 1);
        o.set_node_images("pi", vec!["a:1".into()]);
        assert_eq!(o.board_changes(), 2);
        o.set_node_volumes("pi", vec!["data".into()]);
        o.set_node_volumes("pi", vec!["data".into()]);
        assert_eq!(o.board_changes(), 3);
        // Another board's first report is a change; what is too long is dropped, not counted.
        o.set_node_images("pi-2", vec!["x".repeat(MAX_REFERENCE + 1)]);
        assert_eq!((o.board_changes(), o.node_images("pi-2").len()), (4, 0));
        o.set_node_images("pi-2", vec!["y".repeat(MAX_REFERENCE + 1)]);
        assert_eq!(o.board_changes(), 4);
        assert_eq!(o.node_images("pi"), BTreeSet::from(["a:1".to_string()]));
    }
}
