//! `bramble secret create|update NAME --from-literal KEY=VALUE … --from-file KEY=PATH …`: values go
//! to the leader, which seals them before they are stored; nothing ever reads them back (`get
//! secrets` and `describe secret` show keys and sizes). `bramble secret allow NAME --apps a,b`
//! (admins) says which apps may use it: apply refuses any other.

use crate::client::{request, unexpected, CliError};
use bramble_proto::wire::{Request, Response};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Create a secret (refused if it exists).
    Create(Values),
    /// Replace a secret's keys and values (refused if it does not exist).
    Update(Values),
    /// Which apps may use the secret (admins only): apply refuses an app that names it otherwise.
    /// Whoever may create an app may otherwise mount any secret in it and read it.
    Allow(Allow),
}

#[derive(clap::Args)]
pub(super) struct Allow {
    name: String,
    /// The apps that may use it, comma-separated (an empty list: none).
    #[arg(long, value_delimiter = ',', conflicts_with = "any_app", required_unless_present = "any_app")]
    apps: Option<Vec<String>>,
    /// Any app may use it again (the default of a new secret).
    #[arg(long)]
    any_app: bool,
}

#[derive(clap::Args)]
pub(super) struct Values {
    pub(super) name: String,
    /// A key and its value: `password=s3cret` (shell history keeps it: prefer --from-file).
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    literal: Vec<String>,
    /// A key and a file whose bytes are its value: `tls.key=./server.key`.
    #[arg(long = "from-file", value_name = "KEY=PATH")]
    file: Vec<String>,
}

/// The key → value map the flags give; a key given twice is an error.
pub(super) fn values(v: &Values) -> Result<BTreeMap<String, Vec<u8>>, CliError> {
    let mut out = BTreeMap::new();
    let pairs = v.literal.iter().map(|s| (s, false)).chain(v.file.iter().map(|s| (s, true)));
    for (arg, is_file) in pairs {
        let flag = if is_file { "--from-file" } else { "--from-literal" };
        let (key, rest) = arg.split_once('=').filter(|(k, _)| !k.is_empty()).ok_or_else(|| {
            CliError::Other(format!("{flag} {arg:?}: expected KEY={}", if is_file { "PATH" } else { "VALUE" }))
        })?;
        let value = if is_file {
            std::fs::read(rest).map_err(|e| CliError::Other(format!("{flag} {key}: cannot read {rest}: {e}")))?
        } else {
            rest.as_bytes().to_vec()
        };
        if out.insert(key.to_string(), value).is_some() {
            return Err(CliError::Other(format!("key {key:?} is given twice")));
        }
    }
    Ok(out)
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let (v, create) = match &args.what {
        What::Create(v) => (v, true),
        What::Update(v) => (v, false),
        What::Allow(a) => {
            let apps = a.apps.clone().map(|l| l.into_iter().filter(|s| !s.is_empty()).collect());
            return match request(config, Request::AllowSecret { name: a.name.clone(), apps }).await? {
                Response::Done(m) => {
                    println!("{m}");
                    Ok(())
                }
                r => Err(unexpected(&r)),
            };
        }
    };
    let req =
        Request::PutSecret { name: v.name.clone(), values: bramble_proto::wire::SecretValues(values(v)?), create };
    match request(config, req).await? {
        Response::Done(m) => {
            println!("{m}");
            Ok(())
        }
        r => Err(unexpected(&r)),
    }
}
