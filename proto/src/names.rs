//! Names users give to objects, labels and environment variables, checked once at the edge.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// Checks an RFC 1123 DNS label: 1–63 of `a-z`, `0-9`, `-`, starting and ending alphanumeric.
pub fn check_dns_label(s: &str) -> Result<(), NameError> {
    let expected =
        "expected a DNS label: 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit";
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(NameError(format!("invalid name {s:?}: {expected}")))
    }
}

/// Checks an RFC 1123 DNS subdomain (dot-separated labels, at most 253 characters); node names.
pub fn check_dns_subdomain(s: &str) -> Result<(), NameError> {
    if s.is_empty() || s.len() > 253 || s.split('.').any(|l| check_dns_label(l).is_err()) {
        return Err(NameError(format!(
            "invalid name {s:?}: expected a DNS name: dot-separated labels of lowercase letters, digits or '-', at most 253 characters"
        )));
    }
    Ok(())
}

/// Checks a label key: `[prefix/]name`, prefix a DNS subdomain, name 1–63 of alphanumerics, `-`, `_`, `.`.
pub fn check_label_key(s: &str) -> Result<(), NameError> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        check_dns_subdomain(p)
            .map_err(|_| NameError(format!("invalid label key {s:?}: the prefix before '/' must be a DNS name")))?;
    }
    if !label_chars_ok(name) || name.is_empty() {
        return Err(NameError(format!(
            "invalid label key {s:?}: expected 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// Checks a label value: empty, or up to 63 alphanumerics, `-`, `_`, `.` starting and ending alphanumeric.
pub fn check_label_value(s: &str) -> Result<(), NameError> {
    if s.is_empty() || label_chars_ok(s) {
        Ok(())
    } else {
        Err(NameError(format!(
            "invalid label value {s:?}: expected at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )))
    }
}

fn label_chars_ok(s: &str) -> bool {
    s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Checks an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_env_name(s: &str) -> Result<(), NameError> {
    let mut bytes = s.bytes();
    let ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NameError(format!(
            "invalid environment variable name {s:?}: expected letters, digits and '_', not starting with a digit"
        )))
    }
}

/// An object name that is a valid DNS label (apps, services, secrets, replicas).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        check_dns_label(&s)?;
        Ok(Name(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// No name yet: a cron job's job template, named when a run is made (a check refuses it
    /// anywhere else).
    pub fn unnamed() -> Self {
        Name(String::new())
    }
    pub fn is_unnamed(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_names() {
        assert!(check_dns_label("web-1").is_ok());
        for bad in ["", "-web", "web-", "Web", "web_1", "a.b", &"a".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(check_dns_subdomain("pi-1.lan").is_ok());
        assert!(check_dns_subdomain("pi..lan").is_err());
        assert!(check_label_key("bramble.dev/disk").is_ok());
        assert!(check_label_key("disk").is_ok());
        assert!(check_label_key("/disk").is_err());
        assert!(check_label_key("disk!").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("ssd_1.a").is_ok());
        assert!(check_label_value("-x").is_err());
        assert!(check_env_name("_A1").is_ok());
        assert!(check_env_name("1A").is_err());
        assert!(check_env_name("A-B").is_err());
    }
}
