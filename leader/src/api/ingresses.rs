//! Ingresses through the API: their certificates checked when they are applied (the leader opens
//! the secret: a key that is not the certificate's, or a certificate for other names, is an apply
//! error), and `describe ingress` — where each path goes now, the certificate, the proxies.

use crate::error::{Error, Result};
use crate::objects::Objects;
use crate::trust::secrets::{Keyring, StoredSecret};
use bramble_proto::manifest::{IngressSpec, PortTarget, Protocol};
use bramble_proto::model::{Ingress, Kind, ObjectRef, Replica};
use bramble_proto::wire::{IngressBackend, IngressView, ObjectProblem, Response};
use std::collections::BTreeMap;

/// What the ingress requests use.
pub struct Ingresses<'a> {
    pub objects: &'a Objects,
    pub keyring: &'a Keyring,
    pub events: &'a crate::events::Events,
    pub controller: &'a crate::ingress::ProxyState,
}

impl Ingresses<'_> {
    /// The keys of secret `name`, opened (none: no such secret).
    fn open(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
        let Some(v) = self.objects.get::<StoredSecret>(name)? else { return Ok(None) };
        self.keyring.open(name, &v.value.sealed).map(Some).map_err(|e| Error::Internal(e.to_string()))
    }

    /// Refuses ingresses whose certificate from a secret cannot serve their host.
    pub fn check_certificates(&self, ingresses: &[IngressSpec], now: u64) -> Result<()> {
        let mut problems = Vec::new();
        for i in ingresses {
            let Some(secret) = i.tls.as_ref().and_then(|t| t.secret.as_ref()) else { continue };
            // A missing secret or key is the apply's own check (with the other problems).
            let Some(values) = self.open(secret.as_str())? else { continue };
            if !(values.contains_key("tls.crt") && values.contains_key("tls.key")) {
                continue;
            }
            let Some(c) = crate::ingress::tls::certificate(i, Some(&values), now) else { continue };
            if crate::ingress::tls::refuses(&c, now) {
                problems.push(ObjectProblem {
                    kind: "ingress".into(),
                    name: i.name.as_str().into(),
                    field: "tls.secret".into(),
                    message: c.problem.unwrap_or_default(),
                });
            }
        }
        crate::admission::refuse(problems)
    }

    pub fn describe(&self, services: &super::services::Services<'_>, name: &str, now: u64) -> Result<Response> {
        let ingress = self.objects.load::<Ingress>(name)?.value;
        let (all, routes, replicas) = services.routes()?;
        let mut backends = Vec::new();
        for (path, matching, service, port) in ingress.spec.backends() {
            let s = all.iter().find(|s| s.meta.name == service.as_str());
            let route = routes.get(service.as_str());
            let found = s.and_then(|s| {
                let tcp = s.spec.ports.iter().filter(|p| p.protocol == Protocol::Tcp);
                let p = match port {
                    PortTarget::Number(n) => tcp.clone().find(|p| p.port == *n),
                    PortTarget::Name(n) => tcp.clone().find(|p| p.name.as_ref() == Some(n)),
                }?;
                Some(format!("{}:{}", s.vip?, p.port.0))
            });
            let endpoints = route.map(|r| r.endpoints.as_slice()).unwrap_or_default();
            backends.push(IngressBackend {
                path,
                matching: format!("{matching:?}").to_lowercase(),
                service: service.as_str().into(),
                port: crate::ingress::shown(port),
                upstream: found,
                ready: endpoints.iter().filter(|e| e.ready).count(),
                endpoints: endpoints.len(),
            });
        }
        let values = match ingress.spec.tls.as_ref().and_then(|t| t.secret.as_ref()) {
            Some(s) => self.open(s.as_str())?,
            None => None,
        };
        let mut certificate = crate::ingress::tls::certificate(&ingress.spec, values.as_ref(), now);
        if let Some(c) = certificate.as_mut().filter(|c| c.source == "acme") {
            c.served = self.controller.served(name);
        }
        let proxies: Vec<Replica> = replicas.into_iter().filter(|r| r.app == crate::ingress::proxy::NAME).collect();
        let mut problems: Vec<String> =
            self.controller.unserved(name).into_iter().map(|u| format!("{}: {}", u.path, u.why)).collect();
        if proxies.is_empty() && self.controller.config.image.is_some() {
            let nodes: Vec<String> = self.controller.config.nodes.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
            problems
                .push(format!("no board runs the proxy: label one {} (bramble label node NAME …)", nodes.join(",")));
        }
        let events = self.events.about(&ObjectRef::new(Kind::Ingress, name));
        let view = IngressView { ingress, backends, certificate, proxies, problems, events };
        Ok(Response::Ingress(Box::new(view)))
    }
}
