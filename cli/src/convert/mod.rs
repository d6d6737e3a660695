//! `bramble convert -f FILE|DIR|-` (issue 34): Compose files as Bramble manifests, printed as TOML
//! with a comment naming each object's source file and line. Variables (`${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?message}`, `$$`) are filled from the environment and `--env-file` (and
//! a `.env` beside the file) as Compose does. What does not map is listed with file:line and why:
//! an error unless `--lenient`. Kubernetes manifests are not converted yet.

pub mod compose;
pub mod k8s;
pub mod yaml;

use crate::client::CliError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The largest file converted.
const MAX_FILE: usize = 4 << 20;

/// A field that does not map, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub col: usize,
    /// Where in the file (`services.web.privileged`).
    pub field: String,
    pub why: String,
    /// Said, but mapped as close as Bramble can (never fails a conversion).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {}: {}", self.file, self.line, self.col, self.field, self.why)
    }
}

/// What files convert to: (source file, line, what it was, kind, table) per object; notes for
/// the user.
#[derive(Debug, Default)]
pub struct Converted {
    pub objects: Vec<(String, usize, String, &'static str, toml::Table)>,
    pub problems: Vec<Problem>,
    pub notes: Vec<String>,
}

#[derive(clap::Args)]
pub struct Args {
    /// Compose files or Kubernetes YAML (`docker-compose.yml`, `deploy.yaml`), directories (their
    /// `*.yml` and `*.yaml`), or `-` for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Fields that do not map are warnings instead of errors (they are left out).
    #[arg(long)]
    lenient: bool,
    /// Variables for `${VAR}` (KEY=VALUE lines), over the environment.
    #[arg(long)]
    env_file: Option<PathBuf>,
}

/// Fills Compose's variables in `text` from `vars` (then the environment); errors at their line.
pub fn interpolate(text: &str, vars: &BTreeMap<String, String>) -> Result<String, (usize, String)> {
    let lookup = |k: &str| vars.get(k).cloned().or_else(|| std::env::var(k).ok());
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body.find('}').ok_or((n + 1, "a ${ without its }".to_string()))?;
                let expr = &body[..end];
                let (name, op, arg) = match expr.find([':', '-', '?']) {
                    Some(j) if expr[j..].starts_with(":-") => (&expr[..j], ":-", &expr[j + 2..]),
                    Some(j) if expr[j..].starts_with(":?") => (&expr[..j], ":?", &expr[j + 2..]),
                    Some(j) if expr[j..].starts_with('-') => (&expr[..j], "-", &expr[j + 1..]),
                    Some(j) if expr[j..].starts_with('?') => (&expr[..j], "?", &expr[j + 1..]),
                    Some(_) => {
                        return Err((
                            n + 1,
                            format!("${{{expr}}}: expected ${{VAR}}, ${{VAR:-default}} or ${{VAR:?message}}"),
                        ))
                    }
                    None => (expr, "", ""),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err((n + 1, format!("${{{expr}}}: {name:?} is not a variable name")));
                }
                let value = lookup(name);
                let v = match op {
                    ":-" => value.filter(|v| !v.is_empty()).unwrap_or_else(|| arg.to_string()),
                    "-" => value.unwrap_or_else(|| arg.to_string()),
                    ":?" | "?" => match value.filter(|v| op == "?" || !v.is_empty()) {
                        Some(v) => v,
                        None => {
                            return Err((n + 1, format!("{name}: {}", if arg.is_empty() { "is not set" } else { arg })))
                        }
                    },
                    _ => value.unwrap_or_default(),
                };
                out.push_str(&v);
                rest = &body[end + 1..];
            } else {
                let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                if len == 0 {
                    out.push('$');
                    rest = after;
                } else {
                    out.push_str(&lookup(&after[..len]).unwrap_or_default());
                    rest = &after[len..];
                }
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

pub fn env_file(path: &Path) -> Result<BTreeMap<String, String>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect())
}

/// One file's text (`file`: its name in messages; `dir`: where its relative paths start) as
/// manifest text; problems that are errors stop it unless `lenient`.
#[cfg(test)]
pub fn convert_text(
    file: &str,
    dir: &Path,
    text: &str,
    vars: &BTreeMap<String, String>,
    lenient: bool,
) -> Result<(String, Vec<Problem>, Vec<String>), CliError> {
    convert_inputs(&[Input { name: file.into(), dir: dir.into(), text: text.into() }], vars, lenient)
}

/// One file to convert: its name in messages, where its relative paths start, its text.
pub struct Input {
    pub name: String,
    pub dir: PathBuf,
    pub text: String,
}

/// Files converted together: Compose files each on its own; Kubernetes documents of all of them
/// together (a Service finds its Deployment in another file, as `kubectl apply -f DIR` would).
pub fn convert_inputs(
    inputs: &[Input],
    vars: &BTreeMap<String, String>,
    lenient: bool,
) -> Result<(String, Vec<Problem>, Vec<String>), CliError> {
    let mut converted = Vec::new();
    let mut k8s_docs: Vec<(String, yaml::Node)> = Vec::new();
    for Input { name: file, dir, text } in inputs {
        let file = file.as_str();
        if text.len() > MAX_FILE {
            return Err(CliError::Other(format!(
                "{file}: {} bytes; a file converted may hold at most 4 MiB",
                text.len()
            )));
        }
        // Compose fills variables; Kubernetes YAML has none (a `$` there is the program's).
        let raw = yaml::load(text).map_err(|e| CliError::Other(format!("{file}:{e}")))?;
        let kubernetes = !raw.iter().all(yaml::Node::is_null)
            && raw.iter().filter(|d| !d.is_null()).all(|d| d.get("apiVersion").is_some() && d.get("kind").is_some());
        if kubernetes {
            // A List's items are documents of their own.
            for d in raw.into_iter().filter(|d| !d.is_null()) {
                match (d.get("kind").and_then(yaml::Node::str), d.get("items").and_then(yaml::Node::items)) {
                    (Some("List"), Some(items)) => k8s_docs.extend(items.iter().map(|i| (file.to_string(), i.clone()))),
                    _ => k8s_docs.push((file.to_string(), d)),
                }
            }
            continue;
        }
        let text = interpolate(text, vars).map_err(|(line, m)| CliError::Other(format!("{file}:{line}: {m}")))?;
        let docs = yaml::load(&text).map_err(|e| CliError::Other(format!("{file}:{e}")))?;
        for doc in docs.iter().filter(|d| !d.is_null()) {
            converted.push(compose::convert(file, dir, doc));
        }
    }
    if !k8s_docs.is_empty() {
        let mut c = Converted::default();
        let docs: Vec<(&str, &yaml::Node)> = k8s_docs.iter().map(|(f, d)| (f.as_str(), d)).collect();
        k8s::convert(&docs, &mut c);
        converted.push(c);
    }
    let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    let all = names.join(", ");
    let mut out = String::new();
    let (mut problems, mut notes) = (Vec::new(), Vec::new());
    let mut seen = std::collections::BTreeSet::new();
    // An app waits only for apps that were converted: one left out (an image to build) is said.
    let apps: std::collections::BTreeSet<String> = converted
        .iter()
        .flat_map(|c| c.objects.iter())
        .filter(|o| matches!(o.3, "app" | "job"))
        .filter_map(|o| o.4.get("name").and_then(toml::Value::as_str).map(String::from))
        .collect();
    for c in &mut converted {
        for (file, line, what, _, table) in &mut c.objects {
            let Some(toml::Value::Array(after)) = table.get_mut("after") else { continue };
            after.retain(|a| {
                let known = a.as_str().is_some_and(|a| apps.contains(a));
                if !known {
                    problems.push(Problem {
                        file: file.clone(),
                        line: *line,
                        col: 1,
                        field: what.clone(),
                        why: format!("waits for {a}, which was left out: it starts without waiting"),
                        warning: true,
                    });
                }
                known
            });
        }
    }
    for c in converted {
        for (file, line, what, kind, table) in c.objects {
            let file = file.as_str();
            let name = table.get("name").and_then(toml::Value::as_str).unwrap_or_default().to_string();
            let mut doc = toml::Table::new();
            doc.insert(kind.to_string(), toml::Value::Array(vec![toml::Value::Table(table)]));
            let body = toml::to_string(&doc).map_err(|e| CliError::Other(format!("{file}:{line}: {e}")))?;
            // One name per kind: a later object of the same name is said and left out.
            if !seen.insert((kind, name.clone())) {
                problems.push(Problem {
                    file: file.to_string(),
                    line,
                    col: 1,
                    field: what.clone(),
                    why: format!("another {kind} here is named {name} already"),
                    warning: false,
                });
                continue;
            }
            // Each object through the manifest's own checks: what Bramble would refuse is said at
            // the object's line, and the object left out.
            if let Err(e) = bramble_proto::manifest::parse_manifest(&format!("{file} ({what})"), &body) {
                for err in e.0 {
                    problems.push(Problem {
                        file: file.to_string(),
                        line,
                        col: 1,
                        field: what.clone(),
                        why: format!("{}: {}", err.field, err.message),
                        warning: false,
                    });
                }
                continue;
            }
            out.push_str(&format!("# {file}:{line} ({what})\n{body}\n"));
        }
        problems.extend(c.problems);
        notes.extend(c.notes);
    }
    let errors: Vec<&Problem> = problems.iter().filter(|p| !p.warning).collect();
    if !errors.is_empty() && !lenient {
        let list: Vec<String> = errors.iter().map(|p| p.to_string()).collect();
        return Err(CliError::Other(format!(
            "{} field(s) do not map (--lenient leaves them out with a warning):\n{}",
            list.len(),
            list.join("\n")
        )));
    }
    // What the conversion made goes through the manifest's own checks, as an apply would.
    if let Err(e) = bramble_proto::manifest::parse_manifest(&format!("{all} (converted)"), &out) {
        return Err(CliError::Other(format!(
            "the manifest converted from {all} does not check:\n{e}\n--- converted:\n{out}"
        )));
    }
    Ok((out, problems, notes))
}

/// The files `-f` names: a directory's `*.yml` and `*.yaml`, sorted; `-` as it is.
fn expand(files: &[String]) -> Result<Vec<String>, CliError> {
    let mut out = Vec::new();
    for f in files {
        let p = Path::new(f);
        if f != "-" && p.is_dir() {
            let mut inside: Vec<String> = std::fs::read_dir(p)
                .map_err(|e| CliError::Other(format!("cannot read {f}: {e}")))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
                .map(|p| p.display().to_string())
                .collect();
            inside.sort();
            out.extend(inside);
        } else {
            out.push(f.clone());
        }
    }
    Ok(out)
}

pub async fn run(args: Args) -> Result<(), CliError> {
    let files = expand(&args.files)?;
    if files.is_empty() {
        return Err(CliError::Other("no *.yml or *.yaml file to convert".into()));
    }
    let mut vars = BTreeMap::new();
    for f in &files {
        let dir = if f == "-" {
            std::env::current_dir().unwrap_or_default()
        } else {
            Path::new(f).parent().map(Path::to_path_buf).unwrap_or_default()
        };
        let dotenv = dir.join(".env");
        if dotenv.is_file() {
            vars.extend(env_file(&dotenv)?);
        }
    }
    if let Some(e) = &args.env_file {
        vars.extend(env_file(e)?);
    }
    let mut inputs = Vec::new();
    for f in &files {
        inputs.push(if f == "-" {
            let mut t = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
                .map_err(|e| CliError::Other(format!("stdin: {e}")))?;
            Input { name: "<stdin>".into(), dir: std::env::current_dir().unwrap_or_default(), text: t }
        } else {
            let t = std::fs::read_to_string(f).map_err(|e| CliError::Other(format!("{f}: {e}")))?;
            Input { name: f.clone(), dir: Path::new(f).parent().map(Path::to_path_buf).unwrap_or_default(), text: t }
        });
    }
    let (out, problems, notes) = convert_inputs(&inputs, &vars, args.lenient)?;
    for p in &problems {
        eprintln!("warning: {p}");
    }
    for n in &notes {
        eprintln!("note: {n}");
    }
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_files_convert_together_so_a_service_finds_its_deployment_in_another() {
        let dep = "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: api }\nspec:\n  template:\n    metadata: { labels: { app: api } }\n    spec:\n      containers: [{ name: api, image: api:1 }]\n";
        let svc = "apiVersion: v1\nkind: Service\nmetadata: { name: api }\nspec:\n  selector: { app: api }\n  ports: [{ port: 80 }]\n";
        let input = |name: &str, text: &str| Input { name: name.into(), dir: "/tmp".into(), text: text.into() };
        let (out, problems, _) =
            convert_inputs(&[input("dep.yaml", dep), input("svc.yaml", svc)], &BTreeMap::new(), false).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(out.contains("# dep.yaml:1 (Deployment api)") && out.contains("# svc.yaml:1 (Service api)"), "{out}");
        // Alone, the Service's file cannot say which app it serves: at its line.
        let e = convert_inputs(&[input("svc.yaml", svc)], &BTreeMap::new(), false).unwrap_err().to_string();
        assert!(e.contains("svc.yaml:5:3: Service/api.spec.selector: selects no workload"), "{e}");
    }

    #[test]
    fn variables_are_filled_as_compose_fills_them() {
        let vars = BTreeMap::from([("TAG".to_string(), "1.2".to_string()), ("EMPTY".to_string(), String::new())]);
        let text = "image: web:${TAG}\na: ${NOPE_X:-d}\nb: ${EMPTY:-d}\nc: ${EMPTY-d}\nd: $$HOME\ne: $TAG\n";
        assert_eq!(interpolate(text, &vars).unwrap(), "image: web:1.2\na: d\nb: d\nc: \nd: $HOME\ne: 1.2\n");
        assert_eq!(interpolate("x\ny: ${NOPE_X:?set it}\n", &vars).unwrap_err(), (2, "NOPE_X: set it".into()));
        assert_eq!(interpolate("y: ${TAG\n", &vars).unwrap_err().0, 1);
        assert!(interpolate("y: ${A B}\n", &vars).is_err());
    }

    #[test]
    fn a_compose_file_converts_to_manifests_apply_takes() {
        let text = "services:\n  web:\n    image: nginx\n    ports: [\"8080:80\"]\n    x-mine: 1\n";
        let e = convert_text("c.yml", Path::new("/tmp"), text, &BTreeMap::new(), false).unwrap_err().to_string();
        assert!(e.contains("c.yml:5:13: services.web.x-mine: not mapped to Bramble"), "{e}");
        let (out, problems, _) = convert_text("c.yml", Path::new("/tmp"), text, &BTreeMap::new(), true).unwrap();
        assert_eq!(problems.len(), 1);
        assert!(out.starts_with("# c.yml:3 (service web)\n[[app]]\n"), "{out}");
        let m = bramble_proto::manifest::parse_manifest("out.toml", &out).unwrap();
        assert_eq!((m.apps.len(), m.services.len()), (1, 1));
        assert_eq!(m.apps[0].ports[0].host.map(|p| p.0), Some(8080));
    }

    #[test]
    fn kubernetes_manifests_convert_to_apps_services_configs_ingresses_and_cron_jobs() {
        let text = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  strategy:
    rollingUpdate: { maxSurge: 1, maxUnavailable: 0 }
  selector:
    matchLabels: { app: web }
  template:
    metadata:
      labels: { app: web, tier: front }
    spec:
      containers:
        - name: web
          image: nginx:1.25
          ports:
            - { name: http, containerPort: 80 }
          env:
            - { name: MODE, value: prod }
            - name: DB_PASSWORD
              valueFrom:
                secretKeyRef: { name: db, key: password }
          resources:
            limits: { cpu: 500m, memory: 128Mi }
          readinessProbe:
            httpGet: { path: /healthz, port: http }
            periodSeconds: 5
          volumeMounts:
            - { name: site, mountPath: /usr/share/nginx/html }
            - { name: cache, mountPath: /cache }
        - name: exporter
          image: nginx/exporter:1
      volumes:
        - name: site
          configMap: { name: site }
        - name: cache
          emptyDir: {}
---
apiVersion: v1
kind: Service
metadata: { name: web }
spec:
  type: NodePort
  selector: { app: web }
  ports:
    - { name: http, port: 80, targetPort: http }
---
apiVersion: v1
kind: ConfigMap
metadata: { name: site }
data:
  index.html: "<h1>hi</h1>"
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: web }
spec:
  tls:
    - { hosts: [shop.lan], secretName: shop-cert }
  rules:
    - host: shop.lan
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service: { name: web, port: { number: 80 } }
---
apiVersion: batch/v1
kind: CronJob
metadata: { name: report }
spec:
  schedule: "0 3 * * *"
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      backoffLimit: 2
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - { name: report, image: busybox, command: [sh, -c, "echo done"] }
---
apiVersion: v1
kind: Secret
metadata: { name: db }
data:
  password: c2VjcmV0
"#;
        let (out, problems, notes) = convert_text("k.yaml", Path::new("/tmp"), text, &BTreeMap::new(), false).unwrap();
        let warnings: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("Service/web.spec.type: NodePort"), "{warnings:?}");
        assert!(notes[0].contains("Secret db: its values are not printed") && !notes[0].contains("c2VjcmV0"));
        let m = bramble_proto::manifest::parse_manifest("out.toml", &out).unwrap();
        let web = &m.apps[0];
        assert_eq!((web.name.as_str(), web.replicas.0, web.containers.len()), ("web", 3, 1));
        assert_eq!(
            web.secret_env.get(&bramble_proto::manifest::EnvName("DB_PASSWORD".into())).map(String::as_str),
            Some("db/password")
        );
        assert!(web.probes.readiness.as_ref().unwrap().http.is_some());
        assert_eq!(m.services[0].app.as_str(), "web", "the selector found its app");
        assert_eq!(m.configs[0].files["index.html"], "<h1>hi</h1>");
        assert_eq!(m.ingresses[0].tls.as_ref().unwrap().secret.as_ref().map(|s| s.as_str()), Some("shop-cert"));
        assert_eq!(m.cronjobs[0].job.backoff_limit, Some(2));
        assert!(out.contains("# k.yaml:1 (Deployment web)"), "{out}");
        // What does not map is said at its line.
        let bad = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: { name: p }\n";
        let e = convert_text("p.yaml", Path::new("/tmp"), bad, &BTreeMap::new(), false).unwrap_err().to_string();
        assert!(e.contains("p.yaml:1:1: HorizontalPodAutoscaler/p: kind HorizontalPodAutoscaler does not map"), "{e}");
    }

    /// The public corpus (`tests/corpus/`, SOURCES.md): each file converts (leniently) into
    /// manifests that pass the manifest's checks, or fails with a reason the table counts; the
    /// counts are printed (`--nocapture`) and summarised in the README.
    #[test]
    fn the_corpus_converts() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus");
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for (kind, least) in [("compose", 30), ("kubernetes", 20)] {
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(root.join(kind)).unwrap().flatten().map(|e| e.path()).collect();
            files.sort();
            assert!(files.len() >= least, "{kind}: {} files", files.len());
            let (mut whole, mut with_objects, mut failed) = (0, 0, Vec::new());
            for f in &files {
                let text = std::fs::read_to_string(f).unwrap();
                let name = f.file_name().unwrap().to_string_lossy().to_string();
                let dir = f.parent().unwrap();
                let vars = BTreeMap::new();
                match convert_text(&name, dir, &text, &vars, true) {
                    Ok((out, problems, _)) => {
                        if problems.iter().all(|p| p.warning) {
                            whole += 1;
                        }
                        if !out.is_empty() {
                            with_objects += 1;
                        }
                        for p in problems {
                            let field = p
                                .field
                                .rsplit('.')
                                .next()
                                .unwrap_or_default()
                                .trim_end_matches(|c: char| c == ']' || c.is_ascii_digit() || c == '[')
                                .to_string();
                            *reasons
                                .entry(format!("{kind}: {field}: {}", p.why.split(':').next().unwrap_or_default()))
                                .or_default() += 1;
                        }
                    }
                    Err(e) => failed.push(format!("{name}: {e}")),
                }
            }
            println!(
                "{kind}: {} files; {whole} convert with nothing left out, {with_objects} give objects, {} fail",
                files.len(),
                failed.len()
            );
            for f in &failed {
                println!("  failed: {}", f.lines().next().unwrap_or_default());
            }
            assert!(failed.is_empty(), "{kind}: {failed:#?}");
        }
        println!("fields left out, by reason:");
        let mut by: Vec<(&String, &usize)> = reasons.iter().collect();
        by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (r, n) in by {
            println!("  {n:>4}  {r}");
        }
    }
}
