//! TOML manifests: one file may hold many `[[app]]`, `[[service]]` and `[[config]]` objects.
//!
//! Parsing and validation happen here, once. Field types validate themselves while they are
//! deserialized (so the TOML parser knows the exact span of a bad value); checks that span several
//! fields or objects run afterwards and locate their findings in the source text.

mod types;

pub use types::*;

use crate::source::{locate, parse_toml, Seg, SourceError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// Everything one manifest file declares.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default, rename = "app")]
    pub apps: Vec<AppSpec>,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSpec>,
    #[serde(default, rename = "config", skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<ConfigSpec>,
}

/// All problems found in a manifest, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestErrors(pub Vec<SourceError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Parses and validates the manifest `text` read from `file`.
pub fn parse_manifest(file: &str, text: &str) -> Result<Manifest, ManifestErrors> {
    let manifest: Manifest = parse_toml(file, text).map_err(|e| ManifestErrors(vec![e]))?;
    let mut errors = Vec::new();
    let names = manifest.apps.iter().map(|a| (a.name.as_str(), a.check()));
    check_kind(file, text, "app", names, &mut errors);
    let names = manifest.services.iter().map(|s| {
        let mut problems = s.check();
        // A service and its app in one manifest: the ports it names must be the app's.
        if let Some(app) = manifest.apps.iter().find(|a| a.name == s.app) {
            problems.extend(s.check_against(app));
        }
        (s.name.as_str(), problems)
    });
    check_kind(file, text, "service", names, &mut errors);
    let names = manifest.configs.iter().map(|c| (c.name.as_str(), c.check()));
    check_kind(file, text, "config", names, &mut errors);
    if errors.is_empty() {
        Ok(manifest)
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ManifestErrors(errors))
    }
}

/// Reports duplicate names among the objects of one kind, and each object's own problems.
fn check_kind<'a>(
    file: &str,
    text: &str,
    kind: &'static str,
    objects: impl Iterator<Item = (&'a str, Vec<Problem>)>,
    errors: &mut Vec<SourceError>,
) {
    let mut seen = BTreeSet::new();
    for (i, (name, problems)) in objects.enumerate() {
        let mut report = |rest: &[Seg<'_>], field: &str, message: String| {
            let mut path = vec![Seg::Key(kind), Seg::Index(i)];
            path.extend_from_slice(rest);
            errors.push(SourceError::at(file, text, locate(text, &path), &format!("{kind}[{i}].{field}"), message));
        };
        if !seen.insert(name) {
            let message =
                format!("duplicate {kind} name {name:?}: expected each {kind} in a manifest to have its own name");
            report(&[Seg::Key("name")], "name", message);
        }
        for problem in problems {
            let rest: Vec<Seg<'_>> = problem
                .path
                .iter()
                .map(|p| match p {
                    PathPart::Key(k) => Seg::Key(k),
                    PathPart::Index(n) => Seg::Index(*n),
                })
                .collect();
            report(&rest, &problem.field(), problem.message);
        }
    }
}

#[cfg(test)]
mod tests;
