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
    /// ACME certificates as the proxies serve them, by ingress (the leader looks every few minutes).
    pub(crate) served: Mutex<BTreeMap<String, Vec<bramble_proto::wire::ServedCertificate>>>,
    /// The day a problem with what (ingress, node) serves was last said.
    pub(crate) served_said: Mutex<BTreeMap<(String, String), u64>>,
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

    /// Every certificate's end for the metric: (ingress, source — `secret NAME` or `acme` —, the
    /// board that serves it for ACME, end in ms).
    pub fn certificate_ends(&self) -> Vec<(String, String, String, u64)> {
        let c = self.certificates.lock().expect("not poisoned");
        let mut out: Vec<_> =
            c.iter().map(|(i, (s, end))| (i.clone(), format!("secret {s}"), String::new(), *end)).collect();
        for (i, list) in self.served.lock().expect("not poisoned").iter() {
            for s in list {
                out.extend(s.not_after_ms.map(|end| (i.clone(), "acme".to_string(), s.node.clone(), end)));
            }
        }
        out
    }

    /// What each proxy serves for `ingress`'s host (ACME), as last found.
    pub fn served(&self, ingress: &str) -> Vec<bramble_proto::wire::ServedCertificate> {
        self.served.lock().expect("not poisoned").get(ingress).cloned().unwrap_or_default()
    }
}
