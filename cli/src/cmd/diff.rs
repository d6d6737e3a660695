//! `bramble diff -f FILE|DIR|-`: what applying the manifests would change, per object (app, job,
//! service, config, cron job, ingress, registry), as a unified diff of the stored spec and the new one (both as TOML, defaults
//! written out; a job as `[[job]]`). Exit 0: nothing would change; 1: something would (kubectl's
//! convention); above 1: an error.

use super::apply::load;
use crate::client::{request, unexpected, CliError};
use crate::output::{json, Format};
use bramble_proto::manifest::{AppSpec, ConfigSpec, CronJobSpec, IngressSpec, ServiceSpec};
use bramble_proto::wire::{Request, Response};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or directories (`*.toml` inside), or `-` for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// `json`: one entry per object with its change and diff.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

/// One object's difference.
#[derive(Debug, Serialize)]
struct ObjectDiff {
    kind: &'static str,
    name: String,
    /// `create`, `update` or `none`.
    change: &'static str,
    /// The unified diff (empty when nothing changes).
    diff: String,
}

#[derive(Serialize)]
struct AppDoc<'a> {
    app: [&'a AppSpec; 1],
}

#[derive(Serialize)]
struct JobDoc<'a> {
    job: [&'a AppSpec; 1],
}

/// An app, or a job as `[[job]]` writes it (the mode is the table's name).
fn app_toml(s: &AppSpec) -> Result<String, CliError> {
    if s.is_job() {
        let plain = AppSpec { mode: Default::default(), ..s.clone() };
        toml_of(&JobDoc { job: [&plain] })
    } else {
        toml_of(&AppDoc { app: [s] })
    }
}

#[derive(Serialize)]
struct ServiceDoc<'a> {
    service: [&'a ServiceSpec; 1],
}

#[derive(Serialize)]
struct CronJobDoc<'a> {
    cronjob: [&'a CronJobSpec; 1],
}

#[derive(Serialize)]
struct IngressDoc<'a> {
    ingress: [&'a IngressSpec; 1],
}

#[derive(Serialize)]
struct RegistryDoc<'a> {
    registry: [&'a bramble_proto::manifest::RegistrySpec; 1],
}

#[derive(Serialize)]
struct ConfigDoc<'a> {
    config: [&'a ConfigSpec; 1],
}

/// An object as a manifest would hold it.
fn toml_of<T: Serialize>(doc: &T) -> Result<String, CliError> {
    toml::to_string(doc).map_err(|e| CliError::Other(format!("cannot show a spec as TOML: {e}")))
}

/// The difference between `stored` and `new` (equal specs: none, as the leader decides it).
fn compare<S: PartialEq>(
    kind: &'static str,
    name: &str,
    stored: Option<&S>,
    new: &S,
    text: impl Fn(&S) -> Result<String, CliError>,
) -> Result<ObjectDiff, CliError> {
    let label = format!("{kind}/{name}");
    let (change, diff) = match stored {
        None => ("create", crate::diff::unified("/dev/null", &format!("{label} (new)"), "", &text(new)?)),
        Some(s) if s == new => ("none", None),
        Some(s) => (
            "update",
            crate::diff::unified(&format!("{label} (stored)"), &format!("{label} (new)"), &text(s)?, &text(new)?),
        ),
    };
    Ok(ObjectDiff { kind, name: name.to_string(), change, diff: diff.unwrap_or_default() })
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let m = load(&args.files)?;
    let apps = match request(config.clone(), Request::GetApps).await? {
        Response::Apps(a) => a,
        r => return Err(unexpected(&r)),
    };
    let services = match request(config.clone(), Request::GetServices).await? {
        Response::Services(s) => s,
        r => return Err(unexpected(&r)),
    };
    let configs = if m.configs.is_empty() {
        Vec::new()
    } else {
        match request(config.clone(), Request::GetConfigs).await? {
            Response::Configs(c) => c,
            r => return Err(unexpected(&r)),
        }
    };
    let cronjobs = if m.cronjobs.is_empty() {
        Vec::new()
    } else {
        match request(config.clone(), Request::GetCronJobs).await? {
            Response::CronJobs(c) => c,
            r => return Err(unexpected(&r)),
        }
    };
    let registries = if m.registries.is_empty() {
        Vec::new()
    } else {
        match request(config.clone(), Request::GetRegistries).await? {
            Response::Registries(r) => r,
            r => return Err(unexpected(&r)),
        }
    };
    let ingresses = if m.ingresses.is_empty() {
        Vec::new()
    } else {
        match request(config, Request::GetIngresses).await? {
            Response::Ingresses(i) => i,
            r => return Err(unexpected(&r)),
        }
    };
    let mut diffs = Vec::new();
    for a in &m.apps {
        let stored = apps.iter().find(|s| s.spec.name == a.name).map(|s| &s.spec);
        diffs.push(compare(a.kind_word(), a.name.as_str(), stored, a, app_toml)?);
    }
    for s in &m.services {
        let stored = services.iter().find(|v| v.spec.name == s.name).map(|v| &v.spec);
        diffs.push(compare("service", s.name.as_str(), stored, s, |v| toml_of(&ServiceDoc { service: [v] }))?);
    }
    for c in &m.configs {
        let stored = configs.iter().find(|v| v.spec.name == c.name).map(|v| &v.spec);
        diffs.push(compare("config", c.name.as_str(), stored, c, |v| toml_of(&ConfigDoc { config: [v] }))?);
    }
    for c in &m.cronjobs {
        let stored = cronjobs.iter().find(|v| v.cronjob.spec.name == c.name).map(|v| &v.cronjob.spec);
        diffs.push(compare("cronjob", c.name.as_str(), stored, c, |v| toml_of(&CronJobDoc { cronjob: [v] }))?);
    }
    for i in &m.ingresses {
        let stored = ingresses.iter().find(|v| v.spec.name == i.name).map(|v| &v.spec);
        diffs.push(compare("ingress", i.name.as_str(), stored, i, |v| toml_of(&IngressDoc { ingress: [v] }))?);
    }
    for r in &m.registries {
        let stored = registries.iter().find(|v| v.spec.name == r.name).map(|v| &v.spec);
        diffs.push(compare("registry", r.name.as_str(), stored, r, |v| toml_of(&RegistryDoc { registry: [v] }))?);
    }
    if args.output == Format::Json {
        print!("{}", json(&diffs));
    } else {
        for d in diffs.iter().filter(|d| d.change != "none") {
            print!("{}", d.diff);
        }
    }
    if diffs.iter().any(|d| d.change != "none") {
        // Not an error: the exit code says that something would change.
        return Err(CliError::Exit(1));
    }
    Ok(())
}
