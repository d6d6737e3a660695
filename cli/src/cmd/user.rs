//! `bramble user create NAME --role admin|deployer|viewer [--ttl 90d] --out FILE`, `user ls`,
//! `user revoke NAME`. The key is made here and never leaves this machine: the leader signs a
//! CSR, and the new CLI config (leaders, CA, certificate, key) is written to FILE (0600).

use crate::client::{load_config, request, unexpected, CliError};
use crate::output::{json, table, Format};
use bramble_proto::quantity::{format_duration, HumanDuration};
use bramble_proto::wire::{Request, Response};
use bramble_transport::admin::{AdminConfig, ADMIN_CONFIG_VERSION};
use bramble_transport::pki::Role;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Make a user and write a CLI config with its certificate (viewer: get, describe, logs,
    /// events; deployer: that plus apply, diff, scale, rollout, deleting apps, services and
    /// secrets, writing secrets; admin: everything).
    Create {
        name: String,
        #[arg(long)]
        role: Role,
        /// How long its certificate is valid (1m to 1825d).
        #[arg(long, default_value = "90d")]
        ttl: HumanDuration,
        /// Where to write the new CLI config (refused if it exists): --out FILE.
        #[command(flatten)]
        output_file: super::OutFile,
    },
    /// List users: role, age, expiry, revoked or not, who made them.
    Ls {
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Revoke a user's certificate: the leader refuses it from the next connection on.
    Revoke { name: String },
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    match args.action {
        Action::Create { name, role, ttl, output_file } => {
            let output_file = output_file
                .path()
                .ok_or_else(|| CliError::Other("bramble user create: give --out FILE for the new CLI config".into()))?;
            let (mine, _) = load_config(config.clone())?;
            let (csr_pem, key_pem) =
                bramble_transport::pki::user_csr(&name).map_err(|e| CliError::Other(e.to_string()))?;
            // Made before asking, so a file that cannot be written costs no certificate.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&output_file)
                .map_err(|e| CliError::Other(format!("{}: {e}", output_file.display())))?;
            let req =
                Request::CreateUser { name: name.clone(), role: role.to_string(), ttl_secs: ttl.0.as_secs(), csr_pem };
            let answer = request(config, req).await;
            let (cert_pem, ca_pem, expires_ms) = match answer {
                Ok(Response::User { cert_pem, ca_pem, expires_ms }) => (cert_pem, ca_pem, expires_ms),
                Ok(r) => {
                    let _ = std::fs::remove_file(&output_file);
                    return Err(unexpected(&r));
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&output_file);
                    return Err(e);
                }
            };
            let cfg = AdminConfig {
                version: ADMIN_CONFIG_VERSION,
                leaders: mine.leaders,
                ca: ca_pem,
                cert: cert_pem,
                key: key_pem,
            };
            file.write_all(cfg.render().as_bytes())
                .map_err(|e| CliError::Other(format!("{}: {e}", output_file.display())))?;
            let left = Duration::from_secs(expires_ms.saturating_sub(super::now_ms()) / 1000);
            println!(
                "user/{name} created ({role}, valid for {}); its CLI config is {}",
                format_duration(left),
                output_file.display()
            );
            Ok(())
        }
        Action::Ls { output } => {
            let users = match request(config, Request::GetUsers).await? {
                Response::Users(u) => u,
                r => return Err(unexpected(&r)),
            };
            if output == Format::Json {
                print!("{}", json(&users));
                return Ok(());
            }
            let now = super::now_ms();
            let rows: Vec<Vec<String>> = users
                .iter()
                .map(|u| {
                    let state = match (u.revoked_ms, u.expired) {
                        (Some(at), _) => format!("revoked {} ago", super::age(at)),
                        (None, true) => "expired".to_string(),
                        (None, false) => format!(
                            "expires in {}",
                            format_duration(Duration::from_secs(u.expires_ms.saturating_sub(now) / 1000))
                        ),
                    };
                    vec![u.name.clone(), u.role.clone(), super::age(u.created_ms), state, u.created_by.clone()]
                })
                .collect();
            print!("{}", table(&["NAME", "ROLE", "AGE", "STATE", "CREATED BY"], &rows));
            Ok(())
        }
        Action::Revoke { name } => match request(config, Request::RevokeUser { name }).await? {
            Response::Done(m) => {
                println!("{m}");
                Ok(())
            }
            r => Err(unexpected(&r)),
        },
    }
}
