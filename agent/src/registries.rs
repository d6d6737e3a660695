//! The cluster's `[[registry]]` settings this board was sent (only for the registries its
//! replicas pull from), held in memory and handed to the registry client. Each payload is named
//! by its host; its values: `insecure`, `mirrors` (comma-separated), the credentials' `username`
//! and `password` or `token`, and a mirror's own settings under `mirror/<host>/…`.

use bramble_images::registry::{RegistryClient, RegistryConfig};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

type Values = BTreeMap<String, Vec<u8>>;

pub struct Registries {
    client: Arc<RegistryClient>,
    held: Mutex<BTreeMap<String, Values>>,
}

pub use bramble_images::registry::configs_from_payloads as configs;

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<String> = self.held.lock().map(|h| h.keys().cloned().collect()).unwrap_or_default();
        f.debug_struct("Registries").field("hosts", &hosts).finish_non_exhaustive()
    }
}

impl Registries {
    pub fn new(client: Arc<RegistryClient>) -> Self {
        Registries { client, held: Mutex::new(BTreeMap::new()) }
    }

    /// The registry client the board's pulls use.
    pub fn client(&self) -> Arc<RegistryClient> {
        self.client.clone()
    }

    /// What the leader sent: `put` new or changed, `drop` gone; `full`: exactly these.
    pub fn update(&self, put: Vec<(String, u64, Values)>, drop: &[String], full: bool) {
        let mut held = self.held.lock().expect("registries lock");
        if full {
            held.clear();
        }
        for d in drop {
            held.remove(d);
        }
        let names: Vec<String> = put.iter().map(|(h, _, _)| h.clone()).collect();
        for (host, _, values) in put {
            held.insert(host, values);
        }
        let all = configs(&held);
        if !names.is_empty() || !drop.is_empty() {
            info!(received = ?names, dropped = ?drop, "registry settings from the leader");
        }
        self.client.set_cluster(all, &[], true);
    }
}

/// Says (once, at start) which registries of the agent config carry credentials in plain text.
pub fn warn_plain_text(registries: &[RegistryConfig]) {
    for r in registries.iter().filter(|r| r.has_credentials()) {
        warn!(
            registry = %r.host,
            "agent.toml holds credentials for {} in plain text: they still work; a [[registry]] object with a \
             secret keeps them off the disk and sends them only to boards that pull from it",
            r.host
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(kv: &[(&str, &str)]) -> Values {
        kv.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn payloads_become_settings_with_their_mirrors() {
        let mut held = BTreeMap::new();
        held.insert(
            "docker.io".to_string(),
            values(&[
                ("mirrors", "cache.lan:5000,other.lan"),
                ("token", "t"),
                ("mirror/cache.lan:5000/insecure", "true"),
                ("mirror/cache.lan:5000/username", "pi"),
                ("mirror/cache.lan:5000/password", "raspberry"),
            ]),
        );
        let c = configs(&held);
        assert_eq!(c.len(), 2, "{c:?}");
        let cache = c.iter().find(|c| c.host == "cache.lan:5000").unwrap();
        assert!(cache.insecure);
        assert_eq!(cache.username.as_deref(), Some("pi"));
        assert!(cache.mirrors.is_empty());
        let hub = c.iter().find(|c| c.host == "docker.io").unwrap();
        assert_eq!(hub.mirrors, ["cache.lan:5000", "other.lan"]);
        assert_eq!(hub.token.as_deref(), Some("t"));
        assert!(!hub.insecure && hub.username.is_none());
    }

    #[test]
    fn updates_put_drop_and_replace() {
        let client = Arc::new(RegistryClient::new(vec![]));
        let r = Registries::new(client.clone());
        r.update(vec![("a.lan".into(), 1, values(&[("insecure", "true")]))], &[], true);
        r.update(vec![("b.lan".into(), 1, values(&[]))], &[], false);
        assert_eq!(client.cluster_hosts(), ["a.lan", "b.lan"]);
        r.update(vec![], &["a.lan".into()], false);
        assert_eq!(client.cluster_hosts(), ["b.lan"]);
        r.update(vec![("c.lan".into(), 1, values(&[]))], &[], true);
        assert_eq!(client.cluster_hosts(), ["c.lan"]);
    }
}
