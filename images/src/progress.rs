//! Pull progress: bytes done and total per layer, for `describe` and progress bars.

use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerPhase {
    Waiting,
    Downloading,
    Unpacking,
    /// Already in the store.
    Cached,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerProgress {
    pub digest: Digest,
    pub total: u64,
    pub done: u64,
    pub phase: LayerPhase,
}

/// Shared between the puller and whoever reports on it.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<Mutex<Vec<LayerProgress>>>);

impl Progress {
    pub fn set_layers(&self, layers: impl IntoIterator<Item = (Digest, u64)>) {
        let mut g = self.0.lock().expect("progress lock");
        *g = layers
            .into_iter()
            .map(|(digest, total)| LayerProgress { digest, total, done: 0, phase: LayerPhase::Waiting })
            .collect();
    }

    pub fn update(&self, digest: &Digest, done: u64, phase: LayerPhase) {
        let mut g = self.0.lock().expect("progress lock");
        for l in g.iter_mut().filter(|l| &l.digest == digest) {
            l.done = done;
            l.phase = phase;
        }
    }

    pub fn snapshot(&self) -> Vec<LayerProgress> {
        self.0.lock().expect("progress lock").clone()
    }

    /// (bytes done, bytes total) over all layers.
    pub fn totals(&self) -> (u64, u64) {
        let g = self.0.lock().expect("progress lock");
        (g.iter().map(|l| l.done).sum(), g.iter().map(|l| l.total).sum())
    }
}
