//! The ingress proxy's controller (ADR 16): keeps the proxy's app and config (`bramble-ingress`) in the
//! store as the leader's `[ingress]` section, the ingresses and the services make them, through
//! the same apply as a user's (checked, recorded as a revision, scheduled on the selected boards,
//! its config sent to them and replaced in place, where the proxy reloads it by itself). A pass
//! reads the ingresses and services and stops there while their revisions are the last pass's.
//! Backends the proxy cannot serve are events on their ingress, said once when they change.

use crate::admission::Reserved;
use crate::api::apps::{self, Specs};
use crate::controllers::Published;
use crate::error::Result;
use crate::events::Events;
use crate::ingress::caddy::Unserved;
use crate::ingress::proxy::{self, NAME};
use crate::ingress::state::Seen;
use crate::ingress::ProxyState;
use crate::objects::Objects;
use bramble_proto::model::{App, Config, Event, EventReason, Ingress, Kind, ObjectRef, Service};
use bramble_proto::network::ClusterNetwork;
use bramble_proto::wire::Outcome;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Who the proxy's changes are by, in events and revisions.
pub const WHO: &str = "the ingress controller";

/// How often certificates from secrets are looked at again when nothing changed.
const CERT_CHECK_EVERY_MS: u64 = 3_600_000;
/// How often the leader looks at what the proxies serve for ACME hosts (the first time soon after
/// it starts).
const ACME_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);
const ACME_PROBE_FIRST: std::time::Duration = std::time::Duration::from_secs(15);
/// How long a proxy may run before "serves no certificate" is worth an event (ACME takes seconds).
const ACME_GRACE_MS: u64 = 300_000;

/// What the ingress controller's loop uses.
#[derive(Debug, Clone)]
pub struct Handles {
    pub objects: Objects,
    pub events: Arc<Events>,
    pub published: Arc<Published>,
    pub network: Arc<ClusterNetwork>,
    pub reserved: Arc<Reserved>,
    pub controller: Arc<ProxyState>,
    /// Opens the certificates' secrets (their ends: events and a metric).
    pub keyring: Arc<crate::trust::secrets::Keyring>,
}

impl ProxyState {
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
                let done = apps::delete(&h.objects, apps::Names { apps, configs, ..Default::default() })?;
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

    /// Connects to each ingress board's HTTPS port for each ACME host and reads the certificate
    /// served: its end for the metric and `describe ingress`; an event on the ingress (once a day
    /// per board) when none is served after the proxy's first minutes, or it ends within two weeks
    /// (Caddy renews a month ahead: a renewal that has not happened).
    pub fn probe_acme(&self, h: &Handles, now: u64) -> Result<()> {
        if self.config.acme_ca.is_none() {
            self.served.lock().expect("not poisoned").clear();
            return Ok(());
        }
        let ingresses: Vec<_> = h
            .objects
            .list::<Ingress>()?
            .into_iter()
            .map(|v| v.value.spec)
            .filter(|i| i.tls.as_ref().is_some_and(|t| t.acme))
            .collect();
        let nodes: BTreeMap<String, std::net::Ipv4Addr> = h
            .objects
            .list::<bramble_proto::model::Node>()?
            .into_iter()
            .filter_map(|v| Some((v.value.meta.name.clone(), v.value.address?)))
            .collect();
        let proxies: Vec<(String, u64)> = h
            .objects
            .list::<bramble_proto::model::Replica>()?
            .into_iter()
            .map(|v| v.value)
            .filter(|r| r.app == NAME && r.phase == bramble_proto::model::ReplicaPhase::Running)
            .filter_map(|r| Some((r.node?, r.started_ms.unwrap_or(now))))
            .collect();
        let mut found = BTreeMap::new();
        let mut said = self.served_said.lock().expect("not poisoned");
        let today = now / 86_400_000;
        for i in &ingresses {
            let mut list = Vec::new();
            for (node, started) in &proxies {
                let Some(ip) = nodes.get(node) else { continue };
                let addr = std::net::SocketAddr::from((*ip, self.config.https_port));
                let leaf = bramble_transport::tls::served_certificate(addr, &i.host, std::time::Duration::from_secs(2));
                let (end, problem) = crate::ingress::tls::served(&i.host, leaf, now);
                let key = (i.name.as_str().to_string(), node.clone());
                match &problem {
                    Some(p) if said.get(&key) != Some(&today) => {
                        let missing = matches!(p, crate::ingress::tls::ServedProblem::Missing(_));
                        if !missing || now.saturating_sub(*started) > ACME_GRACE_MS {
                            said.insert(key, today);
                            let reason = if missing {
                                EventReason::CertificateMissing
                            } else {
                                EventReason::CertificateExpiring
                            };
                            let about = ObjectRef::new(Kind::Ingress, i.name.as_str());
                            h.events.record(Event::new(now, about, reason, format!("board {node}: {}", p.message())));
                        }
                    }
                    Some(_) => {}
                    None => {
                        said.remove(&key);
                    }
                }
                list.push(bramble_proto::wire::ServedCertificate {
                    node: node.clone(),
                    not_after_ms: end,
                    problem: problem.map(|p| p.message().to_string()),
                    checked_ms: now,
                });
            }
            found.insert(i.name.as_str().to_string(), list);
        }
        *self.served.lock().expect("not poisoned") = found;
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

impl Handles {
    /// The handles the controller's loop takes from the API's.
    pub fn of(api: &crate::api::Api) -> Handles {
        Handles {
            objects: api.objects.clone(),
            events: api.events.clone(),
            published: api.published.clone(),
            network: api.network.clone(),
            reserved: api.reserved.clone(),
            controller: api.ingress.clone(),
            keyring: api.keyring.clone(),
        }
    }
}

/// Runs a pass every second, and at once when woken, until `cancel`; and looks at what the
/// proxies serve for ACME hosts every few minutes.
pub async fn run(h: Handles, cancel: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe = tokio::time::interval_at(tokio::time::Instant::now() + ACME_PROBE_FIRST, ACME_PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = h.controller.wake.notified() => {}
            _ = probe.tick() => {
                let hp = h.clone();
                let probed = tokio::task::spawn_blocking(move || {
                    hp.controller.probe_acme(&hp, bramble_proto::time::now_ms())
                });
                if let Ok(Err(e)) = probed.await {
                    tracing::warn!("looking at the proxies' ACME certificates failed: {e}");
                }
                continue;
            }
        }
        let hp = h.clone();
        match tokio::task::spawn_blocking(move || hp.controller.pass(&hp, bramble_proto::time::now_ms())).await {
            Ok(Ok(true)) => h.published.kick.notify_one(),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!("ingress pass failed: {e}"),
            Err(e) => tracing::warn!("ingress pass failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Api;
    use crate::boards::nodes::NodeRegistry;
    use crate::store::{MemStore, Store};
    use bramble_proto::wire::{Request, Response};
    use std::time::Duration;

    fn api(image: Option<&str>) -> (Api, Handles) {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let events = Arc::new(Events::new());
        let registry = Arc::new(NodeRegistry::new(Duration::from_secs(15), events.clone()));
        let ca = bramble_transport::pki::Ca::generate("test").unwrap();
        let mut api = Api::new(Objects::new(store), ca, registry, events, Default::default());
        let config = crate::ingress::IngressConfig { image: image.map(String::from), ..Default::default() };
        api.ingress = Arc::new(ProxyState::new(config, None));
        let h = Handles::of(&api);
        (api, h)
    }

    use crate::api::testing::{admin, apply};

    /// A certificate for `names` and its key (PEM).
    fn cert(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn caddy_json(h: &Handles) -> serde_json::Value {
        let c = h.objects.load::<Config>(NAME).unwrap().value;
        serde_json::from_str(&c.spec.files["caddy.json"]).unwrap()
    }

    const SERVICES: &str = "[[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80 }]\n\
                            [[service]]\nname = \"api\"\napp = \"api\"\nports = [{ port = 8080 }]\n";

    #[test]
    fn the_proxy_follows_the_ingresses_and_writes_only_what_changed() {
        let (api, h) = api(Some("reg.lan/caddy:2"));
        let c = &h.controller;
        // No ingress yet: the proxy runs with no route (the boards are ready for the first).
        assert!(c.pass(&h, 1).unwrap(), "the proxy's app and config are written");
        let app = h.objects.load::<App>(NAME).unwrap().value;
        assert!(app.spec.every_board() && app.spec.host_network && app.spec.secrets.is_empty());
        assert_eq!(app.meta.changed_by.as_deref(), Some(WHO));
        assert!(!c.pass(&h, 2).unwrap(), "nothing changed: nothing written");
        assert!(!c.pass(&h, 3).unwrap(), "and it stays so");

        let (crt, key) = cert(&["shop.lan"]);
        let values = [("tls.crt".to_string(), crt.into_bytes()), ("tls.key".to_string(), key.into_bytes())].into();
        api.secrets().put_secret("shop-cert", values, true, "deployer:ci").unwrap();
        let text = format!(
            "{SERVICES}[[ingress]]\nname = \"shop\"\nhost = \"shop.lan\"\ntls = {{ secret = \"shop-cert\" }}\n\
             [[ingress.paths]]\npath = \"/\"\nservice = \"web\"\nport = 80\n\
             [[ingress.paths]]\npath = \"/api\"\nservice = \"api\"\nport = 8080\n"
        );
        assert!(matches!(apply(&api, &text), Response::Applied(_)));
        assert!(c.pass(&h, 4).unwrap());
        let app = h.objects.load::<App>(NAME).unwrap().value;
        assert_eq!(
            app.spec.secrets.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            ["shop-cert"],
            "it mounts the certificate"
        );
        let json = caddy_json(&h);
        let routes = json["apps"]["http"]["servers"]["bramble"]["routes"].as_array().unwrap();
        let dials: Vec<&str> =
            routes.iter().filter_map(|r| r["handle"].as_array()?.last()?["upstreams"][0]["dial"].as_str()).collect();
        assert_eq!(dials.len(), 2, "{routes:?}");
        assert!(dials[0].ends_with(":8080") && dials[1].ends_with(":80"), "/api before /: {dials:?}");
        assert!(!c.pass(&h, 5).unwrap(), "its own writes settle");
        let metric = c.certificate_ends();
        assert_eq!(metric.len(), 1, "the certificate's end is kept for the metric");
        assert_eq!(
            (metric[0].0.as_str(), metric[0].1.as_str(), metric[0].2.as_str()),
            ("shop", "secret shop-cert", "")
        );

        // A service gone under an ingress: its path answers 503, said once on the ingress.
        assert!(matches!(
            admin(
                &api,
                Request::Delete {
                    apps: vec![],
                    services: vec!["api".into()],
                    secrets: vec![],
                    configs: vec![],
                    cronjobs: vec![],
                    ingresses: vec![],
                    registries: vec![],
                }
            ),
            Response::Done(_)
        ));
        assert!(c.pass(&h, 6).unwrap());
        let said: Vec<String> = h
            .events
            .about(&ObjectRef::new(Kind::Ingress, "shop"))
            .into_iter()
            .filter(|e| e.reason == EventReason::IngressUnserved)
            .map(|e| e.message)
            .collect();
        assert_eq!(said, ["/api: service api does not exist"]);
        assert_eq!(c.unserved("shop").len(), 1);
        assert!(!c.pass(&h, 7).unwrap());
        assert_eq!(h.events.about(&ObjectRef::new(Kind::Ingress, "shop")).len(), said.len() + 1, "said once");

        // A user may not take, change or delete the proxy.
        let mine = format!("[[app]]\nname = \"{NAME}\"\nimage = \"x\"\n");
        assert!(matches!(apply(&api, &mine), Response::Error(e) if e.to_string().contains("leader's ingress proxy")));
        let config = format!("[[config]]\nname = \"{NAME}\"\nfiles = {{ a = \"b\" }}\n");
        assert!(matches!(apply(&api, &config), Response::Error(_)));
        let delete = Request::Delete {
            apps: vec![NAME.into()],
            services: vec![],
            secrets: vec![],
            configs: vec![],
            cronjobs: vec![],
            ingresses: vec![],
            registries: vec![],
        };
        assert!(matches!(admin(&api, delete), Response::Error(_)));
        assert!(h.objects.get::<App>(NAME).unwrap().is_some());
    }

    #[test]
    fn without_an_image_there_is_no_proxy_and_the_ingresses_say_so() {
        let (api, h) = api(Some("reg.lan/caddy:2"));
        assert!(h.controller.pass(&h, 1).unwrap());
        // The leader restarted without [ingress] image: the proxy it made goes.
        let h2 = Handles { controller: Arc::new(ProxyState::default()), ..h.clone() };
        let text =
            format!("{SERVICES}[[ingress]]\nname = \"plain\"\nhost = \"grafana.lan\"\nservice = \"web\"\nport = 80\n");
        assert!(matches!(apply(&api, &text), Response::Applied(_)));
        assert!(h2.controller.pass(&h2, 2).unwrap());
        assert!(h.objects.get::<App>(NAME).unwrap().is_none() && h.objects.get::<Config>(NAME).unwrap().is_none());
        let why = h2.controller.unserved("plain");
        assert!(why[0].why.contains("names no image"), "{why:?}");
        assert!(!h2.controller.pass(&h2, 3).unwrap());
    }

    #[test]
    fn a_certificate_that_cannot_serve_its_host_is_refused_at_apply() {
        let (api, _) = api(None);
        let put = |name: &str, crt: String, key: String| {
            let values = [("tls.crt".to_string(), crt.into_bytes()), ("tls.key".to_string(), key.into_bytes())].into();
            api.secrets().put_secret(name, values, true, "deployer:ci").unwrap();
        };
        let (crt, _) = cert(&["shop.lan"]);
        let (_, other_key) = cert(&["shop.lan"]);
        put("mismatched", crt.clone(), other_key);
        let (crt2, key2) = cert(&["*.lan"]);
        put("wildcard", crt2, key2);
        let (crt3, key3) = cert(&["other.example"]);
        put("elsewhere", crt3, key3);
        put("garbage", "not a certificate".into(), "nor a key".into());
        let ingress = |secret: &str| {
            format!("{SERVICES}[[ingress]]\nname = \"shop\"\nhost = \"shop.lan\"\ntls = {{ secret = \"{secret}\" }}\nservice = \"web\"\nport = 80\n")
        };
        let refused = |secret: &str| match apply(&api, &ingress(secret)) {
            Response::Error(e) => e.to_string(),
            r => panic!("{secret}: applied: {r:?}"),
        };
        assert!(refused("mismatched").contains("tls.key is not the key of tls.crt"));
        assert!(refused("elsewhere").contains("is for other.example, not shop.lan"));
        assert!(refused("garbage").contains("tls.crt"));
        assert!(h_none(&api), "nothing of a refused apply is stored");
        assert!(matches!(apply(&api, &ingress("wildcard")), Response::Applied(_)), "*.lan names shop.lan");
        let Response::Ingress(v) = admin(&api, Request::GetIngress { name: "shop".into() }) else { panic!() };
        let c = v.certificate.unwrap();
        assert_eq!((c.source.as_str(), c.problem), ("secret wildcard", None));
        assert!(c.not_after_ms.is_some());
    }

    fn h_none(api: &Api) -> bool {
        api.objects.get::<Ingress>("shop").unwrap().is_none()
    }
}
