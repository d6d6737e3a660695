//! A Compose file as Bramble manifests (issue 34): each service an `[[app]]` (and a `[[service]]`
//! when it has ports, so that the others reach it by name as on Compose's network), named volumes
//! as local volumes, configs as `[[config]]`. What does not map is never dropped in silence: each
//! such field is a [`Problem`] with its line and why.

use super::yaml::{Node, Value};
use super::{Converted, Problem};
use std::path::Path;
use toml::Value as T;

/// The node label a converted bind mount asks for: boards that have its path.
pub const HOST_PATH_LABEL: &str = "host-paths";

/// Top-level keys that need nothing (the Compose spec's informational ones).
const IGNORED_TOP: [&str; 2] = ["version", "name"];

/// Service keys left out with a warning: what they would do, Bramble does its own way.
const IGNORED_SERVICE: [(&str, &str); 7] = [
    ("container_name", "replicas are named by Bramble (reach it by its service name)"),
    ("networks", "Bramble has one network for the cluster (reach it by its service name)"),
    ("logging", "the board keeps each container's output (bramble logs)"),
    ("hostname", "a replica's host name is its own name"),
    ("tty", "containers run without a terminal (bramble exec -t gives one)"),
    ("stdin_open", "containers run without standard input (bramble exec -i gives one)"),
    ("init", "containers run their command as process 1"),
];

struct Ctx<'a> {
    file: &'a str,
    dir: &'a Path,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn problem(&mut self, node: &Node, field: String, why: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            line: node.line,
            col: node.col,
            field,
            why: why.into(),
            warning: false,
        });
    }
}

/// `doc` (a Compose file's document) as Bramble objects; `dir`: where relative paths start.
pub fn convert(file: &str, dir: &Path, doc: &Node) -> Converted {
    let mut cx = Ctx { file, dir, problems: Vec::new() };
    let mut out = Converted::default();
    let Some(top) = doc.entries() else {
        cx.problem(doc, String::new(), format!("expected a mapping with services, found {}", doc.kind()));
        out.problems = cx.problems;
        return out;
    };
    for (key, node) in top {
        match key.as_str() {
            "services" | "volumes" | "configs" | "secrets" => {}
            k if IGNORED_TOP.contains(&k) || k.starts_with("x-") => {}
            "networks" => {
                // One flat network: every app reaches every service by name.
                if node
                    .entries()
                    .is_some_and(|e| e.iter().any(|(_, n)| !n.is_null() && n.entries().is_some_and(|e| !e.is_empty())))
                {
                    cx.problem(node, "networks".into(), "Bramble has one network for the cluster: the networks' settings do not map (services reach each other by name)");
                }
            }
            k => cx.problem(node, k.to_string(), "not a Compose top-level key Bramble maps"),
        }
    }
    let Some(services) = doc.get("services").and_then(Node::entries) else {
        cx.problem(doc, "services".into(), "expected services: a mapping of service names");
        out.problems = cx.problems;
        return out;
    };
    if let Some(configs) = doc.get("configs").and_then(Node::entries) {
        for (name, c) in configs {
            if let Some(t) = config(&mut cx, name, c) {
                out.objects.push((file.to_string(), c.line, format!("config {name}"), "config", t));
            }
        }
    }
    if let Some(secrets) = doc.get("secrets").and_then(Node::entries) {
        for (name, s) in secrets {
            let from = s.get("file").and_then(Node::str).unwrap_or("FILE");
            out.notes.push(format!(
                "{file}:{}: secret {name}: create it first: bramble secret create {name} --from-file {name}={from}",
                s.line
            ));
        }
    }
    for (name, s) in services {
        let (app, service) = service_of(&mut cx, name, s);
        let binds: Vec<&str> = app
            .iter()
            .flat_map(|a| a.get("volumes").and_then(T::as_array).into_iter().flatten())
            .filter_map(|v| v.get("host_path").and_then(T::as_str))
            .collect();
        if !binds.is_empty() {
            out.notes.push(format!(
                "{file}:{}: service {name} mounts {} from the board: label the boards that have them (bramble label node NAME {HOST_PATH_LABEL}=true) and allow them in their agent.toml ([volumes] host_paths)",
                s.line,
                binds.join(", ")
            ));
        }
        if let Some(app) = app {
            out.objects.push((file.to_string(), s.line, format!("service {name}"), "app", app));
        }
        if let Some(svc) = service {
            out.objects.push((file.to_string(), s.line, format!("service {name} (its ports)"), "service", svc));
        }
    }
    out.problems = cx.problems;
    out
}

/// A Compose name (`index.html`, `My_Config`) as a Bramble object name (a DNS label:
/// `index-html`, `my-config`).
pub fn object_name(s: &str) -> String {
    let mapped: String =
        s.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    mapped.trim_matches('-').chars().take(63).collect::<String>().trim_end_matches('-').to_string()
}

/// A file a Compose file names (`env_file`, a config's `file`), read only from its own directory
/// and below: a Compose file from elsewhere cannot copy `~/.ssh/id_rsa` or `/etc/shadow` into the
/// cluster. At most 1 MiB.
fn read_beside(dir: &Path, name: &str) -> Result<String, String> {
    let rel = Path::new(name);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("{name}: only files in the Compose file's directory and below are read"));
    }
    let base = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = base.join(rel).canonicalize().map_err(|e| format!("{name}: {e}"))?;
    if !path.starts_with(&base) {
        return Err(format!("{name}: leads out of the Compose file's directory (a link)"));
    }
    let meta = std::fs::metadata(&path).map_err(|e| format!("{name}: {e}"))?;
    if meta.len() > 1 << 20 {
        return Err(format!("{name}: {} bytes; at most 1 MiB is read", meta.len()));
    }
    std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))
}

fn config(cx: &mut Ctx<'_>, name: &str, c: &Node) -> Option<toml::Table> {
    let body = if let Some(f) = c.get("file").and_then(Node::str) {
        match read_beside(cx.dir, f) {
            Ok(b) => b,
            Err(e) => {
                cx.problem(c, format!("configs.{name}.file"), e);
                return None;
            }
        }
    } else if let Some(content) = c.get("content").and_then(Node::str) {
        content.to_string()
    } else {
        cx.problem(c, format!("configs.{name}"), "expected file or content (external configs do not map)");
        return None;
    };
    let mut files = toml::Table::new();
    files.insert(name.to_string(), T::String(body));
    let mut t = toml::Table::new();
    t.insert("name".into(), T::String(object_name(name)));
    t.insert("files".into(), T::Table(files));
    Some(t)
}

/// A list that Compose also takes as a single string.
fn strings(n: &Node) -> Option<Vec<String>> {
    match &n.value {
        Value::Str(s, _) => Some(vec![s.clone()]),
        Value::Seq(items) => items.iter().map(|i| i.str().map(String::from)).collect(),
        _ => None,
    }
}

/// A command: a list as it is; a string split as a shell would split words (quotes kept apart).
fn command(n: &Node) -> Option<Vec<String>> {
    match &n.value {
        Value::Seq(_) => strings(n),
        Value::Str(s, _) => split_words(s),
        _ => None,
    }
}

fn split_words(s: &str) -> Option<Vec<String>> {
    let (mut out, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None::<char>, false);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, '\\') | (Some('"'), '\\') => cur.push(chars.next()?),
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        return None;
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    Some(out)
}

/// `1.5` CPUs as Bramble's `1500m`; memory as it is (`512m` → `512Mi`, Compose's units are binary).
fn cpus(s: &str) -> Option<String> {
    let v: f64 = s.parse().ok()?;
    (v > 0.0 && v.is_finite()).then(|| format!("{}m", (v * 1000.0).round() as u64))
}

fn memory(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit = match unit.trim_end_matches('b') {
        "" => return Some(n.to_string()),
        "k" => "Ki",
        "m" => "Mi",
        "g" => "Gi",
        _ => return None,
    };
    Some(format!("{n}{unit}"))
}

/// Compose's durations (`1m30s`, `10s`, `500ms`) as Bramble's (the same words, one unit each).
fn duration(s: &str) -> Option<String> {
    let mut ms = 0u64;
    let mut rest = s.trim();
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (num, tail) = rest.split_at(split);
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let v: f64 = num.parse().ok()?;
        let factor = match unit {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            _ => return None,
        };
        ms += (v * factor).round() as u64;
        rest = next;
    }
    Some(if ms.is_multiple_of(1000) { format!("{}s", ms / 1000) } else { format!("{ms}ms") })
}

fn service_of(cx: &mut Ctx<'_>, name: &str, s: &Node) -> (Option<toml::Table>, Option<toml::Table>) {
    let at = |k: &str| format!("services.{name}.{k}");
    let Some(entries) = s.entries() else {
        cx.problem(s, format!("services.{name}"), format!("expected a mapping, found {}", s.kind()));
        return (None, None);
    };
    let mut app = toml::Table::new();
    app.insert("name".into(), T::String(name.to_string()));
    let mut ports: Vec<toml::Table> = Vec::new();
    let mut service_ports: Vec<(u16, bool)> = Vec::new();
    let mut volumes: Vec<toml::Table> = Vec::new();
    let mut env = toml::Table::new();
    let mut security = toml::Table::new();
    let mut resources = toml::Table::new();
    let mut placement = toml::Table::new();
    let mut probes = toml::Table::new();
    for (key, v) in entries {
        match key.as_str() {
            "image" => match v.str() {
                Some(i) => {
                    app.insert("image".into(), T::String(i.to_string()));
                }
                None => cx.problem(v, at(key), "expected an image reference"),
            },
            "build" => cx.problem(
                v,
                at(key),
                "Bramble runs images from a registry: build and push this one first, then give image",
            ),
            "command" => match command(v) {
                Some(c) => {
                    app.insert("args".into(), T::Array(c.into_iter().map(T::String).collect()));
                }
                None => cx.problem(v, at(key), "expected a command (a string or a list of strings)"),
            },
            "entrypoint" => match command(v) {
                Some(c) => {
                    app.insert("command".into(), T::Array(c.into_iter().map(T::String).collect()));
                }
                None => cx.problem(v, at(key), "expected an entrypoint (a string or a list of strings)"),
            },
            "environment" => environment(cx, name, v, &mut env),
            "env_file" => match strings(v) {
                Some(files) => {
                    for f in files {
                        match read_beside(cx.dir, &f) {
                            Ok(text) => {
                                for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
                                {
                                    if let Some((k, val)) = line.split_once('=') {
                                        env.entry(k.trim())
                                            .or_insert_with(|| T::String(val.trim_matches('"').to_string()));
                                    }
                                }
                            }
                            Err(e) => cx.problem(v, at(key), e),
                        }
                    }
                }
                None => cx.problem(v, at(key), "expected a file or a list of files"),
            },
            "ports" => {
                for p in v.items().unwrap_or_default() {
                    match port(p) {
                        Ok((container, host, proto)) => {
                            let mut t = toml::Table::new();
                            t.insert("container".into(), T::Integer(container.into()));
                            if let Some(h) = host {
                                t.insert("host".into(), T::Integer(h.into()));
                            }
                            let udp = proto == "udp";
                            if udp {
                                t.insert("protocol".into(), T::String("udp".into()));
                            }
                            service_ports.push((container, udp));
                            ports.push(t);
                        }
                        Err(why) => cx.problem(p, at(key), why),
                    }
                }
            }
            "expose" => {
                for p in v.items().unwrap_or_default() {
                    let parsed = p.str().and_then(|s| {
                        let (n, proto) = s.split_once('/').unwrap_or((s, "tcp"));
                        Some((n.parse::<u16>().ok()?, proto == "udp"))
                    });
                    match parsed {
                        Some(c) => service_ports.push(c),
                        None => cx.problem(p, at(key), "expected a port"),
                    }
                }
            }
            "volumes" => {
                for (i, vol) in v.items().unwrap_or_default().iter().enumerate() {
                    match volume(cx.dir, vol) {
                        Ok(t) => volumes.push(t),
                        Err(why) => cx.problem(vol, format!("{}[{i}]", at(key)), why),
                    }
                }
            }
            "depends_on" => {
                let names: Vec<String> = match &v.value {
                    Value::Seq(_) => strings(v).unwrap_or_default(),
                    Value::Map(m) => m.iter().map(|(k, _)| k.clone()).collect(),
                    _ => Vec::new(),
                };
                // `after` waits for a ready replica: service_started and service_healthy both
                // come to that; a completed one-off service does not map.
                for (dep, cond) in v.entries().unwrap_or_default() {
                    if cond.get("condition").and_then(Node::str) == Some("service_completed_successfully") {
                        cx.problem(cond, at(&format!("depends_on.{dep}.condition")), "waits for a ready replica of it, not for it to complete (make it a [[job]] to wait for its completion)");
                        if let Some(p) = cx.problems.last_mut() {
                            p.warning = true;
                        }
                    }
                }
                app.insert("after".into(), T::Array(names.into_iter().map(T::String).collect()));
            }
            "healthcheck" => healthcheck(cx, name, v, &mut probes),
            "restart" => match v.str() {
                Some("always" | "unless-stopped") => {
                    app.insert("restart".into(), T::String("always".into()));
                }
                Some(s) if s == "on-failure" || s.starts_with("on-failure:") => {
                    app.insert("restart".into(), T::String("on-failure".into()));
                }
                Some("no") => {
                    app.insert("restart".into(), T::String("never".into()));
                }
                _ => cx.problem(v, at(key), "expected no, always, on-failure or unless-stopped"),
            },
            "deploy" => deploy(cx, name, v, &mut app, &mut resources, &mut placement),
            "devices" => {
                let mut list = Vec::new();
                for d in v.items().unwrap_or_default() {
                    match d.str().map(|s| s.split(':').collect::<Vec<_>>()) {
                        Some(parts) if parts.len() == 1 || parts.get(1) == parts.first() => {
                            list.push(T::String(parts[0].to_string()));
                        }
                        _ => cx.problem(
                            d,
                            at(key),
                            "a device keeps its path in the container (HOST:CONTAINER with another path does not map)",
                        ),
                    }
                }
                app.insert("devices".into(), T::Array(list));
            }
            "cap_add" | "cap_drop" => match strings(v) {
                Some(c) => {
                    security.insert(
                        key.clone(),
                        T::Array(c.into_iter().map(|c| T::String(c.trim_start_matches("CAP_").to_string())).collect()),
                    );
                }
                None => cx.problem(v, at(key), "expected a list of capabilities"),
            },
            "network_mode" => match v.str() {
                Some("host") => {
                    app.insert("host_network".into(), T::Boolean(true));
                }
                _ => cx.problem(v, at(key), "only network_mode: host maps (Bramble's pods have one network each)"),
            },
            "labels" => labels(cx, name, v, &mut app),
            "user" => {
                if let Some(u) = v.str() {
                    app.insert("user".into(), T::String(u.to_string()));
                }
            }
            "working_dir" => {
                if let Some(w) = v.str() {
                    app.insert("workdir".into(), T::String(w.to_string()));
                }
            }
            "stop_grace_period" => match v.str().and_then(duration) {
                Some(d) => {
                    app.insert("stop_grace".into(), T::String(d));
                }
                None => cx.problem(v, at(key), "expected a duration (10s, 1m30s)"),
            },
            "stop_signal" => {
                if let Some(sig) = v.str() {
                    app.insert("stop_signal".into(), T::String(sig.to_string()));
                }
            }
            "configs" => {
                let mut mounts = Vec::new();
                for c in v.items().unwrap_or_default() {
                    let (source, target) = match &c.value {
                        Value::Str(s, _) => (s.clone(), format!("/{s}")),
                        Value::Map(_) => (
                            c.get("source").and_then(Node::str).unwrap_or_default().to_string(),
                            c.get("target").and_then(Node::str).map(String::from).unwrap_or_default(),
                        ),
                        _ => (String::new(), String::new()),
                    };
                    let (dir, file) = target.rsplit_once('/').unwrap_or(("", ""));
                    if source.is_empty() || file != source {
                        cx.problem(c, at(key), format!(
                            "a config appears as a file named after it in the directory it is mounted at: {target:?} would have to be …/{source}"
                        ));
                        continue;
                    }
                    let mut m = toml::Table::new();
                    m.insert("name".into(), T::String(object_name(&source)));
                    m.insert("path".into(), T::String(if dir.is_empty() { "/".into() } else { dir.to_string() }));
                    mounts.push(T::Table(m));
                }
                app.insert("configs".into(), T::Array(mounts));
            }
            "secrets" => {
                let names: Vec<T> = v
                    .items()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|s| s.str().or_else(|| s.get("source").and_then(Node::str)))
                    .map(|s| T::String(s.to_string()))
                    .collect();
                cx.problems.push(Problem {
                    file: cx.file.to_string(),
                    line: v.line,
                    col: v.col,
                    field: at(key),
                    why: "a secret's keys appear as files in /run/secrets/NAME/ (Compose: the file /run/secrets/NAME); mounted so".into(),
                    warning: true,
                });
                app.insert("secrets".into(), T::Array(names));
            }
            k if IGNORED_SERVICE.iter().any(|(i, _)| *i == k) => {
                let why = IGNORED_SERVICE.iter().find(|(i, _)| *i == k).map_or("", |(_, w)| *w);
                cx.problem(v, at(k), format!("left out: {why}"));
                if let Some(p) = cx.problems.last_mut() {
                    p.warning = true;
                }
            }
            k => cx.problem(v, at(k), "not mapped to Bramble"),
        }
    }
    if !app.contains_key("image") {
        // (A build section has said why already.)
        if s.get("build").is_none() {
            cx.problem(s, at("image"), "a service needs an image");
        }
        return (None, None);
    }
    for (k, t) in
        [("env", env), ("security", security), ("resources", resources), ("placement", placement), ("probes", probes)]
    {
        if !t.is_empty() {
            app.insert(k.into(), T::Table(t));
        }
    }
    if !ports.is_empty() {
        app.insert("ports".into(), T::Array(ports.into_iter().map(T::Table).collect()));
    }
    if !volumes.is_empty() {
        app.insert("volumes".into(), T::Array(volumes.into_iter().map(T::Table).collect()));
    }
    service_ports.sort_unstable();
    service_ports.dedup();
    let service = (!service_ports.is_empty()).then(|| {
        let mut t = toml::Table::new();
        t.insert("name".into(), T::String(name.to_string()));
        t.insert("app".into(), T::String(name.to_string()));
        let ports = service_ports
            .iter()
            .map(|(p, udp)| {
                let mut m = toml::Table::new();
                m.insert("port".into(), T::Integer((*p).into()));
                if *udp {
                    m.insert("protocol".into(), T::String("udp".into()));
                }
                T::Table(m)
            })
            .collect();
        t.insert("ports".into(), T::Array(ports));
        t
    });
    (Some(app), service)
}

fn environment(cx: &mut Ctx<'_>, name: &str, v: &Node, env: &mut toml::Table) {
    let (mut unset, mut bad): (Vec<(String, Node)>, Vec<Node>) = (Vec::new(), Vec::new());
    let mut invalid: Vec<(String, Node)> = Vec::new();
    let mut put = |k: &str, val: Option<String>, n: &Node| {
        if bramble_proto::names::check_env_name(k).is_err() {
            invalid.push((k.to_string(), n.clone()));
            return;
        }
        match val.or_else(|| std::env::var(k).ok()) {
            Some(val) => {
                env.insert(k.to_string(), T::String(val));
            }
            None => unset.push((k.to_string(), n.clone())),
        }
    };
    match &v.value {
        Value::Map(m) => {
            for (k, n) in m {
                put(k, n.str().map(String::from), n);
            }
        }
        Value::Seq(items) => {
            for n in items {
                match n.str().map(|s| s.split_once('=').map_or((s, None), |(k, v)| (k, Some(v.to_string())))) {
                    Some((k, val)) => put(k, val, n),
                    None => bad.push(n.clone()),
                }
            }
        }
        _ => bad.push(v.clone()),
    }
    for (k, n) in unset {
        cx.problem(&n, format!("services.{name}.environment.{k}"), "no value, and none in the environment");
    }
    for (k, n) in invalid {
        cx.problem(&n, format!("services.{name}.environment.{k}"), "a variable name of letters, digits and '_' only maps (a program that reads dotted names cannot get this one)");
    }
    for n in bad {
        cx.problem(&n, format!("services.{name}.environment"), "expected a mapping or a list of KEY=VALUE");
    }
}

fn labels(cx: &mut Ctx<'_>, name: &str, v: &Node, app: &mut toml::Table) {
    let mut t = toml::Table::new();
    let pairs: Vec<(String, String)> = match &v.value {
        Value::Map(m) => m.iter().map(|(k, n)| (k.clone(), n.str().unwrap_or_default().to_string())).collect(),
        Value::Seq(items) => items
            .iter()
            .filter_map(|n| n.str())
            .map(|s| s.split_once('=').map_or((s.to_string(), String::new()), |(k, v)| (k.to_string(), v.to_string())))
            .collect(),
        _ => {
            cx.problem(v, format!("services.{name}.labels"), "expected a mapping or a list");
            return;
        }
    };
    for (k, val) in pairs {
        t.insert(k, T::String(val));
    }
    app.insert("labels".into(), T::Table(t));
}

/// `[IP:]HOST:CONTAINER[/PROTO]`, `CONTAINER`, or the long syntax.
fn port(p: &Node) -> Result<(u16, Option<u16>, String), String> {
    if let Some(target) = p.get("target") {
        let c = target.str().and_then(|s| s.parse().ok()).ok_or("expected target: a port")?;
        let h = p
            .get("published")
            .and_then(Node::str)
            .map(|s| s.parse().map_err(|_| "expected published: a port"))
            .transpose()?;
        let proto = p.get("protocol").and_then(Node::str).unwrap_or("tcp").to_string();
        return Ok((c, h, proto));
    }
    let s = p.str().ok_or("expected a port mapping")?;
    let (s, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let parts: Vec<&str> = s.rsplitn(3, ':').collect();
    let num = |x: &str| x.parse::<u16>().map_err(|_| format!("{x:?} is not a port (ranges do not map)"));
    match parts.as_slice() {
        [c] => Ok((num(c)?, None, proto.into())),
        [c, h] => Ok((num(c)?, Some(num(h)?), proto.into())),
        [c, h, _ip] => Ok((num(c)?, Some(num(h)?), proto.into())),
        _ => Err("expected HOST:CONTAINER".into()),
    }
}

/// `NAME:/path[:ro]` (a named volume: a local volume), `/abs:/path[:ro]` (a host path), or the long
/// syntax with type volume, bind or tmpfs.
fn volume(dir: &Path, v: &Node) -> Result<toml::Table, String> {
    let (kind, source, target, ro) = if let Some(target) = v.get("target").and_then(Node::str) {
        let kind = v.get("type").and_then(Node::str).unwrap_or("volume").to_string();
        let source = v.get("source").and_then(Node::str).unwrap_or_default().to_string();
        let ro = v.get("read_only").and_then(Node::bool).unwrap_or(false);
        (kind, source, target.to_string(), ro)
    } else {
        let s = v.str().ok_or("expected SOURCE:TARGET[:ro] or a mapping")?;
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            [t] => ("tmpfs".to_string(), String::new(), t.to_string(), false),
            [src, t] | [src, t, _] => {
                let ro = parts.get(2).is_some_and(|o| o.split(',').any(|o| o == "ro"));
                let bind = src.starts_with('/') || src.starts_with('.') || src.starts_with('~');
                ((if bind { "bind" } else { "volume" }).to_string(), src.to_string(), t.to_string(), ro)
            }
            _ => return Err("expected SOURCE:TARGET[:ro]".into()),
        }
    };
    let mut t = toml::Table::new();
    t.insert("path".into(), T::String(target));
    match kind.as_str() {
        "volume" if !source.is_empty() => {
            t.insert("type".into(), T::String("local".into()));
            t.insert("name".into(), T::String(object_name(&source)));
        }
        // An anonymous volume: the container's own, gone with it.
        "volume" | "tmpfs" => {
            t.insert("type".into(), T::String("tmpfs".into()));
        }
        "bind" => {
            let abs = if source.starts_with('/') { Some(source.clone()) } else { None };
            let Some(abs) = abs else {
                return Err(format!(
                    "{source:?} is relative to the Compose file ({}): a bind mount is a path on the board; give it absolute, allowed in the board's [volumes] host_paths",
                    dir.display()
                ));
            };
            if let Err(e) = bramble_proto::hostpath::check(&abs, &[]) {
                return Err(format!("{e} (Bramble never mounts the board's system into a container)"));
            }
            t.insert("type".into(), T::String("host".into()));
            t.insert("host_path".into(), T::String(abs));
            // Only boards that have the path run it: the user labels them (said in a note).
            t.insert("node_label".into(), T::String(HOST_PATH_LABEL.into()));
        }
        k => return Err(format!("volume type {k} does not map")),
    }
    if ro {
        t.insert("read_only".into(), T::Boolean(true));
    }
    Ok(t)
}

fn healthcheck(cx: &mut Ctx<'_>, name: &str, v: &Node, probes: &mut toml::Table) {
    if v.get("disable").and_then(Node::bool) == Some(true) {
        return;
    }
    let at = |k: &str| format!("services.{name}.healthcheck.{k}");
    let Some(test) = v.get("test") else {
        cx.problem(v, at("test"), "a healthcheck needs test");
        return;
    };
    let exec: Option<Vec<String>> = match strings(test) {
        Some(list) if list.first().map(String::as_str) == Some("CMD") => Some(list[1..].to_vec()),
        Some(list) if list.first().map(String::as_str) == Some("CMD-SHELL") => {
            Some(vec!["/bin/sh".into(), "-c".into(), list[1..].join(" ")])
        }
        Some(list) if list.first().map(String::as_str) == Some("NONE") => return,
        Some(list) if list.len() == 1 => Some(vec!["/bin/sh".into(), "-c".into(), list[0].clone()]),
        _ => None,
    };
    let Some(exec) = exec.filter(|e| !e.is_empty()) else {
        cx.problem(test, at("test"), "expected [\"CMD\", …], [\"CMD-SHELL\", \"…\"] or a shell command");
        return;
    };
    let mut p = toml::Table::new();
    p.insert("exec".into(), T::Array(exec.into_iter().map(T::String).collect()));
    for (from, to) in [("interval", "period"), ("timeout", "timeout"), ("start_period", "initial_delay")] {
        if let Some(n) = v.get(from) {
            match n.str().and_then(duration) {
                Some(d) => {
                    p.insert(to.into(), T::String(d));
                }
                None => cx.problem(n, at(from), "expected a duration"),
            }
        }
    }
    if let Some(n) = v.get("retries") {
        match n.str().and_then(|s| s.parse::<i64>().ok()).filter(|r| *r > 0) {
            Some(r) => {
                p.insert("failure_threshold".into(), T::Integer(r));
            }
            None => cx.problem(n, at("retries"), "expected a number above 0"),
        }
    }
    // Docker's health decides whether the container takes traffic (as readiness), never restarts it.
    probes.insert("readiness".into(), T::Table(p));
}

fn deploy(
    cx: &mut Ctx<'_>,
    name: &str,
    v: &Node,
    app: &mut toml::Table,
    resources: &mut toml::Table,
    placement: &mut toml::Table,
) {
    let at = |k: &str| format!("services.{name}.deploy.{k}");
    for (key, n) in v.entries().unwrap_or_default() {
        match key.as_str() {
            "replicas" => match n.str().and_then(|s| s.parse::<i64>().ok()).filter(|r| *r >= 0) {
                Some(r) => {
                    app.insert("replicas".into(), T::Integer(r));
                }
                None => cx.problem(n, at(key), "expected a number"),
            },
            "mode" => match n.str() {
                Some("global") => {
                    app.insert("mode".into(), T::String("every-board".into()));
                }
                Some("replicated") => {}
                _ => cx.problem(n, at(key), "expected replicated or global"),
            },
            "resources" => {
                for (which, r) in n.entries().unwrap_or_default() {
                    // Limits are what Bramble enforces; a reservation alone is the request.
                    if which != "limits" && which != "reservations" {
                        cx.problem(r, at(&format!("resources.{which}")), "not mapped");
                        continue;
                    }
                    if let Some(c) = r.get("cpus").and_then(Node::str) {
                        match cpus(c) {
                            Some(c) => {
                                resources.entry("cpu").or_insert(T::String(c));
                            }
                            None => cx.problem(r, at(&format!("resources.{which}.cpus")), "expected a number of CPUs"),
                        }
                    }
                    if let Some(m) = r.get("memory").and_then(Node::str) {
                        match memory(m) {
                            Some(m) => {
                                resources.entry("memory").or_insert(T::String(m));
                            }
                            None => {
                                cx.problem(r, at(&format!("resources.{which}.memory")), "expected a size (512m, 1g)")
                            }
                        }
                    }
                    if let Some(d) = r.get("devices") {
                        cx.problem(
                            d,
                            at(&format!("resources.{which}.devices")),
                            "GPU reservations do not map; give devices paths",
                        );
                    }
                }
            }
            "placement" => {
                let mut selector = toml::Table::new();
                for c in n.get("constraints").and_then(Node::items).unwrap_or_default() {
                    let parsed = c.str().and_then(|s| {
                        let (k, v) = s.split_once("==")?;
                        Some((k.trim().strip_prefix("node.labels.")?.to_string(), v.trim().to_string()))
                    });
                    match parsed {
                        Some((k, v)) => {
                            selector.insert(k, T::String(v));
                        }
                        None => cx.problem(c, at("placement.constraints"), "only node.labels.KEY == VALUE maps"),
                    }
                }
                if !selector.is_empty() {
                    placement.insert("node_selector".into(), T::Table(selector));
                }
            }
            "restart_policy" | "update_config" | "rollback_config" | "labels" | "endpoint_mode" => {
                cx.problem(n, at(key), "not mapped: Bramble rolls out and restarts by its own rules (restart, update)");
            }
            k => cx.problem(n, at(k), "not mapped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Converted {
        let docs = super::super::yaml::load(text).unwrap();
        convert("compose.yml", Path::new("/tmp"), &docs[0])
    }

    #[test]
    fn files_are_read_only_beside_the_compose_file() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("app.env"), "A=1\n").unwrap();
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("sub/passwd")).unwrap();
        assert_eq!(read_beside(&dir, "app.env").unwrap(), "A=1\n");
        for bad in ["/etc/passwd", "../x", "sub/../../x", "sub/passwd"] {
            assert!(read_beside(&dir, bad).is_err(), "{bad}");
        }
        let c = convert(
            "c.yml",
            &dir,
            &super::super::yaml::load("services:\n  a:\n    image: x\n    env_file: /etc/shadow\n").unwrap()[0],
        );
        assert!(c.problems[0].why.contains("only files in the Compose file's directory"), "{:?}", c.problems);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("bramble-convert-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn words_durations_and_sizes() {
        assert_eq!(
            split_words("sh -c 'echo a b' \"x y\""),
            Some(vec!["sh".into(), "-c".into(), "echo a b".into(), "x y".into()])
        );
        assert_eq!(split_words("a 'b"), None);
        assert_eq!(duration("1m30s").as_deref(), Some("90s"));
        assert_eq!(duration("500ms").as_deref(), Some("500ms"));
        assert_eq!(duration("soon"), None);
        assert_eq!(memory("512m").as_deref(), Some("512Mi"));
        assert_eq!(memory("1GB").as_deref(), Some("1Gi"));
        assert_eq!(cpus("0.5").as_deref(), Some("500m"));
        assert_eq!(object_name("index.html"), "index-html");
        assert_eq!(object_name("-My_Config-"), "my-config");
    }

    #[test]
    fn a_typical_service_maps_and_what_does_not_is_said_at_its_line() {
        let c = run(
            "services:\n  web:\n    image: nginx:1.25\n    ports: [\"8080:80\", \"443\"]\n    environment:\n      A: \"1\"\n    volumes:\n      - data:/var/lib/data\n      - ./conf:/etc/conf:ro\n    privileged: true\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"localhost\"]\n      interval: 10s\n      retries: 3\n    deploy:\n      replicas: 2\n      resources:\n        limits: { cpus: \"0.5\", memory: 256m }\n    restart: unless-stopped\n    depends_on: [db]\n  db:\n    build: .\nvolumes:\n  data: {}\n",
        );
        let problems: Vec<String> = c.problems.iter().map(|p| format!("{}:{} {}", p.line, p.field, p.why)).collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("9:services.web.volumes[1] \"./conf\" is relative"), "{problems:?}");
        assert!(problems[1].starts_with("10:services.web.privileged not mapped"), "{problems:?}");
        assert!(problems[2].starts_with("22:services.db.build Bramble runs images from a registry"), "{problems:?}");
        let web = &c.objects.iter().find(|o| o.2 == "service web").unwrap().4;
        assert_eq!(web["image"].as_str(), Some("nginx:1.25"));
        assert_eq!(web["replicas"].as_integer(), Some(2));
        assert_eq!(web["resources"]["cpu"].as_str(), Some("500m"));
        assert_eq!(web["probes"]["readiness"]["period"].as_str(), Some("10s"));
        assert_eq!(web["volumes"][0]["type"].as_str(), Some("local"));
        let svc = &c.objects.iter().find(|o| o.3 == "service").unwrap().4;
        assert_eq!(svc["ports"].as_array().unwrap().len(), 2, "80 and 443 by name");
    }
}
