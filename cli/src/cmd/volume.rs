//! `bramble volume ls [--node NODE]` and `bramble volume rm NAME --node NODE`: the local volumes
//! agents keep under their data dirs. They outlive their apps until removed here.

use crate::client::{request, unexpected, CliError};
use crate::output::{json, table, Format};
use bramble_proto::quantity::human_bytes;
use bramble_proto::wire::{Request, Response, VolumeOp};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// List local volumes: of one node, or of every connected node.
    Ls {
        #[arg(long)]
        node: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Remove a local volume and its data from a node (refused while a replica there uses it).
    Rm {
        name: String,
        #[arg(long)]
        node: String,
    },
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    match args.action {
        Action::Ls { node, output } => match request(config, Request::Volume { node, op: VolumeOp::Ls }).await? {
            Response::Volumes(list) => {
                if output == Format::Json {
                    print!("{}", json(&list));
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|v| {
                        let used = if v.used_by.is_empty() { "-".to_string() } else { v.used_by.join(",") };
                        vec![
                            v.node.clone(),
                            v.name.clone(),
                            human_bytes(v.size),
                            v.files.to_string(),
                            super::age(v.created_ms),
                            used,
                        ]
                    })
                    .collect();
                print!("{}", table(&["NODE", "NAME", "SIZE", "FILES", "AGE", "USED BY"], &rows));
                Ok(())
            }
            r => Err(unexpected(&r)),
        },
        Action::Rm { name, node } => {
            match request(config, Request::Volume { node: Some(node), op: VolumeOp::Rm { name } }).await? {
                Response::Done(msg) => {
                    println!("{msg}");
                    Ok(())
                }
                r => Err(unexpected(&r)),
            }
        }
    }
}
