//! `bramble apply -f FILE|DIR|- [--dry-run]`: every object in every file is validated first; one
//! invalid object changes nothing. With `--dry-run` the leader checks and plans it all as for real
//! and stores nothing: what would be created, replaced or removed, and on which boards.

use crate::client::{request, unexpected, CliError};
use crate::output::{json, Format};
use bramble_proto::manifest::{parse_manifest, Manifest};
use bramble_proto::wire::{AppPlanView, ApplyPlan, PlannedAction, Request, Response};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or directories (`*.toml` inside), or `-` for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Check and plan everything on the leader, store nothing, and print which replicas would be
    /// created, replaced or removed on which boards (and why any would stay Pending).
    #[arg(long)]
    dry_run: bool,
    /// `json` prints what was applied (or the plan) for scripts.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
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
                all.configs.extend(m.configs);
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
    if m.apps.is_empty() && m.services.is_empty() && m.configs.is_empty() {
        return Err(CliError::Other(
            "nothing to apply: the manifests hold no [[app]], [[service]] or [[config]]".into(),
        ));
    }
    let dry_run = args.dry_run;
    match request(config, Request::Apply { apps: m.apps, services: m.services, configs: m.configs, dry_run }).await? {
        Response::Applied(results) if args.output == Format::Json => {
            print!("{}", json(&results));
            Ok(())
        }
        Response::Applied(results) => {
            for r in results {
                println!("{r}");
            }
            Ok(())
        }
        Response::Planned(plan) if args.output == Format::Json => {
            print!("{}", json(&plan));
            Ok(())
        }
        Response::Planned(plan) => {
            print!("{}", show_plan(&plan));
            Ok(())
        }
        r => Err(unexpected(&r)),
    }
}

/// A dry run for people: each object's outcome, then per app the replicas that would change.
pub fn show_plan(plan: &ApplyPlan) -> String {
    let mut out = String::new();
    for a in &plan.applied {
        let app = plan.apps.iter().find(|p| a.kind == "app" && p.app == a.name);
        match app.and_then(|p| Some((p.revision?, p.cause.as_deref()?))) {
            Some((n, cause)) => out.push_str(&format!("{a} (revision {n}: {cause})\n")),
            None => out.push_str(&format!("{a}\n")),
        }
        if let Some(p) = app {
            out.push_str(&show_app(p));
        }
    }
    out.push_str("dry run: nothing was stored\n");
    out
}

fn show_app(p: &AppPlanView) -> String {
    let mut out = String::new();
    for c in &p.changes {
        let (sign, verb) = match c.action {
            PlannedAction::Create => ('+', "create"),
            PlannedAction::Replace => ('~', "replace"),
            PlannedAction::Remove => ('-', "remove"),
        };
        let what = c.replica.as_deref().unwrap_or("a new replica");
        let place = match (&c.node, &c.pending) {
            (Some(n), _) => format!("on {n}"),
            (None, Some(why)) => format!("Pending: {why}"),
            (None, None) => "Pending".to_string(),
        };
        out.push_str(&format!("  {sign} {verb:<8}{what:<20} {place}\n"));
    }
    if p.changes.is_empty() {
        out.push_str("  no replica would change\n");
    }
    out.push_str(&format!("  rollout: {}\n", p.outcome));
    out
}
