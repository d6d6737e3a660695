//! `bramble apply -f FILE|DIR|-`: every object in every file is validated first; one invalid object
//! changes nothing.

use crate::client::{request, unexpected, CliError};
use bramble_proto::manifest::{parse_manifest, Manifest};
use bramble_proto::wire::{Request, Response};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or directories (`*.toml` inside), or `-` for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
}

/// Reads and validates every manifest; all problems are reported together.
pub fn load(files: &[String]) -> Result<Manifest, CliError> {
    let mut paths: Vec<(String, Option<PathBuf>)> = Vec::new();
    for f in files {
        if f == "-" {
            paths.push(("<stdin>".into(), None));
            continue;
        }
        let p = Path::new(f);
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| CliError::Other(format!("cannot read {f}: {e}")))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            inside.sort();
            paths.extend(inside.into_iter().map(|p| (p.display().to_string(), Some(p))));
        } else {
            paths.push((f.clone(), Some(p.to_path_buf())));
        }
    }
    let mut all = Manifest::default();
    let mut errors = Vec::new();
    for (shown, path) in paths {
        let text = match &path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| CliError::Other(format!("cannot read {shown}: {e}")))?,
            None => {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| CliError::Other(format!("cannot read standard input: {e}")))?;
                s
            }
        };
        match parse_manifest(&shown, &text) {
            Ok(m) => {
                all.apps.extend(m.apps);
                all.services.extend(m.services);
            }
            Err(e) => errors.extend(e.0.iter().map(|e| e.to_string())),
        }
    }
    if !errors.is_empty() {
        return Err(CliError::Other(format!("nothing applied:\n{}", errors.join("\n"))));
    }
    Ok(all)
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let m = load(&args.files)?;
    if m.apps.is_empty() && m.services.is_empty() {
        return Err(CliError::Other("nothing to apply: the manifests hold no [[app]] or [[service]]".into()));
    }
    match request(config, Request::Apply { apps: m.apps, services: m.services }).await? {
        Response::Applied(results) => {
            for r in results {
                println!("{r}");
            }
            Ok(())
        }
        r => Err(unexpected(&r)),
    }
}
