//! `[[service]]`: its ports and the checks against the app it fronts.

use super::PathPart::{Index, Key};
use super::*;
use crate::names::Name;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Where a service sends traffic: a container port number or a port name of the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortTarget {
    Number(Port),
    Name(Name),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<Name>,
    /// The port on the service's virtual IP.
    pub port: Port,
    /// The app's port; the same number as `port` when left out.
    #[serde(default)]
    pub target: Option<PortTarget>,
    #[serde(default)]
    pub protocol: Protocol,
}

/// Files an app reads, kept outside its image: `[[config]] name = "nginx"` with `files`, text
/// each. Not secret (anyone who may read the cluster may read them); for secrets use secrets.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: Name,
    /// The app whose ready replicas receive the traffic.
    pub app: Name,
    pub ports: Vec<ServicePort>,
}

impl ServiceSpec {
    /// The app's container port each service port sends to, if the app has it: a number is
    /// taken as it is; a name must be one of the app's ports with the same protocol.
    pub fn target_port(&self, port: &ServicePort, app: &AppSpec) -> Result<u16, String> {
        match &port.target {
            None => Ok(port.port.0),
            Some(PortTarget::Number(n)) => Ok(n.0),
            Some(PortTarget::Name(n)) => {
                let found = app.all_ports().find(|p| p.name.as_ref() == Some(n));
                match found {
                    None => {
                        let named: Vec<&str> =
                            app.all_ports().filter_map(|p| p.name.as_ref()).map(Name::as_str).collect();
                        let have = if named.is_empty() {
                            "no named ports".to_string()
                        } else {
                            format!("ports {}", named.join(", "))
                        };
                        Err(format!("app {} has no port named {:?} (it has {have})", app.name.as_str(), n.as_str()))
                    }
                    Some(p) if p.protocol != port.protocol => Err(format!(
                        "port {:?} of app {} is {}, this service port is {}",
                        n.as_str(),
                        app.name.as_str(),
                        protocol_name(p.protocol),
                        protocol_name(port.protocol)
                    )),
                    Some(p) => Ok(p.container.0),
                }
            }
        }
    }

    /// Problems with the service's ports against its app.
    pub fn check_against(&self, app: &AppSpec) -> Vec<Problem> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let e = self.target_port(p, app).err()?;
                Some(Problem::new(vec![Key("ports"), Index(i), Key("target")], e))
            })
            .collect()
    }

    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.ports.is_empty() {
            out.push(Problem::new(vec![Key("ports")], "expected at least one port"));
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if !seen.insert((p.port, p.protocol)) {
                out.push(Problem::new(
                    vec![Key("ports"), Index(i), Key("port")],
                    format!("port {} is listed twice", p.port.0),
                ));
            }
        }
        out
    }
}
