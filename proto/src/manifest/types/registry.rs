//! `[[registry]]`: how boards reach one registry — its credentials (from a secret), plain HTTP,
//! and mirrors to try first. Admins' objects: they decide where boards send credentials.

use super::PathPart::{Index, Key};
use super::*;
use crate::image_ref::ImageRef;
use crate::names::Name;
use serde::{Deserialize, Serialize};

/// The most mirrors one registry lists.
pub const MAX_MIRRORS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySpec {
    pub name: Name,
    /// `host[:port]` as image references write it (`docker.io` for Docker Hub).
    pub host: String,
    /// A secret with `username` and `password`, or `token`, or a Docker `config.json` (key
    /// `.dockerconfigjson` or `config.json`) naming this host. Sent only to boards that pull from
    /// this host, kept in their memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Name>,
    /// Plain HTTP instead of HTTPS (a registry on a trusted LAN).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// Registries that serve the same images (pull-through caches), tried in order before this
    /// one; what they send is checked against the same digests. A mirror's own `[[registry]]`
    /// (by its host) gives its credentials and `insecure`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
}

/// Whether `host` is a registry host as image references write it: `name.domain[:port]`,
/// `name:port`, `localhost[:port]` or an address, parsed as the first part of a reference.
pub fn check_registry_host(host: &str) -> Result<(), String> {
    let hint =
        "expected host[:port] as image references write it (a name with a dot or a port, localhost, or an address)";
    if host.is_empty() || host.len() > 253 || host.contains(['/', '@', ' ']) {
        return Err(format!("{host:?} is not a registry host: {hint}"));
    }
    match format!("{host}/x").parse::<ImageRef>() {
        Ok(r) if r.registry == host => Ok(()),
        _ => Err(format!("{host:?} is not a registry host: {hint}")),
    }
}

impl RegistrySpec {
    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Err(e) = check_registry_host(&self.host) {
            out.push(Problem::new(vec![Key("host")], e));
        }
        if self.mirrors.len() > MAX_MIRRORS {
            out.push(Problem::new(vec![Key("mirrors")], format!("at most {MAX_MIRRORS} mirrors")));
        }
        for (i, m) in self.mirrors.iter().enumerate() {
            if let Err(e) = check_registry_host(m) {
                out.push(Problem::new(vec![Key("mirrors"), Index(i)], e));
            } else if *m == self.host {
                out.push(Problem::new(vec![Key("mirrors"), Index(i)], "a registry is not its own mirror"));
            } else if self.mirrors[..i].contains(m) {
                out.push(Problem::new(vec![Key("mirrors"), Index(i)], format!("{m} is listed twice")));
            }
        }
        out
    }
}
