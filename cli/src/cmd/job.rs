//! `bramble job run NAME --from cronjob/NAME`: a cron job's job, now.

use crate::client::{request, unexpected, CliError};
use crate::output::{json, Format};
use bramble_proto::wire::{Request, Response};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Make job NAME at once from a cron job's template (its schedule and last run are left as
    /// they are; its history counts the job): `bramble job run backup-now --from cronjob/backup`.
    Run {
        /// The new job's name (a DNS label no app or job has).
        name: String,
        /// `cronjob/NAME`: the cron job whose template it runs.
        #[arg(long, value_name = "cronjob/NAME")]
        from: String,
        /// `json` prints `{"job": NAME, "from": "cronjob/NAME"}` for scripts.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let Command::Run { name, from, output } = args.command;
    let Some(cronjob) = from.strip_prefix("cronjob/").filter(|c| !c.is_empty()) else {
        return Err(CliError::Other(format!("--from {from:?}: expected cronjob/NAME")));
    };
    let req = Request::RunCronJob { cronjob: cronjob.to_string(), name: name.clone() };
    match request(config, req).await? {
        Response::Done(_) if output == Format::Json => {
            print!("{}", json(&serde_json::json!({ "job": name, "from": from })));
            Ok(())
        }
        Response::Done(msg) => {
            println!("{msg}");
            Ok(())
        }
        r => Err(unexpected(&r)),
    }
}
