//! `bramble image ls|rm|import --node NODE`: a node's image store, through the leader; and
//! `bramble image prefetch IMAGE [--node …]`: boards pull an image now.

use crate::client::{request, stream, unexpected, upload, CliError};
use crate::output::{json, table, Format};
use bramble_proto::quantity::human_bytes;
use bramble_proto::wire::{ImageInfo, ImageOp, Request, Response};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// List the images in a node's store.
    Ls {
        #[arg(long)]
        node: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Remove an image from a node's store (refused while a container uses it).
    Rm {
        reference: String,
        #[arg(long)]
        node: String,
    },
    /// Pull an image onto boards now, ahead of a rollout (every connected board, or --node…):
    /// progress as they go, then each board's result. With the registry's settings from its
    /// [[registry]] for that pull only. Exit 1 if a board could not.
    Prefetch {
        image: String,
        /// A board to pull on (again for more); none: every board.
        #[arg(long = "node")]
        nodes: Vec<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Send an image archive to a node: an OCI layout (directory or tar), an OCI archive or a
    /// `docker save` tarball. For boards without a registry.
    Import {
        path: PathBuf,
        #[arg(long)]
        node: String,
        /// The reference to record it under (needed when the archive names none).
        #[arg(long)]
        name: Option<String>,
    },
}

fn print_images(images: &[ImageInfo], output: Format) {
    if output == Format::Json {
        print!("{}", json(&images));
        return;
    }
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            let short = i.digest.strip_prefix("sha256:").unwrap_or(&i.digest);
            vec![
                i.reference.clone(),
                short.chars().take(12).collect(),
                i.platform.clone(),
                human_bytes(i.size),
                i.layers.to_string(),
            ]
        })
        .collect();
    print!("{}", table(&["REFERENCE", "DIGEST", "PLATFORM", "SIZE", "LAYERS"], &rows));
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    match args.action {
        Action::Ls { node, output } => match request(config, Request::Image { node, op: ImageOp::Ls }).await? {
            Response::Images(images) => {
                print_images(&images, output);
                Ok(())
            }
            r => Err(unexpected(&r)),
        },
        Action::Rm { reference, node } => {
            match request(config, Request::Image { node, op: ImageOp::Rm { reference } }).await? {
                Response::Done(msg) => {
                    println!("{msg}");
                    Ok(())
                }
                r => Err(unexpected(&r)),
            }
        }
        Action::Import { path, node, name } => import(config, path, node, name).await,
        Action::Prefetch { image, nodes, output } => prefetch(config, image, nodes, output).await,
    }
}

async fn prefetch(config: Option<PathBuf>, image: String, nodes: Vec<String>, output: Format) -> Result<(), CliError> {
    let tty = std::io::stderr().is_terminal() && output != Format::Json;
    let mut progress: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut results = Vec::new();
    let mut failed = 0;
    stream(config, Request::Prefetch { image, nodes }, |r| {
        match r {
            Response::Pulling { node, done, total } => {
                progress.insert(node, (done, total));
                if tty {
                    let line: Vec<String> = progress
                        .iter()
                        .map(|(n, (d, t))| format!("{n} {}/{}", human_bytes(*d), human_bytes(*t)))
                        .collect();
                    eprint!("\r\x1b[K{}", line.join("  "));
                    let _ = std::io::stderr().flush();
                }
            }
            Response::Pulled { node, image, error } => {
                if tty {
                    eprint!("\r\x1b[K");
                }
                match (&image, &error) {
                    (Some(i), _) if output != Format::Json => {
                        let short: String = i.digest.trim_start_matches("sha256:").chars().take(12).collect();
                        println!("{node}: {} {short} ({}, {})", i.reference, i.platform, human_bytes(i.size));
                    }
                    (None, e) => {
                        failed += 1;
                        if output != Format::Json {
                            println!("{node}: failed: {}", e.as_deref().unwrap_or("no answer"));
                        }
                    }
                    _ => {}
                }
                results.push(serde_json::json!({ "node": node, "image": image, "error": error }));
            }
            other => return Err(unexpected(&other)),
        }
        Ok(())
    })
    .await?;
    if output == Format::Json {
        print!("{}", json(&results));
    }
    if failed > 0 {
        return Err(CliError::Other(format!("{failed} of {} boards could not pull it", results.len())));
    }
    Ok(())
}

async fn import(config: Option<PathBuf>, path: PathBuf, node: String, name: Option<String>) -> Result<(), CliError> {
    let meta = std::fs::metadata(&path).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    // A directory (an OCI layout) goes as a tar made on the fly; its size must be known first.
    let (file, size, _tmp) = if meta.is_dir() {
        let tmp = std::env::temp_dir().join(format!("bramble-import-{}.tar", std::process::id()));
        let status = std::process::Command::new("tar")
            .arg("-C")
            .arg(&path)
            .arg("-cf")
            .arg(&tmp)
            .arg(".")
            .status()
            .map_err(|e| CliError::Other(format!("cannot run tar to pack {}: {e}", path.display())))?;
        if !status.success() {
            return Err(CliError::Other(format!("tar could not pack {}", path.display())));
        }
        let size = std::fs::metadata(&tmp).map_err(|e| CliError::Other(e.to_string()))?.len();
        (tmp.clone(), size, Some(TempFile(tmp)))
    } else {
        (path.clone(), meta.len(), None)
    };
    let body = tokio::fs::File::open(&file).await.map_err(|e| CliError::Other(format!("{}: {e}", file.display())))?;
    let tty = std::io::stderr().is_terminal();
    let req = Request::Image { node: node.clone(), op: ImageOp::Import { name, size } };
    let response = upload(config, req, body, |sent| {
        if tty {
            let pct = (sent * 100).checked_div(size).unwrap_or(100);
            eprint!("\rsending to {node}: {} of {} ({pct}%)", human_bytes(sent), human_bytes(size));
            let _ = std::io::stderr().flush();
        }
    })
    .await;
    if tty {
        eprintln!();
    }
    match response? {
        Response::Images(images) => {
            for i in images {
                println!("{} {} ({}) imported on {node}", i.reference, i.digest, i.platform);
            }
            Ok(())
        }
        r => Err(unexpected(&r)),
    }
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
