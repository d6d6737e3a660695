//! Caddy's JSON configuration for a set of ingresses (ADR 16): one HTTP server on the board's
//! ports 80 and 443; a route per host and path, most specific first (exact before prefix, longer
//! before shorter), each a reverse proxy to its service's virtual IP and port (the board's service
//! rules balance over ready endpoints and drain them as for any client, so rolling updates drop
//! nothing); certificates from secrets (mounted as `/run/secrets/NAME/tls.{crt,key}`) or ACME.

use bramble_proto::manifest::{IngressSpec, PathMatch, PortTarget, Protocol};
use bramble_proto::model::Service;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Where ACME certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The directory URL (Let's Encrypt's, or a lab's pebble).
    pub ca: String,
    pub email: Option<String>,
    /// A PEM file inside the proxy of the CA that signs the directory's certificate (a lab's).
    pub ca_root: Option<String>,
}

/// What the configuration is for, besides the ingresses: the board's ports, and ACME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub http_port: u16,
    pub https_port: u16,
    pub acme: Option<Acme>,
    /// Where Caddy keeps its ACME account and certificates (a local volume of the proxy).
    pub storage: String,
    /// Its admin endpoint, a unix socket only the proxy's own container reaches (none: off).
    pub admin_socket: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { http_port: 80, https_port: 443, acme: None, storage: "/data/caddy".into(), admin_socket: None }
    }
}

/// Why an ingress backend has no upstream (shown on the ingress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unserved {
    pub ingress: String,
    pub path: String,
    pub why: String,
}

/// Routes by host, then exact before prefix, then longer paths first.
type RouteOrder = (String, u8, std::cmp::Reverse<usize>, String);

/// The service port a backend names, on the service's virtual IP.
fn upstream(services: &BTreeMap<&str, &Service>, service: &str, port: &PortTarget) -> Result<String, String> {
    let s = services.get(service).ok_or_else(|| format!("service {service} does not exist"))?;
    let vip = s.vip.ok_or_else(|| format!("service {service} has no virtual IP yet"))?;
    let tcp = s.spec.ports.iter().filter(|p| p.protocol == Protocol::Tcp);
    let found = match port {
        PortTarget::Number(n) => tcp.clone().find(|p| p.port == *n),
        PortTarget::Name(n) => tcp.clone().find(|p| p.name.as_ref() == Some(n)),
    };
    let p = found.ok_or_else(|| {
        let have: Vec<String> = tcp.map(|p| p.port.0.to_string()).collect();
        format!("service {service} has no TCP port {} (it has {})", super::shown(port), have.join(", "))
    })?;
    Ok(format!("{vip}:{}", p.port.0))
}

/// Caddy path matchers for a path: a prefix matches itself and what is below it.
fn path_matchers(path: &str, matching: PathMatch) -> Vec<String> {
    match (matching, path) {
        (PathMatch::Exact, p) => vec![p.to_string()],
        (PathMatch::Prefix, "/") => vec!["/*".to_string()],
        (PathMatch::Prefix, p) => vec![p.to_string(), format!("{p}/*")],
    }
}

/// The configuration for `ingresses`, with the cluster's `services`; and the backends it cannot
/// serve (their routes answer 503).
pub fn config(ingresses: &[IngressSpec], services: &[Service], settings: &Settings) -> (Value, Vec<Unserved>) {
    let acme = settings.acme.as_ref();
    let by_name: BTreeMap<&str, &Service> = services.iter().map(|s| (s.meta.name.as_str(), s)).collect();
    let mut unserved = Vec::new();
    let mut routes: Vec<(RouteOrder, Value)> = Vec::new();
    for i in ingresses {
        for (path, matching, service, port) in i.backends() {
            let mut handle = Vec::new();
            if let Some(max) = i.max_body {
                handle.push(json!({ "handler": "request_body", "max_size": max.0 }));
            }
            match upstream(&by_name, service.as_str(), port) {
                Ok(dial) => {
                    let mut proxy = json!({ "handler": "reverse_proxy", "upstreams": [{ "dial": dial }] });
                    if let Some(read) = i.timeouts.read {
                        proxy["transport"] =
                            json!({ "protocol": "http", "read_timeout": format!("{}ms", read.0.as_millis()) });
                    }
                    handle.push(proxy);
                }
                Err(why) => {
                    unserved.push(Unserved { ingress: i.name.as_str().into(), path: path.clone(), why: why.clone() });
                    handle.push(json!({ "handler": "static_response", "status_code": 503, "body": "no backend\n" }));
                }
            }
            let key =
                (i.host.clone(), u8::from(matching != PathMatch::Exact), std::cmp::Reverse(path.len()), path.clone());
            let route = json!({
                "match": [{ "host": [i.host], "path": path_matchers(&path, matching) }],
                "handle": handle,
                "terminal": true,
            });
            routes.push((key, route));
        }
    }
    routes.sort_by(|a, b| a.0.cmp(&b.0));
    // http:// of a host with TLS redirects to https:// where it asks to (ours, not Caddy's
    // automatic redirects: those cannot be left out for one host).
    let no_acme = |i: &&IngressSpec| i.tls.as_ref().is_some_and(|t| t.acme) && acme.is_none();
    let redirecting: Vec<&str> =
        ingresses.iter().filter(|i| i.redirects() && !no_acme(i)).map(|i| i.host.as_str()).collect();
    let mut all: Vec<Value> = Vec::new();
    if !redirecting.is_empty() {
        all.push(json!({
            "match": [{ "host": redirecting, "protocol": "http" }],
            "handle": [{
                "handler": "static_response",
                "status_code": 308,
                "headers": { "Location": ["https://{http.request.host}{http.request.uri}"] },
            }],
            "terminal": true,
        }));
    }
    all.extend(routes.into_iter().map(|(_, r)| r));
    // Caddy asks a CA for every other host it routes: plain hosts, and ACME hosts without a
    // directory to ask (said on the ingress), are left out of that.
    for i in ingresses.iter().filter(no_acme) {
        unserved.push(Unserved {
            ingress: i.name.as_str().into(),
            path: "/".into(),
            why: "tls = { acme = true } needs an ACME directory: acme_ca in the leader's [ingress]; served over plain HTTP meanwhile".into(),
        });
    }
    let plain: Vec<&str> =
        ingresses.iter().filter(|i| i.tls.is_none() || no_acme(i)).map(|i| i.host.as_str()).collect();
    let mut server = json!({
        "listen": [format!(":{}", settings.https_port), format!(":{}", settings.http_port)],
        "routes": all,
        "automatic_https": { "skip": plain, "disable_redirects": true },
    });
    if let Some(idle) = ingresses.iter().filter_map(|i| i.timeouts.idle).min() {
        server["idle_timeout"] = json!(format!("{}ms", idle.0.as_millis()));
    }
    let files: Vec<Value> = ingresses
        .iter()
        .filter_map(|i| {
            let secret = i.tls.as_ref()?.secret.as_ref()?;
            Some(json!({
                "certificate": format!("/run/secrets/{secret}/tls.crt"),
                "key": format!("/run/secrets/{secret}/tls.key"),
            }))
        })
        .collect();
    let acme_hosts: Vec<&str> =
        ingresses.iter().filter(|i| i.tls.as_ref().is_some_and(|t| t.acme)).map(|i| i.host.as_str()).collect();
    let mut tls = json!({ "certificates": { "load_files": files } });
    let mut policies = Vec::new();
    if let (Some(a), false) = (acme, acme_hosts.is_empty()) {
        let mut issuer = json!({ "module": "acme", "ca": a.ca, "challenges": { "tls-alpn": { "disabled": true } } });
        if let Some(e) = &a.email {
            issuer["email"] = json!(e);
        }
        if let Some(root) = &a.ca_root {
            issuer["trusted_roots_pem_files"] = json!([root]);
        }
        policies.push(json!({ "subjects": acme_hosts, "issuers": [issuer] }));
    }
    // Hosts with a certificate from a secret ask no CA: Caddy manages no name it has a loaded
    // certificate for ("skipping automatic certificate management because one or more matching
    // certificates are already loaded", caddy 2.6.2 validating this config).
    tls["automation"] = json!({ "policies": policies });
    // The admin endpoint only on a unix socket in the proxy's own tmpfs (never a port: the proxy
    // is on the board's network): the board reloads the configuration through it (ADR 16).
    let admin = match &settings.admin_socket {
        Some(path) => json!({ "listen": format!("unix/{path}") }),
        None => json!({ "disabled": true }),
    };
    let config = json!({
        "admin": admin,
        "storage": { "module": "file_system", "root": settings.storage },
        "apps": {
            "http": {
                "http_port": settings.http_port,
                "https_port": settings.https_port,
                "servers": { "bramble": server },
            },
            "tls": tls,
        },
    });
    (config, unserved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_proto::manifest::parse_manifest;
    use bramble_proto::model::ObjectMeta;

    fn service(name: &str, vip: [u8; 4], ports: &str) -> Service {
        let text = format!("[[service]]\nname = \"{name}\"\napp = \"{name}\"\nports = [{ports}]\n");
        let spec = parse_manifest("s.toml", &text).unwrap().services.remove(0);
        let meta = ObjectMeta { name: name.into(), generation: 1, revision: 1, created_ms: 0, changed_by: None };
        Service { meta, spec, vip: Some(vip.into()), endpoints: Vec::new() }
    }

    #[test]
    fn routes_go_most_specific_first_to_each_services_vip_and_tls_comes_from_secrets_or_acme() {
        let text = "[[ingress]]\nname = \"shop\"\nhost = \"shop.lan\"\ntls = { secret = \"shop-cert\" }\nmax_body = \"1Mi\"\n\
                    [[ingress.paths]]\npath = \"/\"\nservice = \"web\"\nport = 80\n\
                    [[ingress.paths]]\npath = \"/api\"\nservice = \"api\"\nport = \"http\"\n\
                    [[ingress.paths]]\npath = \"/api/health\"\nmatch = \"exact\"\nservice = \"api\"\nport = 80\n\
                    [[ingress]]\nname = \"grafana\"\nhost = \"grafana.lan\"\nservice = \"grafana\"\nport = 3000\n\
                    [[ingress]]\nname = \"public\"\nhost = \"ha.example.com\"\ntls = { acme = true }\nservice = \"nope\"\nport = 80\n";
        let ingresses = parse_manifest("i.toml", text).unwrap().ingresses;
        let services = [
            service("web", [10, 43, 0, 10], "{ port = 80 }"),
            service("api", [10, 43, 0, 11], "{ name = \"http\", port = 80 }"),
            service("grafana", [10, 43, 0, 12], "{ port = 3000 }"),
        ];
        let acme =
            Acme { ca: "https://pebble.lan:14000/dir".into(), email: Some("ops@example.com".into()), ca_root: None };
        let (c, unserved) = config(&ingresses, &services, &Settings { acme: Some(acme), ..Settings::default() });
        let all = c["apps"]["http"]["servers"]["bramble"]["routes"].as_array().unwrap();
        // First: http:// of shop.lan redirects (the other TLS host too: redirects by default).
        assert_eq!(all[0]["match"][0]["host"], json!(["shop.lan", "ha.example.com"]));
        assert_eq!(all[0]["handle"][0]["status_code"], 308);
        let routes = &all[1..];
        let summary: Vec<(String, String, String)> = routes
            .iter()
            .map(|r| {
                let m = &r["match"][0];
                let h = r["handle"].as_array().unwrap().last().unwrap();
                let to = h["upstreams"][0]["dial"].as_str().map_or_else(|| h["status_code"].to_string(), String::from);
                (m["host"][0].as_str().unwrap().into(), m["path"].to_string(), to)
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("grafana.lan".into(), "[\"/*\"]".into(), "10.43.0.12:3000".into()),
                ("ha.example.com".into(), "[\"/*\"]".into(), "503".into()),
                ("shop.lan".into(), "[\"/api/health\"]".into(), "10.43.0.11:80".into()),
                ("shop.lan".into(), "[\"/api\",\"/api/*\"]".into(), "10.43.0.11:80".into()),
                ("shop.lan".into(), "[\"/*\"]".into(), "10.43.0.10:80".into()),
            ]
        );
        assert_eq!(routes[2]["handle"][0], json!({ "handler": "request_body", "max_size": 1 << 20 }));
        assert_eq!(
            unserved,
            [Unserved { ingress: "public".into(), path: "/".into(), why: "service nope does not exist".into() }]
        );
        let tls = &c["apps"]["tls"];
        assert_eq!(tls["certificates"]["load_files"][0]["certificate"], "/run/secrets/shop-cert/tls.crt");
        assert_eq!(tls["automation"]["policies"][0]["subjects"], json!(["ha.example.com"]));
        assert_eq!(tls["automation"]["policies"][0]["issuers"][0]["ca"], "https://pebble.lan:14000/dir");
        assert_eq!(c["apps"]["http"]["servers"]["bramble"]["automatic_https"]["skip"], json!(["grafana.lan"]));
    }
}
