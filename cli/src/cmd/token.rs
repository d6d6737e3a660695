//! `bramble token create [--ttl 24h]`: prints only the token, so scripts can capture it.

use crate::client::{request, unexpected, CliError};
use bramble_proto::quantity::HumanDuration;
use bramble_proto::wire::{Request, Response};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Create a join token.
    Create {
        /// How long the token stays valid (1m to 365d).
        #[arg(long, default_value = "24h")]
        ttl: HumanDuration,
    },
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let Action::Create { ttl } = args.action;
    match request(config, Request::CreateToken { ttl_secs: ttl.0.as_secs() }).await? {
        Response::Token { token, .. } => {
            println!("{token}");
            Ok(())
        }
        r => Err(unexpected(&r)),
    }
}
