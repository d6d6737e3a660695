//! `bramble scale app NAME --replicas N`.

use crate::client::{request, unexpected, CliError};
use bramble_proto::wire::{Request, Response};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    kind: Kind,
    name: String,
    /// The replica count wanted (0 to 1000).
    #[arg(long)]
    replicas: u32,
    /// Refuse if the app is no longer at this generation (someone changed it since you looked).
    #[arg(long)]
    generation: Option<u64>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    #[value(alias = "apps")]
    App,
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let Kind::App = args.kind;
    let req = Request::Scale { app: args.name, replicas: args.replicas, expect_generation: args.generation };
    match request(config, req).await? {
        Response::Done(msg) => {
            println!("{msg}");
            Ok(())
        }
        r => Err(unexpected(&r)),
    }
}
