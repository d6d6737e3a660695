//! Services through the API: listed and described with their virtual IP and endpoints, which are
//! derived from the replicas when asked (never stored).

use crate::error::Result;
use crate::network::endpoints::{routes, Routes};
use bramble_proto::manifest::AppSpec;
use bramble_proto::model::{App, ObjectRef, Replica, Service};
use bramble_proto::wire::Response;
use std::collections::BTreeMap;

/// What the service requests use.
pub struct Services<'a> {
    pub objects: &'a crate::objects::Objects,
    pub events: &'a crate::events::Events,
}

impl Services<'_> {
    /// Every service's endpoints, as the controller computes them.
    pub(super) fn routes(&self) -> Result<(Vec<Service>, Routes, Vec<Replica>)> {
        let services: Vec<Service> = self.objects.list::<Service>()?.into_iter().map(|v| v.value).collect();
        let apps: Vec<App> = self.objects.list::<App>()?.into_iter().map(|v| v.value).collect();
        let specs: BTreeMap<String, &AppSpec> = apps.iter().map(|a| (a.meta.name.clone(), &a.spec)).collect();
        let replicas: Vec<Replica> = self.objects.list::<Replica>()?.into_iter().map(|v| v.value).collect();
        let refs: Vec<&Replica> = replicas.iter().collect();
        let r = routes(&services, &specs, &refs);
        Ok((services, r, replicas))
    }

    /// Every service, with its endpoints.
    pub(super) fn services(&self) -> Result<Vec<Service>> {
        let (mut services, routes, _) = self.routes()?;
        for s in &mut services {
            s.endpoints = routes.get(&s.meta.name).map(|r| r.endpoints.clone()).unwrap_or_default();
        }
        Ok(services)
    }

    pub(super) fn describe_service(&self, name: &str) -> Result<Response> {
        let mut service = self.objects.load::<Service>(name)?.value;
        let app_exists = self.objects.get::<App>(service.spec.app.as_str())?.is_some();
        let (_, routes, replicas) = self.routes()?;
        let route = routes.get(name);
        service.endpoints = route.map(|r| r.endpoints.clone()).unwrap_or_default();
        let ports = route.map(|r| r.ports.clone()).unwrap_or_default();
        let replicas = replicas.into_iter().filter(|r| r.app == service.spec.app.as_str()).collect();
        let events = self.events.about(&ObjectRef::service(name));
        Ok(Response::Service { service: Box::new(service), app_exists, ports, replicas, events })
    }
}
