//! `bramble get nodes`.

use crate::client::{request, unexpected, CliError};
use crate::output::{json, table, Format};
use bramble_proto::quantity::human_bytes;
use bramble_proto::wire::{Request, Response};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// What to list.
    kind: Kind,
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    #[value(alias = "node", alias = "no")]
    Nodes,
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let Kind::Nodes = args.kind;
    let nodes = match request(config, Request::GetNodes).await? {
        Response::Nodes(n) => n,
        r => return Err(unexpected(&r)),
    };
    if args.output == Format::Json {
        print!("{}", json(&nodes));
        return Ok(());
    }
    let wide = args.output == Format::Wide;
    let mut header = vec!["NAME", "STATUS", "ARCH", "CPU", "MEMORY", "AGE", "VERSION"];
    if wide {
        header.extend(["ADDRESS", "OS", "KERNEL"]);
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|v| {
            let n = &v.node;
            let mut row = vec![
                n.meta.name.clone(),
                v.status_text(),
                n.info.arch.to_string(),
                bramble_proto::quantity::Cpu(n.info.allocatable.cpu_millis).to_string(),
                human_bytes(n.info.allocatable.memory_bytes),
                super::age(n.meta.created_ms),
                n.info.agent_version.clone(),
            ];
            if wide {
                row.push(
                    v.session_address
                        .clone()
                        .or_else(|| n.info.addresses.first().cloned())
                        .unwrap_or_else(|| "-".into()),
                );
                row.push(n.info.os.clone());
                row.push(n.info.kernel.clone());
            }
            row
        })
        .collect();
    print!("{}", table(&header, &rows));
    Ok(())
}
