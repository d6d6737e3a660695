//! What the ingress proxy's controller (`crate::ingress_controller`) keeps between passes, and
//! what the API and `/metrics` read of it: the leader's settings, what cannot be served, the
//! certificates' ends, and the wake-up an apply gives it.

use super::caddy::Unserved;
use super::IngressConfig;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The store revisions a pass worked from (ingresses, services, the proxy's app and config, the
/// certificates' secrets): while they hold, there is nothing to do.
pub type Seen = (Vec<(String, u64)>, Vec<(String, u64)>, Option<u64>, Option<u64>, Vec<(String, u64)>);

/// The controller's settings and what it remembers between passes.
#[derive(Debug, Default)]
pub struct ProxyState {
    pub config: IngressConfig,
    /// The ACME directory's CA certificate (PEM), read from `acme_ca_root` at start.
    pub acme_root: Option<String>,
    pub(crate) seen: Mutex<Option<Seen>>,
    /// What could not be served at the last change, by ingress.
    pub(crate) unserved: Mutex<BTreeMap<String, Vec<Unserved>>>,
    /// Certificates from secrets: by ingress, the secret and the certificate's end (ms).
    pub(crate) certificates: Mutex<BTreeMap<String, (String, u64)>>,
    /// When certificates were last looked at, and the day each ingress's was last said to end soon.
    pub(crate) certs_checked_ms: Mutex<(u64, BTreeMap<String, u64>)>,
    /// Poked after an apply or a delete: a pass at once instead of at the next second.
    pub wake: tokio::sync::Notify,
}

impl ProxyState {
    pub fn new(config: IngressConfig, acme_root: Option<String>) -> Self {
        ProxyState { config, acme_root, ..Default::default() }
    }

    /// What the proxy cannot serve now, by ingress (for `describe ingress`).
    pub fn unserved(&self, ingress: &str) -> Vec<Unserved> {
        self.unserved.lock().expect("not poisoned").get(ingress).cloned().unwrap_or_default()
    }

    /// Certificates from secrets: (ingress, secret, end in ms) for the metric.
    pub fn certificate_ends(&self) -> Vec<(String, String, u64)> {
        let c = self.certificates.lock().expect("not poisoned");
        c.iter().map(|(i, (s, end))| (i.clone(), s.clone(), *end)).collect()
    }
}
