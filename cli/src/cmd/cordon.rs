//! `bramble cordon NAME` and `bramble uncordon NAME`.

use crate::client::{request, unexpected, CliError};
use bramble_proto::wire::{Request, Response};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The node.
    name: String,
}

pub async fn run(config: Option<PathBuf>, args: Args, cordoned: bool) -> Result<(), CliError> {
    match request(config, Request::SetCordon { name: args.name, cordoned }).await? {
        Response::Done(m) => {
            println!("{m}");
            Ok(())
        }
        r => Err(unexpected(&r)),
    }
}
