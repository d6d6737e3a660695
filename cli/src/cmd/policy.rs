//! `bramble policy allow APP --cap-add NET_ADMIN [--seccomp-unconfined] [--control-plane]
//! [--host-network]`,
//! `policy ls`, `policy rm APP`: what an admin lets deployers ask for in one app. Without a
//! policy, only an admin may apply an app with more than the defaults.

use crate::client::{request, unexpected, CliError};
use crate::output::{json, table, Format};
use bramble_proto::manifest::CapName;
use bramble_proto::wire::{Request, Response};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Let deployers apply APP with these privileges (replaces what was allowed).
    Allow {
        app: String,
        /// Capabilities beyond the defaults, comma-separated (`NET_ADMIN,SYS_RAWIO`).
        #[arg(long, value_delimiter = ',')]
        cap_add: Vec<CapName>,
        /// `security.seccomp = "unconfined"`.
        #[arg(long)]
        seccomp_unconfined: bool,
        /// `security.control_plane = true`.
        #[arg(long)]
        control_plane: bool,
        /// `host_network = true`: the board's network namespace, its ports the board's own.
        #[arg(long)]
        host_network: bool,
    },
    /// The policies: app, what it may have, who set it.
    Ls {
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Take APP's policy away (what runs is left alone; its next privileged apply needs an admin).
    Rm { app: String },
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let req = match args.cmd {
        Cmd::Allow { app, cap_add, seccomp_unconfined, control_plane, host_network } => {
            Request::AllowPrivileges { app, cap_add, seccomp_unconfined, control_plane, host_network }
        }
        Cmd::Rm { app } => Request::DeletePolicy { app },
        Cmd::Ls { output } => {
            let list = match request(config, Request::GetPolicies).await? {
                Response::Policies(p) => p,
                r => return Err(unexpected(&r)),
            };
            if output == Format::Json {
                print!("{}", json(&list));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|p| {
                    let caps: Vec<&str> = p.cap_add.iter().map(|c| c.as_str()).collect();
                    vec![
                        p.meta.name.clone(),
                        if caps.is_empty() { "-".into() } else { caps.join(",") },
                        if p.seccomp_unconfined { "unconfined" } else { "default" }.into(),
                        p.control_plane.to_string(),
                        p.host_network.to_string(),
                        p.meta.changed_by.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!("{}", table(&["APP", "CAP_ADD", "SECCOMP", "CONTROL_PLANE", "HOST_NETWORK", "BY"], &rows));
            return Ok(());
        }
    };
    match request(config, req).await? {
        Response::Done(m) => {
            println!("{m}");
            Ok(())
        }
        r => Err(unexpected(&r)),
    }
}
