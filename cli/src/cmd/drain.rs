//! `bramble drain NODE [--timeout 5m] [--include-every-board]`: cordons the node, then the leader
//! moves its replicas away one app at a time — each new copy ready before the old one stops,
//! never below an app's `min_available` — while this waits and says what is happening. It ends
//! when the node is drained (exit 0), or at the timeout saying which app blocks and why (exit 1;
//! the drain goes on in the leader until `bramble uncordon NODE`).

use crate::client::{request, unexpected, CliError};
use crate::output::{json, Format};
use bramble_proto::model::{ConditionStatus, NodeView};
use bramble_proto::quantity::HumanDuration;
use bramble_proto::wire::{Request, Response};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// The node.
    name: String,
    /// How long to wait for the drain (it goes on in the leader after this).
    #[arg(long, default_value = "5m")]
    timeout: HumanDuration,
    /// Move every-board apps' replicas off it too (by default they stay).
    #[arg(long)]
    include_every_board: bool,
    /// Start the drain and return at once.
    #[arg(long)]
    no_wait: bool,
    /// `json`: the node's last state (its `Draining` condition says how it ended).
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let name = args.name.clone();
    let started =
        request(config.clone(), Request::Drain { name: name.clone(), include_every_board: args.include_every_board });
    match started.await? {
        Response::Done(m) if args.output != Format::Json => eprintln!("{m}"),
        Response::Done(_) => {}
        r => return Err(unexpected(&r)),
    }
    if args.no_wait {
        return Ok(());
    }
    let deadline = Instant::now() + args.timeout.0;
    let mut said = String::new();
    loop {
        let view = match request(config.clone(), Request::GetNode { name: name.clone() }).await? {
            Response::Node { node, .. } => *node,
            r => return Err(unexpected(&r)),
        };
        let (reason, message) = draining(&view);
        let line = format!("{reason}: {message}");
        if line != said && args.output != Format::Json {
            eprintln!("{line}");
            said = line;
        }
        if reason == "Drained" {
            if args.output == Format::Json {
                print!("{}", json(&view));
            } else {
                println!("node/{name} drained");
            }
            return Ok(());
        }
        if reason == "Stopped" || Instant::now() >= deadline {
            if args.output == Format::Json {
                print!("{}", json(&view));
            }
            let why = if reason == "Stopped" {
                format!("the drain of {name} was stopped (uncordoned)")
            } else {
                format!(
                    "node/{name} not drained after {}: {message} (the leader goes on; `bramble uncordon {name}` stops it)",
                    args.timeout
                )
            };
            return Err(CliError::Other(why));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The node's `Draining` condition: its reason (`Starting`, `Moving`, `Blocked`, `Drained`) and
/// message; `Stopped` once it has none.
fn draining(view: &NodeView) -> (String, String) {
    view.conditions
        .iter()
        .find(|c| c.kind == "Draining" && c.status == ConditionStatus::True)
        .map_or_else(|| ("Stopped".into(), String::new()), |c| (c.reason.clone(), c.message.clone()))
}
