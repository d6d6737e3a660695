//! `bramble token create [--ttl 24h] [--single-use]` (prints only the token, so scripts can capture
//! it), `token ls`, `token revoke ID`.

use crate::client::{request, unexpected, CliError};
use crate::output::{json, table, Format};
use bramble_proto::quantity::{format_duration, HumanDuration};
use bramble_proto::wire::{Request, Response};
use std::path::PathBuf;
use std::time::Duration;

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
        /// The token is gone once one board has joined with it.
        #[arg(long)]
        single_use: bool,
    },
    /// List join tokens: id, age, when they expire (never their secrets).
    Ls {
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Revoke a join token: no board joins with it any more (boards that joined stay).
    Revoke { id: String },
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    match args.action {
        Action::Create { ttl, single_use } => {
            match request(config, Request::CreateToken { ttl_secs: ttl.0.as_secs(), single_use }).await? {
                Response::Token { token, .. } => {
                    println!("{token}");
                    Ok(())
                }
                r => Err(unexpected(&r)),
            }
        }
        Action::Ls { output } => {
            let tokens = match request(config, Request::GetTokens).await? {
                Response::Tokens(t) => t,
                r => return Err(unexpected(&r)),
            };
            if output == Format::Json {
                print!("{}", json(&tokens));
                return Ok(());
            }
            let now = super::now_ms();
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    let expires = if t.expired {
                        "expired".to_string()
                    } else {
                        format!("in {}", format_duration(Duration::from_secs(t.expires_ms.saturating_sub(now) / 1000)))
                    };
                    let uses = if t.single_use { "once" } else { "until it expires" };
                    vec![t.id.clone(), super::age(t.created_ms), expires, uses.to_string()]
                })
                .collect();
            print!("{}", table(&["ID", "AGE", "EXPIRES", "USES"], &rows));
            Ok(())
        }
        Action::Revoke { id } => match request(config, Request::RevokeToken { id }).await? {
            Response::Done(m) => {
                println!("{m}");
                Ok(())
            }
            r => Err(unexpected(&r)),
        },
    }
}
