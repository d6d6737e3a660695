//! `bramble backup --out FILE --passphrase-file P` (admins): one consistent snapshot of the cluster —
//! every object, the CA and its key, the secrets key, the leader's configs — sealed here with the
//! passphrase (it never leaves this machine) and written atomically (0600).
//! `bramble backup inspect FILE --passphrase-file P`: what a backup holds, without restoring it.
//! Restore with `bramble-leader restore --data-dir DIR --passphrase-file P FILE`.

use crate::client::{request, unexpected, CliError};
use crate::output::{json, Format};
use bramble_proto::wire::{Request, Response};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    inspect: Option<Inspect>,
    /// Where to write the backup: --out FILE.
    #[command(flatten)]
    output_file: super::OutFile,
    /// A file whose first line is the passphrase (at least 8 bytes).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Inspect {
    /// What a backup holds: cluster, CA, when, objects per kind.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        passphrase_file: PathBuf,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
}

fn passphrase(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    Ok(text.lines().next().unwrap_or("").as_bytes().to_vec())
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    if let Some(Inspect::Inspect { file, passphrase_file, output }) = args.inspect {
        let bytes = std::fs::read(&file).map_err(|e| CliError::Other(format!("{}: {e}", file.display())))?;
        let s = bramble_transport::backup::open(&bytes, &passphrase(&passphrase_file)?)
            .map_err(|e| CliError::Other(format!("{}: {e}", file.display())))?;
        let counts = s.counts();
        if output == Format::Json {
            let v = serde_json::json!({
                "cluster": s.cluster_name, "ca_fingerprint": s.ca_fingerprint, "created_ms": s.created_ms,
                "revision": s.revision, "objects": counts, "admin_config": s.admin_toml.is_some(),
            });
            print!("{}", json(&v));
            return Ok(());
        }
        println!("Cluster:     {}", s.cluster_name);
        println!("CA:          sha256 {}", s.ca_fingerprint);
        println!("Taken:       {} ago, at store revision {}", super::age(s.created_ms), s.revision);
        println!(
            "Holds:       the CA and its key, the secrets key, leader.toml{}",
            if s.admin_toml.is_some() { ", admin.toml" } else { "" }
        );
        println!("Objects:");
        for (kind, n) in counts {
            println!("  {kind:<14} {n}");
        }
        return Ok(());
    }
    let (Some(out), Some(pass)) = (args.output_file.path(), args.passphrase_file) else {
        return Err(CliError::Other(
            "bramble backup: give --out FILE and --passphrase-file PATH (or `backup inspect`)".into(),
        ));
    };
    let passphrase = passphrase(&pass)?;
    let snapshot = match request(config, Request::Backup).await? {
        Response::Backup(s) => s,
        r => return Err(unexpected(&r)),
    };
    let sealed = bramble_transport::backup::seal(&snapshot, &passphrase).map_err(|e| CliError::Other(e.to_string()))?;
    bramble_proto::fsutil::write_file_atomic(&out, &sealed, 0o600)
        .map_err(|e| CliError::Other(format!("{}: {e}", out.display())))?;
    println!(
        "backup of cluster {} written to {}: {} objects, {} bytes, sealed with the passphrase",
        snapshot.cluster_name,
        out.display(),
        snapshot.objects.len(),
        sealed.len()
    );
    Ok(())
}
