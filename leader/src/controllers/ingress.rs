//! The ingress controller (ADR 16): keeps the proxy's app and config (`bramble-ingress`) in the
//! store as the leader's `[ingress]` section, the ingresses and the services make them, through
//! the same apply as a user's (checked, recorded as a revision, scheduled on the selected boards,
//! its config sent to them and replaced in place, where the proxy reloads it by itself). A pass
//! reads the ingresses and services and stops there while their revisions are the last pass's.
//! Backends the proxy cannot serve are events on their ingress, said once when they change.

use super::Published;
use crate::admission::Reserved;
use crate::api::apps::{self, Specs};
use crate::config::IngressConfig;
use crate::error::Result;
use crate::events::Events;
use crate::ingress::caddy::Unserved;
use crate::ingress::proxy::{self, NAME};
use crate::objects::Objects;
use bramble_proto::model::{App, Config, Event, EventReason, Ingress, Kind, ObjectRef, Service};
use bramble_proto::network::ClusterNetwork;
use bramble_proto::wire::Outcome;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// Who the proxy's changes are by, in events and revisions.
pub const WHO: &str = "the ingress controller";

/// The store revisions a pass worked from (ingresses, services, the proxy's app and config, the
/// certificates' secrets): while they hold, there is nothing to do.
type Seen = (Vec<(String, u64)>, Vec<(String, u64)>, Option<u64>, Option<u64>, Vec<(String, u64)>);

/// How often certificates from secrets are looked at again when nothing changed.
const CERT_CHECK_EVERY_MS: u64 = 3_600_000;

/// The controller's settings and what it remembers between passes.
#[derive(Debug, Default)]
pub struct IngressController {
    pub config: IngressConfig,
    /// The ACME directory's CA certificate (PEM), read from `acme_ca_root` at start.
    pub acme_root: Option<String>,
    seen: Mutex<Option<Seen>>,
    /// What could not be served at the last change, by ingress.
    unserved: Mutex<BTreeMap<String, Vec<Unserved>>>,
    /// Certificates from secrets: by ingress, the secret and the certificate's end (ms).
    certificates: Mutex<BTreeMap<String, (String, u64)>>,
    /// When certificates were last looked at, and the day each ingress's was last said to end soon.
    certs_checked_ms: Mutex<(u64, BTreeMap<String, u64>)>,
}

/// What the ingress controller's loop uses.
#[derive(Debug, Clone)]
pub struct Handles {
    pub objects: Objects,
    pub events: Arc<Events>,
    pub published: Arc<Published>,
    pub network: Arc<ClusterNetwork>,
    pub reserved: Arc<Reserved>,
    pub controller: Arc<IngressController>,
    /// Opens the certificates' secrets (their ends: events and a metric).
    pub keyring: Arc<crate::trust::secrets::Keyring>,
}

impl IngressController {
    pub fn new(config: IngressConfig, acme_root: Option<String>) -> Self {
        IngressController { config, acme_root, ..Default::default() }
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

    /// One pass at `now`: whether it wrote.
    pub fn pass(&self, h: &Handles, now: u64) -> Result<bool> {
        let ingresses = h.objects.list::<Ingress>()?;
        let services = h.objects.list::<Service>()?;
        let app = h.objects.get::<App>(NAME)?;
        let config = h.objects.get::<Config>(NAME)?;
        let mut secrets = Vec::new();
        for name in proxy::secrets(&ingresses.iter().map(|v| v.value.spec.clone()).collect::<Vec<_>>()) {
            let rev = h.objects.get::<crate::trust::secrets::StoredSecret>(&name)?.map_or(0, |v| v.rev);
            secrets.push((name, rev));
        }
        let seen: Seen = (
            ingresses.iter().map(|v| (v.value.meta.name.clone(), v.rev)).collect(),
            services.iter().map(|v| (v.value.meta.name.clone(), v.rev)).collect(),
            app.as_ref().map(|v| v.rev),
            config.as_ref().map(|v| v.rev),
            secrets,
        );
        let ingresses: Vec<_> = ingresses.into_iter().map(|v| v.value.spec).collect();
        let unchanged = self.seen.lock().expect("not poisoned").as_ref() == Some(&seen);
        let checked = self.certs_checked_ms.lock().expect("not poisoned").0;
        if !unchanged || now.saturating_sub(checked) >= CERT_CHECK_EVERY_MS {
            self.check_certificates(h, &ingresses, now)?;
        }
        if unchanged {
            return Ok(false);
        }
        let services: Vec<Service> = services.into_iter().map(|v| v.value).collect();
        let Some(image) = self.config.image.as_deref() else {
            // No proxy configured: the leader's own go, if an earlier configuration made them.
            let wrote = if app.is_some() || config.is_some() {
                let apps = app.iter().map(|_| NAME.to_string()).collect();
                let configs = config.iter().map(|_| NAME.to_string()).collect();
                let done = apps::delete(&h.objects, apps, vec![], vec![], configs, vec![], vec![])?;
                for line in done.lines() {
                    let kind = if line.starts_with("app/") { Kind::App } else { Kind::Config };
                    let text = format!("{line} by {WHO}: the leader's [ingress] names no image");
                    h.events.record(Event::new(now, ObjectRef::new(kind, NAME), EventReason::Deleted, text));
                }
                true
            } else {
                false
            };
            let why = "no ingress proxy: the leader's [ingress] section names no image";
            let unserved = ingresses
                .iter()
                .map(|i| Unserved { ingress: i.name.as_str().into(), path: "/".into(), why: why.into() })
                .collect();
            self.said(h, unserved, now);
            *self.seen.lock().expect("not poisoned") = Some(seen);
            return Ok(wrote);
        };
        let secrets: BTreeSet<String> = proxy::secrets(&ingresses);
        let spec = proxy::app(&self.config, image, &secrets).map_err(crate::error::Error::Invalid)?;
        let (files, unserved) = proxy::config(&self.config, &ingresses, &services, self.acme_root.as_deref())
            .map_err(crate::error::Error::Invalid)?;
        let specs = Specs { apps: vec![spec], configs: vec![files], ..Default::default() };
        let applied = apps::apply(&h.objects, &h.events, (&h.network, &h.reserved), specs, WHO, now)?;
        let wrote = applied.iter().any(|a| a.outcome != Outcome::Unchanged);
        if wrote {
            let rollouts =
                crate::api::rollouts::Rollouts { objects: &h.objects, events: &h.events, published: &h.published };
            rollouts.after_configs_changed(&applied, WHO);
            let text =
                format!("the proxy's configuration: {} ingresses over {} services", ingresses.len(), services.len());
            h.events.record(Event::new(now, ObjectRef::new(Kind::Config, NAME), EventReason::ProxyConfigured, text));
        }
        self.said(h, unserved, now);
        // The next pass sees this one's writes as changes, finds nothing to write and settles.
        *self.seen.lock().expect("not poisoned") = Some(seen);
        Ok(wrote)
    }

    /// Looks at each certificate from a secret: its end for the metric; an event on its ingress
    /// when it ends within two weeks (once a day) or cannot serve.
    fn check_certificates(
        &self,
        h: &Handles,
        ingresses: &[bramble_proto::manifest::IngressSpec],
        now: u64,
    ) -> Result<()> {
        let mut ends = BTreeMap::new();
        let mut checked = self.certs_checked_ms.lock().expect("not poisoned");
        let today = now / 86_400_000;
        for i in ingresses {
            let Some(secret) = i.tls.as_ref().and_then(|t| t.secret.as_ref()) else { continue };
            let values = match h.objects.get::<crate::trust::secrets::StoredSecret>(secret.as_str())? {
                Some(v) => h.keyring.open(secret.as_str(), &v.value.sealed).ok(),
                None => None,
            };
            let Some(c) = crate::ingress::tls::certificate(i, values.as_ref(), now) else { continue };
            if let Some(end) = c.not_after_ms {
                ends.insert(i.name.as_str().to_string(), (secret.as_str().to_string(), end));
            }
            let name = i.name.as_str().to_string();
            match c.problem {
                Some(p) if checked.1.get(&name) != Some(&today) => {
                    checked.1.insert(name.clone(), today);
                    let about = ObjectRef::new(Kind::Ingress, name);
                    h.events.record(Event::new(now, about, EventReason::CertificateExpiring, p));
                }
                Some(_) => {}
                None => {
                    checked.1.remove(&name);
                }
            }
        }
        checked.0 = now;
        *self.certificates.lock().expect("not poisoned") = ends;
        Ok(())
    }

    /// Events on each ingress whose unserved backends changed.
    fn said(&self, h: &Handles, now_unserved: Vec<Unserved>, now: u64) {
        let mut by: BTreeMap<String, Vec<Unserved>> = BTreeMap::new();
        for u in now_unserved {
            by.entry(u.ingress.clone()).or_default().push(u);
        }
        let mut before = self.unserved.lock().expect("not poisoned");
        let names: BTreeSet<String> = before.keys().chain(by.keys()).cloned().collect();
        for name in names {
            let (old, new) = (before.get(&name), by.get(&name));
            if old == new {
                continue;
            }
            let about = ObjectRef::new(Kind::Ingress, name.clone());
            match new {
                Some(list) => {
                    let text: Vec<String> = list.iter().map(|u| format!("{}: {}", u.path, u.why)).collect();
                    h.events.record(Event::new(now, about, EventReason::IngressUnserved, text.join("; ")));
                }
                None => h.events.record(Event::new(now, about, EventReason::IngressServed, "every backend served")),
            }
        }
        *before = by;
    }
}

/// Runs a pass every second until `cancel`.
pub async fn run(h: Handles, cancel: tokio_util::sync::CancellationToken) {
    let published = h.published.clone();
    super::every_second("ingress", published, cancel, move |now| h.controller.pass(&h, now)).await
}
