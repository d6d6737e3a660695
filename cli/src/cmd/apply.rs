//! `bramble apply -f FILE|DIR|- [--dry-run]`: every object in every file is validated first; one
//! invalid object changes nothing. With `--dry-run` the leader checks and plans it all as for real
//! and stores nothing: what would be created, replaced or removed, and on which boards.

use crate::client::{request, unexpected, CliError};
use crate::output::{json, Format};
use bramble_proto::manifest::{parse_manifest, Manifest};
use bramble_proto::source::{line_col, locate, Seg};
use bramble_proto::wire::{AppPlanView, ApplyPlan, ObjectProblem, PlannedAction, Request, Response};
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

/// Where each object of an apply came from: (kind, name) → (file as shown, its text, the
/// object's index among its kind in that file).
#[derive(Debug, Default)]
pub struct Sources(std::collections::BTreeMap<(String, String), (String, std::sync::Arc<str>, usize)>);

impl Sources {
    /// `file:line:column: field: message` for a problem the leader found, where the object and
    /// its field can be found; the leader's own words otherwise.
    pub fn show(&self, p: &ObjectProblem) -> String {
        let Some((file, text, index)) = self.0.get(&(p.kind.clone(), p.name.clone())) else { return p.to_string() };
        let mut path = vec![Seg::Key(p.kind.as_str()), Seg::Index(*index)];
        path.extend(field_path(&p.field));
        let (line, column) = line_col(text, locate(text, &path));
        let field = if p.field.is_empty() { String::new() } else { format!(".{}", p.field) };
        format!("{file}:{line}:{column}: {}[{index}]{field}: {}", p.kind, p.message)
    }

    /// A refusal from the leader with each problem pointed at its file and line.
    pub fn explain(&self, e: CliError) -> CliError {
        match e {
            CliError::Api(mut api) if !api.problems.is_empty() => {
                let lines: Vec<String> = api.problems.iter().map(|p| self.show(p)).collect();
                api.message = format!("nothing applied:\n{}", lines.join("\n"));
                CliError::Api(api)
            }
            e => e,
        }
    }
}

/// `ports[0].host` as path segments.
fn field_path(field: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let mut it = part.split('[');
        if let Some(key) = it.next().filter(|k| !k.is_empty()) {
            out.push(Seg::Key(key));
        }
        out.extend(it.filter_map(|i| i.trim_end_matches(']').parse().ok()).map(Seg::Index));
    }
    out
}

/// Reads and validates every manifest; all problems are reported together.
pub fn load(files: &[String]) -> Result<Manifest, CliError> {
    load_with_sources(files).map(|(m, _)| m)
}

/// [`load`], and where each object came from.
pub fn load_with_sources(files: &[String]) -> Result<(Manifest, Sources), CliError> {
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
                .filter(|p| p.extension().is_some_and(|x| x == "toml" || x == "yml" || x == "yaml"))
                .collect();
            inside.sort();
            paths.extend(inside.into_iter().map(|p| (p.display().to_string(), Some(p))));
        } else {
            paths.push((f.clone(), Some(p.to_path_buf())));
        }
    }
    let mut all = Manifest::default();
    let mut sources = Sources::default();
    let mut errors = Vec::new();
    let (mut yaml, mut vars) = (Vec::new(), std::collections::BTreeMap::new());
    let mut texts: Vec<(String, String)> = Vec::new();
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
        // Compose files and Kubernetes YAML convert on the fly, all together after the TOML
        // (the same code as `bramble convert`).
        let is_yaml = path.as_ref().and_then(|p| p.extension()).is_some_and(|x| x == "yml" || x == "yaml");
        if is_yaml {
            let dir = path.as_ref().and_then(|p| p.parent()).map(Path::to_path_buf).unwrap_or_default();
            let dotenv = dir.join(".env");
            if dotenv.is_file() {
                vars.extend(crate::convert::env_file(&dotenv)?);
            }
            yaml.push(crate::convert::Input { name: shown, dir, text });
            continue;
        }
        texts.push((shown, text));
    }
    if !yaml.is_empty() {
        let names: Vec<&str> = yaml.iter().map(|i: &crate::convert::Input| i.name.as_str()).collect();
        let shown = format!("{} (converted)", names.join(", "));
        let (out, problems, _) = crate::convert::convert_inputs(&yaml, &vars, false)?;
        for p in problems {
            eprintln!("warning: {p}");
        }
        texts.push((shown, out));
    }
    for (shown, text) in texts {
        match parse_manifest(&shown, &text) {
            Ok(m) => {
                let text: std::sync::Arc<str> = text.into();
                let names = m.apps.iter().map(|a| ("app", a.name.as_str().to_string())).enumerate();
                let names = names
                    .chain(m.jobs.iter().map(|j| ("job", j.name.as_str().to_string())).enumerate())
                    .chain(m.services.iter().map(|s| ("service", s.name.as_str().to_string())).enumerate())
                    .chain(m.configs.iter().map(|c| ("config", c.name.as_str().to_string())).enumerate())
                    .chain(m.cronjobs.iter().map(|c| ("cronjob", c.name.as_str().to_string())).enumerate())
                    .chain(m.ingresses.iter().map(|i| ("ingress", i.name.as_str().to_string())).enumerate())
                    .chain(m.registries.iter().map(|r| ("registry", r.name.as_str().to_string())).enumerate());
                for (i, (kind, name)) in names {
                    sources.0.entry((kind.to_string(), name)).or_insert_with(|| (shown.clone(), text.clone(), i));
                }
                all.apps.extend(m.apps);
                // Jobs go to the leader as apps whose mode is `job`.
                all.apps.extend(m.jobs);
                all.services.extend(m.services);
                all.configs.extend(m.configs);
                all.cronjobs.extend(m.cronjobs);
                all.ingresses.extend(m.ingresses);
                all.registries.extend(m.registries);
            }
            Err(e) => errors.extend(e.0.iter().map(|e| e.to_string())),
        }
    }
    if !errors.is_empty() {
        return Err(CliError::Other(format!("nothing applied:\n{}", errors.join("\n"))));
    }
    Ok((all, sources))
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let (m, sources) = load_with_sources(&args.files)?;
    if m.apps.is_empty()
        && m.services.is_empty()
        && m.configs.is_empty()
        && m.cronjobs.is_empty()
        && m.ingresses.is_empty()
        && m.registries.is_empty()
    {
        return Err(CliError::Other(
            "nothing to apply: the manifests hold no [[app]], [[job]], [[cronjob]], [[service]], [[ingress]], [[config]] or [[registry]]"
                .into(),
        ));
    }
    let dry_run = args.dry_run;
    let req = Request::Apply {
        apps: m.apps,
        services: m.services,
        configs: m.configs,
        cronjobs: m.cronjobs,
        ingresses: m.ingresses,
        registries: m.registries,
        dry_run,
    };
    match request(config, req).await.map_err(|e| sources.explain(e))? {
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
        let app = plan.apps.iter().find(|p| (a.kind == "app" || a.kind == "job") && p.app == a.name);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaders_problems_point_at_the_file() {
        let text = "[[app]]\nname = \"a\"\nimage = \"x\"\n\n[[app]]\nname = \"b\"\nimage = \"x\"\nports = [{ container = 80, host = 7443, protocol = \"udp\" }]\n";
        let mut sources = Sources::default();
        sources.0.insert(("app".into(), "b".into()), ("m.toml".into(), text.into(), 1));
        let p = ObjectProblem {
            kind: "app".into(),
            name: "b".into(),
            field: "ports[0].host".into(),
            message: "host port 7443/udp is the cluster's own".into(),
        };
        assert_eq!(sources.show(&p), "m.toml:8:35: app[1].ports[0].host: host port 7443/udp is the cluster's own");
        let elsewhere = ObjectProblem { name: "c".into(), ..p };
        assert_eq!(sources.show(&elsewhere), "app/c: ports[0].host: host port 7443/udp is the cluster's own");
    }
}
