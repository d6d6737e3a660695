//! The endpoints controller's decision: every service's virtual ports and the replicas behind
//! them — the app's Running replicas that have an address (Ready ones once probes exist). Pure.

use bramble_proto::manifest::AppSpec;
use bramble_proto::model::{Replica, Service};
use bramble_proto::network::{Endpoint, RoutePort, ServiceRoute};
use std::collections::BTreeMap;

/// Each service with a VIP, by name.
pub type Routes = BTreeMap<String, ServiceRoute>;

/// The routes of `services`: their ports resolved against their app's (a service whose app does
/// not exist, or whose port names a port the app lacks, has no endpoints for that port).
pub fn routes<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    apps: &BTreeMap<String, &AppSpec>,
    replicas: &[&Replica],
) -> Routes {
    let mut out = Routes::new();
    for s in services {
        let Some(vip) = s.vip else { continue };
        let app = apps.get(s.spec.app.as_str());
        let ports = s
            .spec
            .ports
            .iter()
            .filter_map(|p| {
                let target = match app {
                    Some(a) => s.spec.target_port(p, a).ok()?,
                    None => p.port.0,
                };
                Some(RoutePort { port: p.port.0, protocol: p.protocol, target })
            })
            .collect();
        let mut endpoints: Vec<Endpoint> = if app.is_some() {
            replicas
                .iter()
                .filter(|r| r.app == s.spec.app.as_str())
                .filter_map(|r| {
                    Some(Endpoint {
                        replica: r.meta.name.clone(),
                        node: r.node.clone()?,
                        ip: r.ip?,
                        ready: r.serving(),
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        endpoints.sort();
        out.insert(s.meta.name.clone(), ServiceRoute { name: s.meta.name.clone(), vip, ports, endpoints });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_proto::manifest::parse_manifest;
    use bramble_proto::model::{ObjectMeta, ReplicaPhase};

    fn replica(name: &str, app: &str, phase: ReplicaPhase, ip: Option<&str>) -> Replica {
        let ready = phase == ReplicaPhase::Running;
        Replica {
            node: Some("pi-1".into()),
            phase,
            ready,
            ip: ip.map(|i| i.parse().unwrap()),
            ..Replica::new(app, name, "r", 0)
        }
    }

    #[test]
    fn running_replicas_with_an_address_are_the_endpoints() {
        let m = parse_manifest(
            "t.toml",
            "[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\n[[app.ports]]\nname = \"http\"\ncontainer = 8080\n\
             [[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80, target = \"http\" }]\n\
             [[service]]\nname = \"early\"\napp = \"nothing-yet\"\nports = [{ port = 53, protocol = \"udp\" }]\n",
        )
        .unwrap();
        let services: Vec<Service> = m
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| Service {
                meta: ObjectMeta { name: s.name.to_string(), ..Default::default() },
                spec: s.clone(),
                vip: Some(format!("10.43.0.{}", i + 1).parse().unwrap()),
                endpoints: Vec::new(),
            })
            .collect();
        let apps: BTreeMap<String, &AppSpec> = [("web".to_string(), &m.apps[0])].into();
        let rs = [
            replica("web-b", "web", ReplicaPhase::Running, Some("10.42.0.3")),
            replica("web-a", "web", ReplicaPhase::Running, Some("10.42.0.2")),
            replica("web-c", "web", ReplicaPhase::Failed, Some("10.42.0.4")),
            replica("web-d", "web", ReplicaPhase::Pending, None),
            replica("db-a", "db", ReplicaPhase::Running, Some("10.42.0.9")),
        ];
        let refs: Vec<&Replica> = rs.iter().collect();
        let r = routes(&services, &apps, &refs);
        let web = &r["web"];
        assert_eq!(web.ports, [RoutePort { port: 80, protocol: bramble_proto::manifest::Protocol::Tcp, target: 8080 }]);
        let ready: Vec<&str> = web.ready().map(|e| e.replica.as_str()).collect();
        assert_eq!(ready, ["web-a", "web-b"], "running with an address, in order");
        assert_eq!(web.endpoints.len(), 3, "the failed one is listed, not ready");
        assert!(r["early"].endpoints.is_empty(), "a service whose app does not exist yet has none");
        assert_eq!(r["early"].ports[0].target, 53);
    }
}
