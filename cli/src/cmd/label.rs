//! `bramble label node NAME k=v k2-`.

use crate::client::{request, unexpected, CliError};
use bramble_proto::wire::{Request, Response};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    kind: Kind,
    name: String,
    /// `key=value` to set, `key-` to remove.
    #[arg(required = true)]
    changes: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    #[value(alias = "nodes", alias = "no")]
    Node,
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let mut set = BTreeMap::new();
    let mut remove = Vec::new();
    for c in &args.changes {
        if let Some((k, v)) = c.split_once('=') {
            set.insert(k.to_string(), v.to_string());
        } else if let Some(k) = c.strip_suffix('-') {
            remove.push(k.to_string());
        } else {
            return Err(CliError::Other(format!(
                "cannot read {c:?}: expected key=value to set a label or key- to remove one"
            )));
        }
    }
    match request(config, Request::LabelNode { name: args.name, set, remove }).await? {
        Response::Done(m) => {
            println!("{m}");
            Ok(())
        }
        r => Err(unexpected(&r)),
    }
}
