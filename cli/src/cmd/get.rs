//! `bramble get nodes|apps|replicas|services|secrets|configs|leaders [NAME]`: a table, a wide
//! one, JSON, or `kind/name` lines; with NAME only that object (exit 4 when there is none).

use crate::client::{request, unexpected, CliError};
use crate::output::{json, table, Format};
use bramble_proto::quantity::human_bytes;
use bramble_proto::wire::{ReplicaCount, Request, Response};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// What to list.
    kind: Kind,
    /// Only this object (`bramble get app web`); exit 4 when there is none.
    name: Option<String>,
    /// Only the replicas of this app (with `get replicas`).
    #[arg(long)]
    app: Option<String>,
    /// Only nodes, apps or the replicas of apps whose labels match: `tier=web,env!=test,critical,!legacy`.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    selector: Option<bramble_proto::selector::Selector>,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
    /// After the table, a row each time an object changes or goes, until interrupted.
    #[arg(short, long)]
    watch: bool,
    /// With `get replicas`: how many each app has, by phase, counted by the leader (cheap at
    /// thousands of replicas; `-o json` for scripts waiting on a rollout).
    #[arg(long)]
    count: bool,
}

/// How to print what `get` found.
#[derive(Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// A table.
    #[default]
    Table,
    /// A wider table.
    Wide,
    /// JSON, for scripts (one object when NAME is given).
    Json,
    /// `kind/name` a line, for scripts (`bramble get replicas -o name | xargs …`).
    Name,
    /// Apps, services and configs as a manifest `bramble apply` takes back unchanged.
    Toml,
    /// YAML, as JSON is (one object when NAME is given).
    Yaml,
}

impl Output {
    fn format(self) -> Format {
        match self {
            Output::Table | Output::Name | Output::Toml | Output::Yaml => Format::Table,
            Output::Wide => Format::Wide,
            Output::Json => Format::Json,
        }
    }
}

/// The objects `get` lists, narrowed to `name` when given (refused when there is no such one),
/// and printed as JSON, names or a manifest when asked; what is left for the table, if anything.
fn pick<T: serde::Serialize>(
    list: Vec<T>,
    kind: &str,
    name: Option<&str>,
    output: Output,
    name_of: impl Fn(&T) -> &str,
) -> Result<Option<Vec<T>>, CliError> {
    pick_manifest(list, kind, name, output, name_of, |_: &T| None::<()>)
}

/// [`pick`] for kinds with a manifest form: `spec_of` gives what `[[kind]]` holds.
fn pick_manifest<T: serde::Serialize, S: serde::Serialize>(
    list: Vec<T>,
    kind: &str,
    name: Option<&str>,
    output: Output,
    name_of: impl Fn(&T) -> &str,
    spec_of: impl Fn(&T) -> Option<S>,
) -> Result<Option<Vec<T>>, CliError> {
    let list: Vec<T> = match name {
        None => list,
        Some(n) => {
            let found: Vec<T> = list.into_iter().filter(|o| name_of(o) == n).collect();
            if found.is_empty() {
                return Err(CliError::Api(bramble_proto::wire::ApiError {
                    code: bramble_proto::wire::ErrorCode::NotFound,
                    message: format!("{kind} {n:?} not found"),
                    leader: None,
                    problems: Vec::new(),
                }));
            }
            found
        }
    };
    match output {
        Output::Json if name.is_some() => print!("{}", json(&list[0])),
        Output::Json => print!("{}", json(&list)),
        Output::Yaml if name.is_some() => print!("{}", crate::output::yaml(&list[0])),
        Output::Yaml => print!("{}", crate::output::yaml(&list)),
        Output::Name => list.iter().for_each(|o| println!("{kind}/{}", name_of(o))),
        Output::Toml => {
            let specs: Vec<S> = list.iter().filter_map(&spec_of).collect();
            if specs.len() != list.len()
                || !matches!(kind, "app" | "job" | "cronjob" | "ingress" | "registry" | "service" | "config")
            {
                return Err(CliError::Other(format!("a {kind} has no manifest form: use -o json")));
            }
            let doc = std::collections::BTreeMap::from([(kind, specs)]);
            print!("{}", toml::to_string(&doc).map_err(|e| CliError::Other(format!("cannot show as TOML: {e}")))?);
        }
        Output::Table | Output::Wide => return Ok(Some(list)),
    }
    Ok(None)
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    #[value(alias = "node", alias = "no")]
    Nodes,
    #[value(alias = "app")]
    Apps,
    /// Jobs: runs to completion (COMPLETIONS succeeded of wanted, STATUS, DURATION).
    #[value(alias = "job")]
    Jobs,
    /// Cron jobs: SCHEDULE in TIMEZONE, ACTIVE jobs, LAST run made and NEXT due.
    #[value(name = "cronjobs", alias = "cronjob", alias = "cj")]
    CronJobs,
    /// Ingresses: HOST, its PATHS to services, TLS.
    #[value(alias = "ingress", alias = "ing")]
    Ingresses,
    /// Registries: HOST, SECRET (its name; never a credential), INSECURE, MIRRORS.
    #[value(alias = "registry", alias = "reg")]
    Registries,
    #[value(alias = "service", alias = "svc")]
    Services,
    #[value(alias = "replica", alias = "rs")]
    Replicas,
    /// Names, keys and ages; never values.
    #[value(alias = "secret")]
    Secrets,
    /// Names, files and sizes.
    #[value(alias = "config", alias = "cm")]
    Configs,
    /// The leaders sharing the cluster's store, and which one is active.
    #[value(alias = "leader")]
    Leaders,
}

/// A table: its header and rows.
type Rows = (Vec<&'static str>, Vec<Vec<String>>);

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    if args.watch && !matches!(args.output, Output::Table | Output::Wide) {
        return Err(CliError::Other("--watch prints table rows: use it with -o wide or no -o".into()));
    }
    let Some((header, rows)) = fetch(&config, &args).await? else { return Ok(()) };
    print!("{}", table(&header, &rows));
    if !args.watch {
        return Ok(());
    }
    // Then a row each time an object's row changes (its age aside), and when one goes.
    let age = header.iter().position(|h| *h == "AGE" || *h == "SINCE");
    let key = |row: &Vec<String>| {
        let mut r = row.clone();
        if let Some(a) = age {
            r.remove(a);
        }
        r
    };
    let mut seen: std::collections::BTreeMap<String, Vec<String>> =
        rows.iter().map(|r| (r[0].clone(), key(r))).collect();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let Some((header, rows)) = fetch(&config, &args).await? else { return Ok(()) };
        let mut now = std::collections::BTreeMap::new();
        let mut changed = Vec::new();
        for r in rows {
            let k = key(&r);
            if seen.get(&r[0]) != Some(&k) {
                changed.push(r.clone());
            }
            now.insert(r[0].clone(), k);
        }
        for (_, mut row) in seen.into_iter().filter(|(n, _)| !now.contains_key(n)) {
            if let Some(a) = age {
                row.insert(a, "<deleted>".into());
            }
            changed.push(row);
        }
        if !changed.is_empty() {
            // The rows alone, as wide as the first table's columns would need for them.
            let text = table(&header, &changed);
            print!("{}", text.split_once('\n').map_or("", |(_, rest)| rest));
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        seen = now;
    }
}

async fn fetch(config: &Option<PathBuf>, args: &Args) -> Result<Option<Rows>, CliError> {
    let (config, name, output) = (config.clone(), args.name.as_deref(), args.output);
    let sel = args.selector.clone().unwrap_or_default();
    if !sel.is_empty() && !matches!(args.kind, Kind::Nodes | Kind::Apps | Kind::Replicas) {
        return Err(CliError::Other("-l selects nodes, apps and replicas (by their app's labels)".into()));
    }
    if args.count {
        if !matches!(args.kind, Kind::Replicas) {
            return Err(CliError::Other("--count counts replicas: `bramble get replicas --count`".into()));
        }
        return counts(config, args.app.as_deref().or(name), output, &sel).await;
    }
    match args.kind {
        Kind::Nodes => nodes(config, name, output, &sel).await,
        Kind::Apps => apps(config, name, output, &sel).await,
        Kind::Jobs => jobs(config, name, output).await,
        Kind::CronJobs => cronjobs(config, name, output).await,
        Kind::Ingresses => ingresses(config, name, output).await,
        Kind::Registries => registries(config, name, output).await,
        Kind::Services => services(config, name, output).await,
        Kind::Replicas => replicas(config, args.app.clone(), name, output, &sel).await,
        Kind::Secrets => secrets(config, name, output).await,
        Kind::Configs => configs(config, name, output).await,
        Kind::Leaders => leaders(config, name, output).await,
    }
}

async fn leaders(config: Option<PathBuf>, name: Option<&str>, output: Output) -> Result<Option<Rows>, CliError> {
    let mut list = match request(config, Request::GetLeaders).await? {
        Response::Leaders(l) => l,
        r => return Err(unexpected(&r)),
    };
    list.sort_by(|a, b| b.active.cmp(&a.active).then(a.name.cmp(&b.name)));
    let Some(list) = pick(list, "leader", name, output, |l| &l.name)? else { return Ok(None) };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|l| {
            vec![
                l.name.clone(),
                l.addr.clone(),
                if l.active { "active" } else { "standby" }.to_string(),
                l.store.clone(),
                super::age(l.since_ms),
            ]
        })
        .collect();
    Ok(Some((vec!["NAME", "ADDRESS", "ROLE", "STORE", "SINCE"], rows)))
}

async fn configs(config: Option<PathBuf>, name: Option<&str>, output: Output) -> Result<Option<Rows>, CliError> {
    let list = match request(config, Request::GetConfigs).await? {
        Response::Configs(c) => c,
        r => return Err(unexpected(&r)),
    };
    let Some(list) = pick_manifest(list, "config", name, output, |c| &c.meta.name, |c| Some(c.spec.clone()))? else {
        return Ok(None);
    };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let files: Vec<&str> = c.spec.files.keys().map(String::as_str).collect();
            let size: usize = c.spec.files.values().map(String::len).sum();
            vec![
                c.meta.name.clone(),
                files.join(","),
                human_bytes(size as u64),
                c.meta.generation.to_string(),
                super::age(c.meta.created_ms),
            ]
        })
        .collect();
    Ok(Some((vec!["NAME", "FILES", "SIZE", "VERSION", "AGE"], rows)))
}

async fn secrets(config: Option<PathBuf>, name: Option<&str>, output: Output) -> Result<Option<Rows>, CliError> {
    let list = match request(config, Request::GetSecrets).await? {
        Response::Secrets(s) => s,
        r => return Err(unexpected(&r)),
    };
    let Some(list) = pick(list, "secret", name, output, |s| &s.name)? else { return Ok(None) };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let keys: Vec<&str> = s.keys.keys().map(String::as_str).collect();
            vec![s.name.clone(), keys.join(","), s.version.to_string(), super::age(s.created_ms)]
        })
        .collect();
    Ok(Some((vec!["NAME", "KEYS", "VERSION", "AGE"], rows)))
}

async fn replicas(
    config: Option<PathBuf>,
    app: Option<String>,
    name: Option<&str>,
    output: Output,
    sel: &bramble_proto::selector::Selector,
) -> Result<Option<Rows>, CliError> {
    let mut replicas = match request(config.clone(), Request::GetReplicas { app }).await? {
        Response::Replicas(r) => r,
        r => return Err(unexpected(&r)),
    };
    if !sel.is_empty() {
        let chosen = apps_selected(config, sel).await?;
        replicas.retain(|r| chosen.contains(&r.app));
    }
    let Some(replicas) = pick(replicas, "replica", name, output, |r| &r.meta.name)? else { return Ok(None) };
    let wide = output.format() == Format::Wide;
    let mut header = vec!["NAME", "APP", "NODE", "READY", "PHASE", "RESTARTS", "AGE"];
    if wide {
        header.extend(["IP", "REVISION", "EXIT", "REASON"]);
    }
    let rows: Vec<Vec<String>> = replicas
        .iter()
        .map(|r| {
            let mut row = vec![
                r.meta.name.clone(),
                r.app.clone(),
                r.node.clone().unwrap_or_else(|| "<none>".into()),
                super::ready(r).into(),
                super::phase(r),
                r.restarts.to_string(),
                super::age(r.meta.created_ms),
            ];
            if wide {
                row.push(r.ip.map_or("-".into(), |ip| ip.to_string()));
                row.push(r.revision_hash.clone());
                row.push(r.exit_code.map_or("-".into(), |c| c.to_string()));
                row.push(if r.reason.is_empty() { "-".into() } else { r.reason.clone() });
            }
            row
        })
        .collect();
    Ok(Some((header, rows)))
}

/// Every app's replicas counted by the leader; from a leader that does not know the request yet
/// (it resets the stream), counted here from the whole list.
async fn replica_counts(config: Option<PathBuf>) -> Result<Vec<ReplicaCount>, CliError> {
    match request(config.clone(), Request::CountReplicas).await {
        Ok(Response::ReplicaCounts(c)) => Ok(c),
        Ok(r) => Err(unexpected(&r)),
        Err(CliError::Other(e)) if e.contains("reset by peer") || e.contains("stopped by peer") => {
            let replicas = match request(config, Request::GetReplicas { app: None }).await? {
                Response::Replicas(r) => r,
                r => return Err(unexpected(&r)),
            };
            Ok(ReplicaCount::tally(replicas.into_iter().map(|r| (r.app, r.phase, r.ready, r.terminating_ms.is_some()))))
        }
        Err(e) => Err(e),
    }
}

/// The names of the apps whose labels `sel` matches (`-l` on replicas selects by their app's).
async fn apps_selected(
    config: Option<PathBuf>,
    sel: &bramble_proto::selector::Selector,
) -> Result<std::collections::BTreeSet<String>, CliError> {
    match request(config, Request::GetApps).await? {
        Response::Apps(a) => Ok(a.into_iter().filter(|a| sel.matches(&a.spec.labels)).map(|a| a.meta.name).collect()),
        r => Err(unexpected(&r)),
    }
}

/// `get replicas --count`: a row per app (or the one `app`).
async fn counts(
    config: Option<PathBuf>,
    app: Option<&str>,
    output: Output,
    sel: &bramble_proto::selector::Selector,
) -> Result<Option<Rows>, CliError> {
    let mut counts = replica_counts(config.clone()).await?;
    if !sel.is_empty() {
        let chosen = apps_selected(config, sel).await?;
        counts.retain(|c| chosen.contains(&c.app));
    }
    let Some(counts) = pick(counts, "app", app, output, |c| &c.app)? else { return Ok(None) };
    let rows = counts
        .iter()
        .map(|c| {
            let phases: Vec<String> = c.phases.iter().map(|(p, n)| format!("{p}={n}")).collect();
            vec![c.app.clone(), c.total.to_string(), c.serving.to_string(), phases.join(",")]
        })
        .collect();
    Ok(Some((vec!["APP", "REPLICAS", "SERVING", "PHASES"], rows)))
}

async fn apps(
    config: Option<PathBuf>,
    name: Option<&str>,
    output: Output,
    sel: &bramble_proto::selector::Selector,
) -> Result<Option<Rows>, CliError> {
    let mut apps = match request(config.clone(), Request::GetApps).await? {
        Response::Apps(a) => a,
        r => return Err(unexpected(&r)),
    };
    apps.retain(|a| sel.matches(&a.spec.labels) && !a.spec.is_job());
    let Some(apps) = pick_manifest(apps, "app", name, output, |a| &a.meta.name, |a| Some(a.spec.clone()))? else {
        return Ok(None);
    };
    let counts: std::collections::BTreeMap<String, ReplicaCount> =
        replica_counts(config).await?.into_iter().map(|c| (c.app.clone(), c)).collect();
    let wide = output.format() == Format::Wide;
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            let mine = counts.get(&a.meta.name).cloned().unwrap_or_default();
            let ready = mine.serving;
            // An every-board app wants a replica on each board it matches: the planner keeps one
            // there (Pending while the board is down).
            let desired = if a.spec.every_board() { mine.live } else { a.spec.replicas.0 };
            let mut row = vec![
                a.meta.name.clone(),
                format!("{ready}/{desired}"),
                a.spec.image.to_string(),
                a.meta.generation.to_string(),
                super::age(a.meta.created_ms),
            ];
            if wide {
                let labels: Vec<String> = a.spec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                row.push(if labels.is_empty() { "-".into() } else { labels.join(",") });
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "READY", "IMAGE", "GENERATION", "AGE"];
    if wide {
        header.push("LABELS");
    }
    Ok(Some((header, rows)))
}

/// A job as `get jobs -o json` shows it: the stored object and its state from its runs.
#[derive(serde::Serialize)]
pub struct JobView {
    pub meta: bramble_proto::model::ObjectMeta,
    pub spec: bramble_proto::manifest::AppSpec,
    pub status: bramble_proto::job::JobStatus,
    /// The cron job that made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cronjob: Option<String>,
}

/// Every job with its state, read from its runs.
pub async fn job_views(
    config: Option<PathBuf>,
) -> Result<(Vec<JobView>, Vec<bramble_proto::model::Replica>), CliError> {
    let apps = match request(config.clone(), Request::GetApps).await? {
        Response::Apps(a) => a,
        r => return Err(unexpected(&r)),
    };
    let replicas = match request(config, Request::GetReplicas { app: None }).await? {
        Response::Replicas(r) => r,
        r => return Err(unexpected(&r)),
    };
    let now = bramble_proto::time::now_ms();
    let views = apps
        .into_iter()
        .filter(|a| a.spec.is_job())
        .map(|a| {
            let runs: Vec<&bramble_proto::model::Replica> = replicas
                .iter()
                .filter(|r| r.app == a.meta.name && r.phase != bramble_proto::model::ReplicaPhase::Lost)
                .collect();
            let status = bramble_proto::job::status(&a.spec, a.meta.created_ms, &runs, now);
            JobView { meta: a.meta, spec: a.spec, status, cronjob: a.cronjob }
        })
        .collect();
    Ok((views, replicas))
}

/// `Complete`, `Running`, `Failed: why`.
pub fn job_state(s: &bramble_proto::job::JobStatus) -> String {
    match &s.state {
        bramble_proto::job::JobState::Running => "Running".into(),
        bramble_proto::job::JobState::Complete => "Complete".into(),
        bramble_proto::job::JobState::Failed => format!("Failed: {}", s.reason),
    }
}

/// How long a job ran (or has run so far).
pub fn job_duration(v: &JobView) -> String {
    let end = v.status.finished_ms.unwrap_or_else(bramble_proto::time::now_ms);
    bramble_proto::quantity::format_duration(std::time::Duration::from_secs(
        end.saturating_sub(v.meta.created_ms) / 1000,
    ))
}

async fn jobs(config: Option<PathBuf>, name: Option<&str>, output: Output) -> Result<Option<Rows>, CliError> {
    let (views, _) = job_views(config).await?;
    let Some(views) = pick_manifest(views, "job", name, output, |v| &v.meta.name, |v| Some(v.spec.clone()))? else {
        return Ok(None);
    };
    let wide = output.format() == Format::Wide;
    let rows = views
        .iter()
        .map(|v| {
            let mut row = vec![
                v.meta.name.clone(),
                format!("{}/{}", v.status.succeeded, v.status.completions),
                job_state(&v.status),
                job_duration(v),
                super::age(v.meta.created_ms),
            ];
            if wide {
                row.extend([v.status.active.to_string(), v.status.failed.to_string(), v.spec.image.to_string()]);
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "COMPLETIONS", "STATUS", "DURATION", "AGE"];
    if wide {
        header.extend(["ACTIVE", "FAILED", "IMAGE"]);
    }
    Ok(Some((header, rows)))
}

/// How far off `ms` is from now: `3m ago`, `in 42s`.
pub fn relative(ms: u64) -> String {
    let now = bramble_proto::time::now_ms();
    let text = |d: u64| bramble_proto::quantity::format_duration(std::time::Duration::from_secs(d / 1000));
    if ms <= now {
        format!("{} ago", text(now - ms))
    } else {
        format!("in {}", text(ms - now + 999))
    }
}

async fn registries(config: Option<PathBuf>, name: Option<&str>, output: Output) -> Result<Option<Rows>, CliError> {
    let list = match request(config, Request::GetRegistries).await? {
        Response::Registries(r) => r,
        r => return Err(unexpected(&r)),
    };
    let spec_of = |r: &bramble_proto::model::Registry| Some(r.spec.clone());
    let Some(list) = pick_manifest(list, "registry", name, output, |r| &r.meta.name, spec_of)? else {
        return Ok(None);
    };
    let rows = list
        .iter()
        .map(|r| {
            let mirrors = if r.spec.mirrors.is_empty() { "-".to_string() } else { r.spec.mirrors.join(",") };
            vec![
                r.meta.name.clone(),
                r.spec.host.clone(),
                r.spec.secret.as_ref().map_or("-".into(), |s| s.to_string()),
                if r.spec.insecure { "yes" } else { "no" }.to_string(),
                mirrors,
                super::age(r.meta.created_ms),
            ]
        })
        .collect();
    Ok(Some((vec!["NAME", "HOST", "SECRET", "INSECURE", "MIRRORS", "AGE"], rows)))
}

async fn ingresses(config: Option<PathBuf>, name: Option<&str>, output: Output) -> Result<Option<Rows>, CliError> {
    let list = match request(config, Request::GetIngresses).await? {
        Response::Ingresses(i) => i,
        r => return Err(unexpected(&r)),
    };
    let spec_of = |i: &bramble_proto::model::Ingress| Some(i.spec.clone());
    let Some(list) = pick_manifest(list, "ingress", name, output, |i| &i.meta.name, spec_of)? else {
        return Ok(None);
    };
    let rows = list
        .iter()
        .map(|i| {
            let paths: Vec<String> = i
                .spec
                .backends()
                .into_iter()
                .map(|(p, _, s, port)| {
                    format!(
                        "{p}->{s}:{}",
                        match port {
                            bramble_proto::manifest::PortTarget::Number(n) => n.0.to_string(),
                            bramble_proto::manifest::PortTarget::Name(n) => n.to_string(),
                        }
                    )
                })
                .collect();
            let tls = match &i.spec.tls {
                Some(t) if t.acme => "acme".to_string(),
                Some(t) => t.secret.as_ref().map_or("-".into(), |s| format!("secret/{s}")),
                None => "-".to_string(),
            };
            vec![i.meta.name.clone(), i.spec.host.clone(), paths.join(","), tls, super::age(i.meta.created_ms)]
        })
        .collect();
    Ok(Some((vec!["NAME", "HOST", "PATHS", "TLS", "AGE"], rows)))
}

async fn cronjobs(config: Option<PathBuf>, name: Option<&str>, output: Output) -> Result<Option<Rows>, CliError> {
    let list = match request(config.clone(), Request::GetCronJobs).await? {
        Response::CronJobs(c) => c,
        r => return Err(unexpected(&r)),
    };
    let spec_of = |v: &bramble_proto::wire::CronJobView| Some(v.cronjob.spec.clone());
    let Some(list) = pick_manifest(list, "cronjob", name, output, |v| &v.cronjob.meta.name, spec_of)? else {
        return Ok(None);
    };
    let (jobs, _) = job_views(config).await?;
    let wide = output.format() == Format::Wide;
    let rows = list
        .iter()
        .map(|v| {
            let c = &v.cronjob;
            let active = jobs
                .iter()
                .filter(|j| j.cronjob.as_deref() == Some(c.meta.name.as_str()) && !j.status.state.finished())
                .count();
            let mut row = vec![
                c.meta.name.clone(),
                c.spec.schedule.to_string(),
                c.spec.timezone.clone().unwrap_or_else(|| "UTC".into()),
                c.spec.suspend.to_string(),
                active.to_string(),
                c.status.last_schedule_ms.map_or("-".into(), relative),
                v.next_ms.map_or("-".into(), relative),
                super::age(c.meta.created_ms),
            ];
            if wide {
                row.extend([
                    format!("{:?}", c.spec.concurrency).to_lowercase(),
                    c.status.last_job.clone().unwrap_or_else(|| "-".into()),
                    c.spec.job.image.to_string(),
                ]);
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "NEXT", "AGE"];
    if wide {
        header.extend(["CONCURRENCY", "LAST JOB", "IMAGE"]);
    }
    Ok(Some((header, rows)))
}

async fn services(config: Option<PathBuf>, name: Option<&str>, output: Output) -> Result<Option<Rows>, CliError> {
    let services = match request(config, Request::GetServices).await? {
        Response::Services(s) => s,
        r => return Err(unexpected(&r)),
    };
    let Some(services) = pick_manifest(services, "service", name, output, |s| &s.meta.name, |s| Some(s.spec.clone()))?
    else {
        return Ok(None);
    };
    let wide = output.format() == Format::Wide;
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let ports: Vec<String> =
                s.spec.ports.iter().map(|p| format!("{}/{}", p.port.0, super::protocol(p.protocol))).collect();
            let ready = s.endpoints.iter().filter(|e| e.ready).count();
            let mut row = vec![
                s.meta.name.clone(),
                s.vip.map_or_else(|| "<pending>".into(), |v| v.to_string()),
                ports.join(","),
                format!("{ready}/{}", s.endpoints.len()),
                super::age(s.meta.created_ms),
            ];
            if wide {
                row.push(s.spec.app.to_string());
                let eps: Vec<String> = s.endpoints.iter().filter(|e| e.ready).map(|e| e.ip.to_string()).collect();
                row.push(if eps.is_empty() { "-".into() } else { eps.join(",") });
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "VIP", "PORTS", "ENDPOINTS", "AGE"];
    if wide {
        header.extend(["APP", "ADDRESSES"]);
    }
    Ok(Some((header, rows)))
}

async fn nodes(
    config: Option<PathBuf>,
    name: Option<&str>,
    output: Output,
    sel: &bramble_proto::selector::Selector,
) -> Result<Option<Rows>, CliError> {
    let mut nodes = match request(config, Request::GetNodes).await? {
        Response::Nodes(n) => n,
        r => return Err(unexpected(&r)),
    };
    nodes.retain(|n| sel.matches(&n.node.effective_labels()));
    let Some(nodes) = pick(nodes, "node", name, output, |n| &n.node.meta.name)? else { return Ok(None) };
    let wide = output.format() == Format::Wide;
    let mut header = vec!["NAME", "STATUS", "ARCH", "CPU", "MEMORY", "AGE", "VERSION"];
    if wide {
        header.extend(["ADDRESS", "OS", "KERNEL"]);
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|v| {
            let n = &v.node;
            let mut row = vec![
                n.meta.name.clone(),
                v.status_text(),
                n.info.arch.to_string(),
                bramble_proto::quantity::Cpu(n.info.allocatable.cpu_millis).to_string(),
                human_bytes(n.info.allocatable.memory_bytes),
                super::age(n.meta.created_ms),
                n.info.agent_version.clone(),
            ];
            if wide {
                row.push(
                    v.session_address
                        .clone()
                        .or_else(|| n.info.addresses.first().cloned())
                        .unwrap_or_else(|| "-".into()),
                );
                row.push(n.info.os.clone());
                row.push(n.info.kernel.clone());
            }
            row
        })
        .collect();
    Ok(Some((header, rows)))
}
