//! `bramble config create|update NAME --from-file KEY=PATH … --from-literal KEY=VALUE …`: a
//! config from files, without writing a manifest (`[[config]]` in a manifest does the same).
//! Apps mount it with `[[app.configs]] name, path [, roll = true]`.

use super::secret::{values, Values};
use crate::client::{request, unexpected, CliError};
use bramble_proto::manifest::ConfigSpec;
use bramble_proto::names::Name;
use bramble_proto::wire::{ApiError, ErrorCode, Request, Response};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Create a config (refused if it exists).
    Create(Values),
    /// Replace a config's files (refused if it does not exist). Running replicas see the new files;
    /// apps that mount it with `roll = true` roll.
    Update(Values),
    /// The clusters this CLI config knows (`*` marks the current one).
    GetContexts,
    /// The cluster commands talk to from now on (`--context NAME` for one command).
    UseContext { name: String },
    /// Add a cluster: its credentials (an admin.toml, a `user create --out` file) copied in.
    AddContext {
        name: String,
        #[arg(long)]
        from: PathBuf,
    },
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let (v, create) = match &args.what {
        What::Create(v) => (v, true),
        What::Update(v) => (v, false),
        What::GetContexts => {
            let rows: Vec<Vec<String>> = crate::contexts::list(&crate::client::config_path(config)?)?
                .into_iter()
                .map(|(current, name, file)| {
                    vec![if current { "*".into() } else { String::new() }, name, file.display().to_string()]
                })
                .collect();
            print!("{}", crate::output::table(&["CURRENT", "NAME", "CREDENTIALS"], &rows));
            return Ok(());
        }
        What::UseContext { name } => {
            crate::contexts::use_context(&crate::client::config_path(config)?, name)?;
            println!("now talking to context {name}");
            return Ok(());
        }
        What::AddContext { name, from } => {
            crate::contexts::add(&crate::client::config_path(config)?, name, from)?;
            println!("context/{name} added");
            return Ok(());
        }
    };
    let name = Name::new(v.name.clone()).map_err(|e| CliError::Other(format!("config name {:?}: {e}", v.name)))?;
    let mut files = std::collections::BTreeMap::new();
    for (k, bytes) in values(v)? {
        let text = String::from_utf8(bytes)
            .map_err(|_| CliError::Other(format!("{k}: a config holds text (UTF-8); put binary data in a secret")))?;
        files.insert(k, text);
    }
    let spec = ConfigSpec { name, files };
    let problems = spec.check();
    if let Some(p) = problems.first() {
        return Err(CliError::Other(format!("config {}: {}", v.name, p.message)));
    }
    let exists = match request(config.clone(), Request::GetConfig { name: v.name.clone() }).await {
        Ok(_) => true,
        Err(CliError::Api(e)) if e.code == ErrorCode::NotFound => false,
        Err(e) => return Err(e),
    };
    match (create, exists) {
        (true, true) => {
            let msg = format!("config {} exists; `bramble config update {}` replaces its files", v.name, v.name);
            return Err(CliError::Api(ApiError::new(ErrorCode::Conflict, msg)));
        }
        (false, false) => {
            let msg = format!("config {} not found; `bramble config create {}` makes it", v.name, v.name);
            return Err(CliError::Api(ApiError::new(ErrorCode::NotFound, msg)));
        }
        _ => {}
    }
    let req = Request::Apply {
        apps: Vec::new(),
        services: Vec::new(),
        configs: vec![spec],
        cronjobs: Vec::new(),
        ingresses: Vec::new(),
        registries: Vec::new(),
        dry_run: false,
    };
    match request(config, req).await? {
        Response::Applied(applied) => {
            for a in applied {
                println!("{a}");
            }
            Ok(())
        }
        r => Err(unexpected(&r)),
    }
}
