//! `bramble delete app NAME…`, `bramble delete app -l SELECTOR` or `bramble delete -f FILE`: all or
//! nothing.

use crate::client::{request, unexpected, CliError};
use bramble_proto::wire::{Request, Response};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// `app`, `job`, `cronjob` (with its jobs), `service`, `secret`, `config`, `ingress`, `registry`
    /// or `node`, then names; or use -f.
    #[arg(value_name = "KIND NAME")]
    what: Vec<String>,
    /// Delete what these manifests declare.
    #[arg(short = 'f', long = "filename")]
    files: Vec<String>,
    /// Delete the apps whose labels match (`tier=web,env!=prod`), in the same all-or-nothing request.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    selector: Option<bramble_proto::selector::Selector>,
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let (mut apps, mut services, mut secrets, mut configs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut cronjobs, mut ingresses, mut registries) = (Vec::new(), Vec::new(), Vec::new());
    if !args.files.is_empty() {
        let m = super::apply::load(&args.files)?;
        apps.extend(m.apps.iter().map(|a| a.name.to_string()));
        services.extend(m.services.iter().map(|s| s.name.to_string()));
        configs.extend(m.configs.iter().map(|c| c.name.to_string()));
        cronjobs.extend(m.cronjobs.iter().map(|c| c.name.to_string()));
        ingresses.extend(m.ingresses.iter().map(|i| i.name.to_string()));
        registries.extend(m.registries.iter().map(|r| r.name.to_string()));
    }
    if let Some(sel) = &args.selector {
        if sel.is_empty()
            || !matches!(args.what.as_slice(), [] | [_])
            || !matches!(args.what.first().map(String::as_str), None | Some("app" | "apps"))
        {
            return Err(CliError::Other("delete -l SELECTOR deletes apps: `bramble delete app -l tier=web`".into()));
        }
        let chosen: Vec<String> = match request(config.clone(), Request::GetApps).await? {
            Response::Apps(a) => a.into_iter().filter(|a| sel.matches(&a.spec.labels)).map(|a| a.meta.name).collect(),
            r => return Err(unexpected(&r)),
        };
        if chosen.is_empty() {
            println!("no app matches {sel}");
            return Ok(());
        }
        apps.extend(chosen);
    } else if let Some((kind, names)) = args.what.split_first() {
        if names.is_empty() {
            return Err(CliError::Other(format!("delete {kind}: expected one or more names")));
        }
        if matches!(kind.as_str(), "node" | "nodes") {
            return delete_nodes(config, names).await;
        }
        match kind.as_str() {
            // A job is an app that runs to completion: deleting it stops its runs and drops them.
            "app" | "apps" | "job" | "jobs" => apps.extend(names.iter().cloned()),
            "service" | "services" | "svc" => services.extend(names.iter().cloned()),
            "secret" | "secrets" => secrets.extend(names.iter().cloned()),
            "config" | "configs" => configs.extend(names.iter().cloned()),
            // Its jobs go with it.
            "cronjob" | "cronjobs" | "cj" => cronjobs.extend(names.iter().cloned()),
            "ingress" | "ingresses" | "ing" => ingresses.extend(names.iter().cloned()),
            "registry" | "registries" | "reg" => registries.extend(names.iter().cloned()),
            other => {
                return Err(CliError::Other(format!(
                    "cannot delete {other:?}: expected app, job, cronjob, service, secret, config, ingress, registry or node"
                )))
            }
        }
    }
    if apps.is_empty()
        && services.is_empty()
        && secrets.is_empty()
        && configs.is_empty()
        && cronjobs.is_empty()
        && ingresses.is_empty()
        && registries.is_empty()
    {
        return Err(CliError::Other("nothing to delete: give `app NAME` or -f FILE".into()));
    }
    match request(config, Request::Delete { apps, services, secrets, configs, cronjobs, ingresses, registries }).await?
    {
        Response::Done(m) => {
            println!("{m}");
            Ok(())
        }
        r => Err(unexpected(&r)),
    }
}

/// Removes boards from the cluster (their pod subnets are released; their replicas move).
async fn delete_nodes(config: Option<PathBuf>, names: &[String]) -> Result<(), CliError> {
    for name in names {
        match request(config.clone(), Request::DeleteNode { name: name.clone() }).await? {
            Response::Done(m) => println!("{m}"),
            r => return Err(unexpected(&r)),
        }
    }
    Ok(())
}
