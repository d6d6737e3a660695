//! Image references: `[registry[:port]/]path[:tag][@sha256:<hex>]`, as Docker and OCI write them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

pub const DEFAULT_REGISTRY: &str = "docker.io";
pub const DEFAULT_TAG: &str = "latest";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Host with optional port, e.g. `registry.lan:5000`; `docker.io` when none was written.
    pub registry: String,
    /// Repository path, e.g. `team/web`; `library/` is prepended for single names on Docker Hub.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>` when pinned.
    pub digest: Option<String>,
    original: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ImageRefError {
    pub reference: String,
    pub reason: String,
}

impl ImageRef {
    /// The reference as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.original
    }
    /// The tag, or `latest` when neither tag nor digest was given.
    pub fn tag_or_default(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t),
            (None, None) => Some(DEFAULT_TAG),
            (None, Some(_)) => None,
        }
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ImageRefError { reference: s.to_string(), reason: reason.to_string() };
        if s.is_empty() {
            return Err(fail("expected a reference like \"registry.lan:5000/team/web:1.4\""));
        }
        if s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("expected at most 512 characters without spaces"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hex =
                    d.strip_prefix("sha256:").ok_or_else(|| fail("expected the digest as sha256:<64 hex digits>"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                    return Err(fail("expected the digest as sha256:<64 lowercase hex digits>"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(fail("expected a tag of at most 128 letters, digits, '_', '.' or '-'"));
            }
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let first = parts[0];
        let registry = if parts.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost") {
            parts.remove(0);
            check_host(first).map_err(|r| fail(&r))?;
            first.to_string()
        } else {
            DEFAULT_REGISTRY.to_string()
        };
        for p in &parts {
            if !path_component_ok(p) {
                return Err(fail(
                    "expected repository path components of lowercase letters and digits separated by '.', '_', '__' or '-'",
                ));
            }
        }
        let mut repository = parts.join("/");
        if registry == DEFAULT_REGISTRY && parts.len() == 1 {
            repository = format!("library/{repository}");
        }
        Ok(ImageRef { registry, repository, tag: tag.map(str::to_string), digest, original: s.to_string() })
    }
}

fn check_host(host: &str) -> Result<(), String> {
    let (h, port) = match host.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("expected a registry port from 1 to 65535, found {p:?}"));
        }
    }
    let ok = !h.is_empty()
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("expected a registry host name, found {h:?}"))
    }
}

fn path_component_ok(p: &str) -> bool {
    let b = p.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    if !b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c)) {
        return false;
    }
    // Separators: '.', '_', '__' or runs of '-'; never two separators of other kinds in a row.
    !(p.contains("..")
        || p.contains("___")
        || p.contains("._")
        || p.contains("_.")
        || p.contains(".-")
        || p.contains("-."))
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.original)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let r: ImageRef = "busybox".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag_or_default()),
            ("docker.io", "library/busybox", Some("latest"))
        );
        let r: ImageRef = "registry.lan:5000/team/web:1.4".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("registry.lan:5000", "team/web", Some("1.4"))
        );
        let r: ImageRef = "localhost/a/b".parse().unwrap();
        assert_eq!(r.registry, "localhost");
        let d = format!("127.0.0.1:5000/x@sha256:{}", "a".repeat(64));
        let r: ImageRef = d.parse().unwrap();
        assert!(r.digest.is_some() && r.tag.is_none() && r.tag_or_default().is_none());
    }

    #[test]
    fn refuses_bad_forms() {
        for bad in [
            "",
            "Web",
            "web:",
            "web:-x",
            "a//b",
            "reg.lan:0/x",
            "reg.lan:99999/x",
            "x@sha256:abc",
            "web app",
            "-x",
            "a..b",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?}");
        }
    }
}
