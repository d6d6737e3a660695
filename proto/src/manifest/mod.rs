//! TOML manifests: one file may hold many `[[app]]`, `[[job]]`, `[[cronjob]]`, `[[service]]`,
//! `[[config]]`, `[[ingress]]` and `[[registry]]` objects. A job is an app whose mode is `job` (its pod fields are an app's): the leader keeps
//! both as apps.
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
    /// `[[job]]`: apps with `mode = "job"` (set by the parser).
    #[serde(default, rename = "job", skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<AppSpec>,
    /// `[[cronjob]]`: jobs made on a schedule.
    #[serde(default, rename = "cronjob", skip_serializing_if = "Vec::is_empty")]
    pub cronjobs: Vec<CronJobSpec>,
    /// `[[ingress]]`: web apps by host name from the LAN.
    #[serde(default, rename = "ingress", skip_serializing_if = "Vec::is_empty")]
    pub ingresses: Vec<IngressSpec>,
    /// `[[registry]]`: credentials, plain HTTP and mirrors for a registry host (admins only).
    #[serde(default, rename = "registry", skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<RegistrySpec>,
}

impl Manifest {
    /// Apps and jobs: what an apply sends as apps.
    pub fn all_apps(&self) -> impl Iterator<Item = &AppSpec> {
        self.apps.iter().chain(&self.jobs)
    }
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
    let mut manifest: Manifest = parse_toml(file, text).map_err(|e| ManifestErrors(vec![e]))?;
    let mut errors = Vec::new();
    let names = manifest.apps.iter().map(|a| {
        let mut problems = a.check();
        if a.is_job() {
            problems.push(Problem::new(vec![PathPart::Key("mode")], "a job is written as [[job]]"));
        }
        (a.name.as_str(), problems)
    });
    check_kind(file, text, "app", names, &mut errors);
    let mut modes = Vec::new();
    for j in &mut manifest.jobs {
        modes.push(j.mode);
        j.mode = AppMode::Job;
    }
    let names = manifest.jobs.iter().zip(modes).map(|(j, mode)| {
        let mut problems = j.check();
        if !matches!(mode, AppMode::Replicated | AppMode::Job) {
            problems.push(Problem::new(vec![PathPart::Key("mode")], "a job has no mode: it runs to completion"));
        }
        (j.name.as_str(), problems)
    });
    check_kind(file, text, "job", names, &mut errors);
    for j in &manifest.jobs {
        if manifest.apps.iter().any(|a| a.name == j.name) {
            let i = manifest.jobs.iter().position(|x| x.name == j.name).unwrap_or(0);
            let path = [Seg::Key("job"), Seg::Index(i), Seg::Key("name")];
            let message = format!("app {:?} has this name too: a job and an app share their names", j.name.as_str());
            errors.push(SourceError::at(file, text, locate(text, &path), &format!("job[{i}].name"), message));
        }
    }
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
    let names = manifest.cronjobs.iter().map(|c| (c.name.as_str(), c.check()));
    check_kind(file, text, "cronjob", names, &mut errors);
    let names = manifest.ingresses.iter().map(|i| (i.name.as_str(), i.check()));
    check_kind(file, text, "ingress", names, &mut errors);
    let names = manifest.registries.iter().map(|r| {
        let mut problems = r.check();
        if manifest.registries.iter().filter(|o| o.host == r.host).count() > 1 {
            problems
                .push(Problem::new(vec![PathPart::Key("host")], format!("{} has two [[registry]] objects", r.host)));
        }
        (r.name.as_str(), problems)
    });
    check_kind(file, text, "registry", names, &mut errors);
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
