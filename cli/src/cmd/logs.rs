//! `bramble logs REPLICA|app/NAME|job/NAME [-c CONTAINER] [-f] [--tail N] [--since 10m]`: output streamed from the
//! agents through the leader.

use crate::client::{stream, unexpected, CliError};
use bramble_proto::quantity::HumanDuration;
use bramble_proto::wire::{LogRequest, Request, Response};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A replica name, or app/NAME (job/NAME) for every replica of an app (every run of a job),
    /// lines prefixed with the replica.
    target: String,
    /// Keep printing new output.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<u64>,
    /// Only output newer than this (e.g. 10m).
    #[arg(long)]
    since: Option<HumanDuration>,
    /// Which container of each replica (`[[app.containers]]` or `[[app.init]]` by name; default:
    /// the app's own).
    #[arg(short = 'c', long)]
    container: Option<String>,
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    // A job's runs are its app's replicas.
    let target = match args.target.strip_prefix("job/") {
        Some(name) => format!("app/{name}"),
        None => args.target,
    };
    let prefix = target.starts_with("app/");
    let req = LogRequest {
        target,
        tail: args.tail,
        since_ms: args.since.map(|d| super::now_ms().saturating_sub(d.0.as_millis() as u64)),
        follow: args.follow,
        container: args.container,
    };
    let mut out = std::io::stdout().lock();
    stream(config, Request::Logs(req), |r| match r {
        Response::Log { replica, lines } => {
            for l in lines {
                let written = if prefix { writeln!(out, "[{replica}] {l}") } else { writeln!(out, "{l}") };
                written.map_err(|e| CliError::Other(format!("cannot write the output: {e}")))?;
            }
            out.flush().map_err(|e| CliError::Other(format!("cannot write the output: {e}")))
        }
        r => Err(unexpected(&r)),
    })
    .await
}
