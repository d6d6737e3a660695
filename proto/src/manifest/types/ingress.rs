//! `[[ingress]]`: web apps reachable by host name (and path) from the LAN, through a proxy the
//! leader configures, with TLS from a secret or from ACME.
//!
//! Hosts and paths end up in the proxy's configuration: they are checked here by their parts
//! (DNS labels; path segments of URL characters, no placeholders, no `..`), not escaped later.

use super::PathPart::{Index, Key};
use super::*;
use crate::names::{check_dns_subdomain, Name};
use crate::quantity::{HumanDuration, Memory};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// How a path matches a request's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMatch {
    /// The path and everything below it (`/api` matches `/api` and `/api/users`, not `/apix`).
    #[default]
    Prefix,
    /// Only the path itself.
    Exact,
}

impl PathMatch {
    pub fn is_default(&self) -> bool {
        *self == PathMatch::Prefix
    }
}

/// Requests under `path` go to `service`'s `port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressPath {
    pub path: String,
    #[serde(default, rename = "match", skip_serializing_if = "PathMatch::is_default")]
    pub matching: PathMatch,
    pub service: Name,
    /// The service's port, by number or name.
    pub port: PortTarget,
}

/// Where the certificate comes from: a secret with `tls.crt` and `tls.key`, or ACME (HTTP-01).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Name>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub acme: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressTimeouts {
    /// The longest a request (headers and body) may take to arrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<HumanDuration>,
    /// A kept-alive connection with nothing to do closes after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<HumanDuration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSpec {
    pub name: Name,
    /// The host name requests ask for (`grafana.lan`), or `*.lan` for every name one label below.
    pub host: String,
    /// Where requests go by path (the longest match wins, exact before prefix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<IngressPath>,
    /// Without `paths`: the service every request goes to, and its port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<IngressTls>,
    /// With TLS, plain http:// is answered with a redirect to https:// (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_https: Option<bool>,
    #[serde(default, skip_serializing_if = "is_default_timeouts")]
    pub timeouts: IngressTimeouts,
    /// The largest request body accepted (larger: 413).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<Memory>,
}

fn is_default_timeouts(t: &IngressTimeouts) -> bool {
    *t == IngressTimeouts::default()
}

/// The largest `max_body` (1 GiB): a board's memory and SD card are small.
pub const MAX_BODY_LIMIT: u64 = 1 << 30;

/// Whether `host` is a DNS name, or `*.` and one (a wildcard of one label).
pub fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    check_dns_subdomain(name).map_err(|e| e.to_string())
}

/// Whether `path` is an absolute URL path of plain segments: `/`, letters, digits and
/// `-._~!$&'()*+,;=:@%`, with `%` followed by two hex digits; no `.` or `..` segment, no `{}`
/// (the proxy's placeholders), no query or fragment.
pub fn check_path(path: &str) -> Result<(), String> {
    let expected = "expected an absolute URL path such as \"/api\" (letters, digits, -._~!$&'()*+,;=:@ and %XX)";
    if !path.starts_with('/') || path.len() > 1024 {
        return Err(format!("{path:?}: {expected}"));
    }
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        let ok = b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(b);
        let escape = *b == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        if !ok && !escape {
            return Err(format!("{path:?} has {:?}: {expected}", *b as char));
        }
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("{path:?}: a path of \".\" or \"..\" segments would match other paths than it says"));
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err(format!("{path:?}: leave out the trailing '/' (a prefix matches what is below it)"));
    }
    Ok(())
}

impl IngressSpec {
    /// Its backends: (path, match, service, port); without `paths`, `/` by prefix.
    pub fn backends(&self) -> Vec<(String, PathMatch, &Name, &PortTarget)> {
        if self.paths.is_empty() {
            return match (&self.service, &self.port) {
                (Some(s), Some(p)) => vec![("/".to_string(), PathMatch::Prefix, s, p)],
                _ => Vec::new(),
            };
        }
        self.paths.iter().map(|p| (p.path.clone(), p.matching, &p.service, &p.port)).collect()
    }

    pub fn redirects(&self) -> bool {
        self.tls.is_some() && self.redirect_https.unwrap_or(true)
    }

    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Err(e) = check_host(&self.host) {
            out.push(Problem::new(vec![Key("host")], e));
        }
        match (&self.service, &self.port, self.paths.is_empty()) {
            (Some(_), Some(_), true) => {}
            (None, None, false) => {}
            (Some(_), None, true) => out.push(Problem::new(vec![Key("port")], "expected the service's port")),
            (None, Some(_), true) => out.push(Problem::new(vec![Key("service")], "expected the service for port")),
            (None, None, true) => out.push(Problem::new(
                vec![Key("service")],
                "expected a service and port, or [[ingress.paths]] each with its service and port",
            )),
            (_, _, false) => out.push(Problem::new(
                vec![Key("service")],
                "with paths, each path names its service: leave out service and port here",
            )),
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.paths.iter().enumerate() {
            if let Err(e) = check_path(&p.path) {
                out.push(Problem::new(vec![Key("paths"), Index(i), Key("path")], e));
            } else if !seen.insert((p.path.as_str(), p.matching)) {
                out.push(Problem::new(
                    vec![Key("paths"), Index(i), Key("path")],
                    format!("{:?} is listed twice (with the same match)", p.path),
                ));
            }
        }
        if let Some(t) = &self.tls {
            if t.secret.is_some() == t.acme {
                out.push(Problem::new(
                    vec![Key("tls")],
                    "expected one of tls = { secret = \"NAME\" } (tls.crt and tls.key) or tls = { acme = true }",
                ));
            }
            if t.acme && self.host.starts_with("*.") {
                out.push(Problem::new(
                    vec![Key("tls"), Key("acme")],
                    "ACME's HTTP-01 challenge cannot prove a wildcard name: give a secret with a wildcard certificate",
                ));
            }
        } else if self.redirect_https == Some(true) {
            out.push(Problem::new(vec![Key("redirect_https")], "a redirect to https:// needs tls"));
        }
        for (key, d) in [("read", self.timeouts.read), ("idle", self.timeouts.idle)] {
            if d.is_some_and(|d| d.0.is_zero()) {
                out.push(Problem::new(vec![Key("timeouts"), Key(key)], "expected more than 0s"));
            }
        }
        if let Some(m) = self.max_body.filter(|m| m.0 == 0 || m.0 > MAX_BODY_LIMIT) {
            out.push(Problem::new(
                vec![Key("max_body")],
                format!("{} bytes: expected more than 0 and at most 1Gi", m.0),
            ));
        }
        out
    }
}
