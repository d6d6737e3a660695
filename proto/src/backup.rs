//! What a backup of a cluster holds (sealed by `bramble_transport::backup`, made and restored by
//! the leader).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a backup holds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub created_ms: u64,
    pub cluster_name: String,
    pub ca_fingerprint: String,
    /// The store revision the objects were read at.
    pub revision: u64,
    pub ca_cert: String,
    pub ca_key: String,
    pub secrets_key: String,
    pub leader_toml: String,
    pub admin_toml: Option<String>,
    /// Every key and its value (JSON text), in key order.
    pub objects: BTreeMap<String, String>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("cluster_name", &self.cluster_name)
            .field("objects", &self.objects.len())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Objects per kind (`nodes`, `apps`, `replicas`, …, by the first part of their key).
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for k in self.objects.keys() {
            let kind = k.trim_start_matches('/').split('/').next().unwrap_or("").to_string();
            *out.entry(kind).or_default() += 1;
        }
        out
    }
}
