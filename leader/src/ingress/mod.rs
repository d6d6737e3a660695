//! Ingress (issue 32, ADR 16): the leader's `[ingress]` settings and the checks an apply of
//! `[[ingress]]` objects makes (here), the proxy's configuration made from them and the services
//! they name (`caddy.rs`), the proxy as an app and a config (`proxy.rs`), a certificate from a
//! secret judged (`tls.rs`), and what the proxy's controller keeps between passes (`state.rs`);
//! all pure. The controller that keeps the proxy's app and config in the store is
//! `crate::ingress_controller`.

pub mod caddy;
pub mod proxy;
pub mod state;
pub mod tls;

use serde::{Deserialize, Serialize};
pub use state::ProxyState;

use bramble_proto::manifest::{IngressSpec, PathMatch, PortTarget, ServiceSpec};
use bramble_proto::wire::ObjectProblem;
use std::collections::{BTreeMap, BTreeSet};

/// The ingress proxy (issue 32, ADR 16): Caddy, run by the leader as the every-board app
/// `bramble-ingress` on the boards `nodes` selects, configured from `[[ingress]]` objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// A Caddy 2 image the boards can pull, for each board's platform (`caddy` in /usr/local/bin,
    /// /usr/bin or /bin: the official `caddy:2` image, or Debian's package on a small base).
    #[serde(default)]
    pub image: Option<String>,
    /// The boards that run it, by their labels (default `ingress = "true"`).
    #[serde(default = "default_ingress_nodes")]
    pub nodes: bramble_proto::manifest::Labels,
    /// Its memory limit on each board (Go's heap is held to three quarters of it).
    #[serde(default = "default_ingress_memory")]
    pub memory: bramble_proto::quantity::Memory,
    /// The board ports it serves plain HTTP and HTTPS on.
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    #[serde(default = "default_https_port")]
    pub https_port: u16,
    /// The ACME directory that ingresses with `tls = { acme = true }` get certificates from
    /// (Let's Encrypt's: "https://acme-v02.api.letsencrypt.org/directory"); none: such ingresses
    /// are not served over TLS and say so.
    #[serde(default)]
    pub acme_ca: Option<String>,
    /// The address the ACME CA writes to about certificates.
    #[serde(default)]
    pub acme_email: Option<String>,
    /// A PEM file of the CA that signs the ACME directory's certificate (a lab's own, such as
    /// pebble's), trusted by the proxy for that directory only.
    #[serde(default)]
    pub acme_ca_root: Option<std::path::PathBuf>,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            image: None,
            nodes: default_ingress_nodes(),
            memory: default_ingress_memory(),
            http_port: default_http_port(),
            https_port: default_https_port(),
            acme_ca: None,
            acme_email: None,
            acme_ca_root: None,
        }
    }
}

fn default_ingress_nodes() -> bramble_proto::manifest::Labels {
    bramble_proto::manifest::Labels([("ingress".to_string(), "true".to_string())].into())
}
fn default_ingress_memory() -> bramble_proto::quantity::Memory {
    bramble_proto::quantity::Memory(128 << 20)
}
fn default_http_port() -> u16 {
    80
}
fn default_https_port() -> u16 {
    443
}

/// A service port as written: `80` or `"http"`.
pub fn shown(port: &PortTarget) -> String {
    match port {
        PortTarget::Number(n) => n.0.to_string(),
        PortTarget::Name(n) => format!("{:?}", n.as_str()),
    }
}

fn problem(name: &str, field: impl Into<String>, message: impl Into<String>) -> ObjectProblem {
    ObjectProblem { kind: "ingress".into(), name: name.into(), field: field.into(), message: message.into() }
}

/// The checks an apply of `applied` makes against the cluster as it will be: `stored` ingresses
/// (those applied replace theirs), `services` (stored and applied) and the keys of each secret.
/// Two ingresses may not claim one host and path; a backend names a service and one of its TCP
/// ports; a TLS secret holds `tls.crt` and `tls.key`.
pub fn check(
    applied: &[IngressSpec],
    stored: &[IngressSpec],
    services: &BTreeMap<String, ServiceSpec>,
    secret_keys: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<ObjectProblem> {
    let mut out = Vec::new();
    let names: BTreeSet<&str> = applied.iter().map(|i| i.name.as_str()).collect();
    let mut claimed: BTreeMap<(String, String, PathMatch), &str> = BTreeMap::new();
    for i in stored.iter().filter(|i| !names.contains(i.name.as_str())) {
        for (path, m, _, _) in i.backends() {
            claimed.insert((i.host.clone(), path, m), i.name.as_str());
        }
    }
    for i in applied {
        let name = i.name.as_str();
        let fields: Vec<String> = if i.paths.is_empty() {
            vec!["service".to_string()]
        } else {
            (0..i.paths.len()).map(|k| format!("paths[{k}]")).collect()
        };
        for ((path, m, service, port), field) in i.backends().into_iter().zip(fields) {
            if let Some(other) = claimed.insert((i.host.clone(), path.clone(), m), name) {
                if other != name {
                    out.push(problem(
                        name,
                        format!("{field}.path").replace("service.path", "host"),
                        format!(
                            "ingress {other} already sends {}{path} somewhere: one host and path, one ingress",
                            i.host
                        ),
                    ));
                }
            }
            let Some(s) = services.get(service.as_str()) else {
                let at = if field == "service" { "service".to_string() } else { format!("{field}.service") };
                out.push(problem(
                    name,
                    at,
                    format!("service {service} does not exist (apply it with the ingress, or first)"),
                ));
                continue;
            };
            let tcp = s.ports.iter().filter(|p| p.protocol == bramble_proto::manifest::Protocol::Tcp);
            let found = match port {
                PortTarget::Number(n) => tcp.clone().any(|p| p.port == *n),
                PortTarget::Name(n) => tcp.clone().any(|p| p.name.as_ref() == Some(n)),
            };
            if !found {
                let have: Vec<String> = tcp
                    .map(|p| p.name.as_ref().map_or(p.port.0.to_string(), |n| format!("{} ({n})", p.port.0)))
                    .collect();
                let at = if field == "service" { "port".to_string() } else { format!("{field}.port") };
                out.push(problem(
                    name,
                    at,
                    format!(
                        "service {service} has no TCP port {}: it has {}",
                        shown(port),
                        if have.is_empty() { "none".into() } else { have.join(", ") }
                    ),
                ));
            }
        }
        if let Some(secret) = i.tls.as_ref().and_then(|t| t.secret.as_ref()) {
            match secret_keys.get(secret.as_str()) {
                None => out.push(problem(name, "tls.secret", format!("secret {secret} does not exist"))),
                Some(keys) => {
                    let missing: Vec<&str> =
                        ["tls.crt", "tls.key"].into_iter().filter(|k| !keys.contains(*k)).collect();
                    if !missing.is_empty() {
                        out.push(problem(
                            name,
                            "tls.secret",
                            format!(
                                "secret {secret} has no {}: expected tls.crt and tls.key (PEM)",
                                missing.join(" or ")
                            ),
                        ));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_proto::manifest::parse_manifest;

    #[test]
    fn hosts_and_paths_are_claimed_once_and_backends_and_secrets_must_exist() {
        let services: BTreeMap<String, ServiceSpec> = parse_manifest(
            "s.toml",
            "[[service]]\nname = \"web\"\napp = \"web\"\nports = [{ name = \"http\", port = 80 }]\n",
        )
        .unwrap()
        .services
        .into_iter()
        .map(|s| (s.name.as_str().to_string(), s))
        .collect();
        let stored = parse_manifest(
            "old.toml",
            "[[ingress]]\nname = \"old\"\nhost = \"shop.lan\"\nservice = \"web\"\nport = 80\n",
        )
        .unwrap()
        .ingresses;
        let text = "[[ingress]]\nname = \"new\"\nhost = \"shop.lan\"\ntls = { secret = \"cert\" }\n\
                    [[ingress.paths]]\npath = \"/\"\nservice = \"web\"\nport = \"http\"\n\
                    [[ingress.paths]]\npath = \"/api\"\nservice = \"api\"\nport = 80\n\
                    [[ingress.paths]]\npath = \"/x\"\nservice = \"web\"\nport = 8080\n";
        let applied = parse_manifest("new.toml", text).unwrap().ingresses;
        let keys = BTreeMap::from([("cert".to_string(), BTreeSet::from(["tls.crt".to_string()]))]);
        let found: Vec<String> = check(&applied, &stored, &services, &keys)
            .into_iter()
            .map(|p| format!("{} {}: {}", p.name, p.field, p.message))
            .collect();
        assert_eq!(
            found,
            [
                "new paths[0].path: ingress old already sends shop.lan/ somewhere: one host and path, one ingress",
                "new paths[1].service: service api does not exist (apply it with the ingress, or first)",
                "new paths[2].port: service web has no TCP port 8080: it has 80 (http)",
                "new tls.secret: secret cert has no tls.key: expected tls.crt and tls.key (PEM)",
            ]
        );
        // Applying the old one again (or replacing it) claims nothing twice.
        assert!(check(&stored, &stored, &services, &keys).is_empty());
    }
}

#[cfg(test)]
mod apply_tests {
    use crate::admission::Reserved;
    use crate::api::apps::{apply, Specs};
    use crate::events::Events;
    use crate::objects::Objects;
    use crate::store::MemStore;
    use bramble_proto::manifest::parse_manifest;
    use bramble_proto::network::ClusterNetwork;
    use std::sync::Arc;

    fn apply_text(objects: &Objects, text: &str) -> Result<(), String> {
        let m = parse_manifest("i.toml", text).unwrap();
        let specs = Specs { apps: m.apps, services: m.services, ingresses: m.ingresses, ..Default::default() };
        let reserved = Reserved::of_leader(7443, None, None);
        let events = Events::new();
        match apply(objects, &events, (&ClusterNetwork::default(), &reserved), specs, "deployer:ci", 1) {
            Ok(_) => Ok(()),
            Err(crate::error::Error::Problems(p)) => Err(p
                .iter()
                .map(|p| format!("{}/{} {}: {}", p.kind, p.name, p.field, p.message))
                .collect::<Vec<_>>()
                .join("\n")),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn an_ingress_is_stored_with_its_service_and_a_second_claim_on_its_host_is_refused() {
        let objects = Objects::new(Arc::new(MemStore::new()));
        let text = "[[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80 }]\n\
                    [[ingress]]\nname = \"shop\"\nhost = \"shop.lan\"\nservice = \"web\"\nport = 80\n";
        apply_text(&objects, text).unwrap();
        assert_eq!(objects.load::<bramble_proto::model::Ingress>("shop").unwrap().value.spec.host, "shop.lan");
        let other = "[[ingress]]\nname = \"other\"\nhost = \"shop.lan\"\nservice = \"web\"\nport = 80\n";
        let e = apply_text(&objects, other).unwrap_err();
        assert_eq!(
            e,
            "ingress/other host: ingress shop already sends shop.lan/ somewhere: one host and path, one ingress"
        );
        let tls =
            "[[ingress]]\nname = \"t\"\nhost = \"t.lan\"\nservice = \"web\"\nport = 80\ntls = { secret = \"nope\" }\n";
        assert_eq!(apply_text(&objects, tls).unwrap_err(), "ingress/t tls.secret: secret nope does not exist");
        assert!(objects.get::<bramble_proto::model::Ingress>("other").unwrap().is_none(), "nothing applied");
    }
}
