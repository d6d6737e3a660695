//! `bramble describe node|app|job|cronjob|replica|service|secret|config|ingress NAME`.

use crate::client::{request, unexpected, CliError};
use crate::output::{json, Format};
use bramble_proto::model::{Event, ReplicaPhase};
use bramble_proto::quantity::{human_bytes, Cpu};
use bramble_proto::wire::{Request, Response};
use std::fmt::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    kind: Kind,
    name: String,
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    #[value(alias = "nodes", alias = "no")]
    Node,
    #[value(alias = "apps")]
    App,
    /// A job: its settings, state, runs (node, phase, exit code, duration) and events.
    #[value(alias = "jobs")]
    Job,
    #[value(alias = "replicas", alias = "rs")]
    Replica,
    #[value(alias = "services", alias = "svc")]
    Service,
    #[value(alias = "secrets")]
    Secret,
    #[value(alias = "configs", alias = "cm")]
    Config,
    /// A cron job: its schedule, zone, concurrency, last and next runs, its jobs and events.
    #[value(name = "cronjob", alias = "cronjobs", alias = "cj")]
    CronJob,
    /// An ingress: its host, each path's service with its ready endpoints, the certificate and
    /// when it ends, the boards its proxy runs on, what cannot be served, events.
    #[value(alias = "ingresses", alias = "ing")]
    Ingress,
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    match args.kind {
        Kind::Node => node(config, args).await,
        Kind::App => app(config, args).await,
        Kind::Job => job(config, args).await,
        Kind::Replica => replica(config, args).await,
        Kind::Service => service(config, args).await,
        Kind::Secret => secret(config, args).await,
        Kind::Config => config_(config, args).await,
        Kind::CronJob => cronjob(config, args).await,
        Kind::Ingress => ingress(config, args).await,
    }
}

async fn ingress(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let v = match request(config, Request::GetIngress { name: args.name }).await? {
        Response::Ingress(v) => v,
        r => return Err(unexpected(&r)),
    };
    if args.output == Format::Json {
        print!("{}", json(&v));
        return Ok(());
    }
    let spec = &v.ingress.spec;
    let mut s = String::new();
    let _ = writeln!(s, "Name:          {}", v.ingress.meta.name);
    let _ = writeln!(s, "Host:          {}", spec.host);
    match &v.certificate {
        None => {
            let _ = writeln!(s, "TLS:           none (plain HTTP)");
        }
        Some(c) => {
            let ends = c.not_after_ms.map_or(String::new(), |end| {
                let now = bramble_proto::time::now_ms();
                if end > now {
                    format!(", ends in {} days", (end - now) / 86_400_000)
                } else {
                    ", expired".into()
                }
            });
            let redirect = if spec.redirects() { "; http:// redirects to https://" } else { "" };
            let _ = writeln!(s, "TLS:           {}{ends}{redirect}", c.source);
            if let Some(p) = &c.problem {
                let _ = writeln!(s, "               {p}");
            }
            for served in &c.served {
                let what = match (&served.problem, served.not_after_ms) {
                    (Some(p), _) => p.clone(),
                    (None, Some(end)) => {
                        format!("ends in {} days", end.saturating_sub(bramble_proto::time::now_ms()) / 86_400_000)
                    }
                    (None, None) => "-".into(),
                };
                let ago = super::age(served.checked_ms);
                let _ = writeln!(s, "               served by {}: {what} (looked {ago} ago)", served.node);
            }
        }
    }
    if let Some(max) = spec.max_body {
        let _ = writeln!(s, "Body limit:    {max}");
    }
    let _ = writeln!(s, "Backends:");
    let _ = writeln!(s, "  {:<24} {:<7} {:<20} {:<22} READY", "PATH", "MATCH", "SERVICE:PORT", "UPSTREAM");
    for b in &v.backends {
        let _ = writeln!(
            s,
            "  {:<24} {:<7} {:<20} {:<22} {}/{}",
            b.path,
            b.matching,
            format!("{}:{}", b.service, b.port),
            b.upstream.as_deref().unwrap_or("-"),
            b.ready,
            b.endpoints
        );
    }
    let _ = writeln!(s, "Proxies:");
    if v.proxies.is_empty() {
        let _ = writeln!(s, "  <none>");
    }
    for r in &v.proxies {
        let ready = if r.serving() { "ready" } else { "not ready" };
        let _ = writeln!(s, "  {:<30} {:<12} {:?} ({ready})", r.meta.name, r.node.as_deref().unwrap_or("-"), r.phase);
    }
    if !v.problems.is_empty() {
        let _ = writeln!(s, "Problems:");
        for p in &v.problems {
            let _ = writeln!(s, "  {p}");
        }
    }
    events_section(&mut s, &v.events);
    print!("{s}");
    Ok(())
}

async fn cronjob(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let list = match request(config.clone(), Request::GetCronJobs).await? {
        Response::CronJobs(c) => c,
        r => return Err(unexpected(&r)),
    };
    let Some(v) = list.into_iter().find(|v| v.cronjob.meta.name == args.name) else {
        return Err(CliError::Other(format!("cronjob {:?} not found", args.name)));
    };
    let (jobs, _) = super::get::job_views(config).await?;
    let mut mine: Vec<&super::get::JobView> =
        jobs.iter().filter(|j| j.cronjob.as_deref() == Some(args.name.as_str())).collect();
    mine.sort_by_key(|j| (j.meta.created_ms, j.meta.name.clone()));
    if args.output == Format::Json {
        print!(
            "{}",
            json(&serde_json::json!({ "cronjob": v.cronjob, "next_ms": v.next_ms, "jobs": mine, "events": v.events }))
        );
        return Ok(());
    }
    let (c, spec) = (&v.cronjob, &v.cronjob.spec);
    let mut s = String::new();
    let _ = writeln!(s, "Name:          {}", c.meta.name);
    let _ = writeln!(s, "Schedule:      {} ({})", spec.schedule, spec.timezone.as_deref().unwrap_or("UTC"));
    let _ = writeln!(s, "Concurrency:   {}", format!("{:?}", spec.concurrency).to_lowercase());
    if let Some(d) = &spec.starting_deadline {
        let _ = writeln!(s, "Deadline:      a run not started {d} after its time is skipped");
    }
    let _ =
        writeln!(s, "History:       {} successful, {} failed jobs kept", spec.history.successful, spec.history.failed);
    let _ = writeln!(s, "Suspended:     {}", spec.suspend);
    let last = match (c.status.last_schedule_ms, &c.status.last_job) {
        (Some(at), Some(job)) => format!("{} (job {job})", super::get::relative(at)),
        (Some(at), None) => super::get::relative(at),
        _ => "never".into(),
    };
    let _ = writeln!(s, "Last run:      {last}");
    let _ = writeln!(s, "Next run:      {}", v.next_ms.map_or("-".into(), super::get::relative));
    let _ = writeln!(s, "Image:         {}", spec.job.image);
    if !spec.job.command.is_empty() || !spec.job.args.is_empty() {
        let _ = writeln!(s, "Command:       {:?} {:?}", spec.job.command, spec.job.args);
    }
    let _ = writeln!(s, "Jobs:");
    if mine.is_empty() {
        let _ = writeln!(s, "  <none>");
    }
    for j in mine {
        let _ = writeln!(
            s,
            "  {:<30} {:<28} {:>4}/{:<4} ran {}",
            j.meta.name,
            super::get::job_state(&j.status),
            j.status.succeeded,
            j.status.completions,
            super::get::job_duration(j)
        );
    }
    events_section(&mut s, &v.events);
    print!("{s}");
    Ok(())
}

/// Keys and their sizes, the version and the events; never a value.
async fn secret(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let (secret, events) = match request(config, Request::GetSecret { name: args.name }).await? {
        Response::Secret { secret, events } => (secret, events),
        r => return Err(unexpected(&r)),
    };
    if args.output == Format::Json {
        print!("{}", json(&serde_json::json!({ "secret": secret, "events": events })));
        return Ok(());
    }
    let mut s = String::new();
    let _ = writeln!(s, "Name:        {}", secret.name);
    let _ = writeln!(s, "Version:     {} (updated {} ago)", secret.version, super::age(secret.updated_ms));
    if let Some(by) = &secret.changed_by {
        let _ = writeln!(s, "Changed by:  {by}");
    }
    let _ = writeln!(s, "Created:     {} ago", super::age(secret.created_ms));
    let allowed = match &secret.allowed_apps {
        None => "any app (bramble secret allow NAME --apps … narrows it)".to_string(),
        Some(a) if a.is_empty() => "no app".to_string(),
        Some(a) => a.join(", "),
    };
    let _ = writeln!(s, "Used by:     {allowed}");
    let _ = writeln!(s, "Keys:");
    for (k, size) in &secret.keys {
        let _ = writeln!(s, "  {k:<30} {size} bytes");
    }
    events_section(&mut s, &events);
    print!("{s}");
    Ok(())
}

/// A config: its files with their sizes and contents (configs are not secret).
async fn config_(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let (c, events) = match request(config, Request::GetConfig { name: args.name }).await? {
        Response::Config { config, events } => (config, events),
        r => return Err(unexpected(&r)),
    };
    if args.output == Format::Json {
        print!("{}", json(&serde_json::json!({ "config": c, "events": events })));
        return Ok(());
    }
    let mut s = String::new();
    let _ = writeln!(s, "Name:        {}", c.meta.name);
    let _ = writeln!(s, "Version:     {}", c.meta.generation);
    if let Some(by) = &c.meta.changed_by {
        let _ = writeln!(s, "Changed by:  {by}");
    }
    let _ = writeln!(s, "Created:     {} ago", super::age(c.meta.created_ms));
    for (name, text) in &c.spec.files {
        let _ = writeln!(s, "File {name} ({} bytes):", text.len());
        for line in text.lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    events_section(&mut s, &events);
    print!("{s}");
    Ok(())
}

async fn service(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let (svc, app_exists, ports, replicas, events) =
        match request(config, Request::GetService { name: args.name }).await? {
            Response::Service { service, app_exists, ports, replicas, events } => {
                (service, app_exists, ports, replicas, events)
            }
            r => return Err(unexpected(&r)),
        };
    if args.output == Format::Json {
        let v = serde_json::json!({ "service": svc, "app_exists": app_exists, "ports": ports, "replicas": replicas, "events": events });
        print!("{}", json(&v));
        return Ok(());
    }
    let mut s = String::new();
    let _ = writeln!(s, "Name:        {}", svc.meta.name);
    let app_note = if app_exists { String::new() } else { " (no such app yet: no endpoints until it exists)".into() };
    let _ = writeln!(s, "App:         {}{app_note}", svc.spec.app);
    let _ = writeln!(s, "VIP:         {}", svc.vip.map_or("<pending>".into(), |v| v.to_string()));
    let _ = writeln!(s, "Ports:");
    for p in &svc.spec.ports {
        let named = match &p.target {
            Some(bramble_proto::manifest::PortTarget::Name(n)) => format!(" ({n})"),
            _ => String::new(),
        };
        let resolved = ports.iter().find(|r| r.port == p.port.0 && r.protocol == p.protocol);
        let target = resolved.map_or("<app port unknown>".to_string(), |r| r.target.to_string());
        let name = p.name.as_ref().map(|n| format!("{n}: ")).unwrap_or_default();
        let _ = writeln!(s, "  {name}{}/{} -> {target}{named}", p.port.0, super::protocol(p.protocol));
    }
    let ready = svc.endpoints.iter().filter(|e| e.ready).count();
    let _ = writeln!(s, "Endpoints:   {ready} ready of {}", svc.endpoints.len());
    let target = |e: &bramble_proto::network::Endpoint| {
        let list: Vec<String> = ports.iter().map(|p| format!("{}:{}", e.ip, p.target)).collect();
        list.join(", ")
    };
    for e in &svc.endpoints {
        let phase = replicas.iter().find(|r| r.meta.name == e.replica).map_or("?".into(), |r| format!("{:?}", r.phase));
        let _ = writeln!(
            s,
            "  {:<34} {:<12} {:<22} {}",
            e.replica,
            e.node,
            target(e),
            if e.ready { "ready".to_string() } else { format!("not ready ({phase})") }
        );
    }
    events_section(&mut s, &events);
    print!("{s}");
    Ok(())
}

async fn job(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let (app, replicas, events) = match request(config.clone(), Request::GetApp { name: args.name.clone() }).await? {
        Response::App { app, replicas, events, .. } => (app, replicas, events),
        r => return Err(unexpected(&r)),
    };
    if !app.spec.is_job() {
        return Err(CliError::Other(format!("{} is an app, not a job: bramble describe app {}", args.name, args.name)));
    }
    let runs: Vec<&bramble_proto::model::Replica> = replicas.iter().filter(|r| r.phase != ReplicaPhase::Lost).collect();
    let status = bramble_proto::job::status(&app.spec, app.meta.created_ms, &runs, super::now_ms());
    if args.output == Format::Json {
        print!("{}", json(&serde_json::json!({ "job": app, "status": status, "runs": replicas, "events": events })));
        return Ok(());
    }
    let (spec, settings) = (&app.spec, app.spec.job());
    let view = super::get::JobView {
        meta: app.meta.clone(),
        spec: spec.clone(),
        status: status.clone(),
        cronjob: app.cronjob.clone(),
    };
    let mut s = String::new();
    let _ = writeln!(s, "Name:        {}", app.meta.name);
    let _ = writeln!(s, "Image:       {}", spec.image);
    let _ = writeln!(s, "Status:      {}", super::get::job_state(&status));
    if let Some(c) = &app.cronjob {
        let _ = writeln!(s, "Made by:     cronjob/{c}");
    }
    let _ = writeln!(
        s,
        "Runs:        {} succeeded of {} wanted, {} failed (backoff_limit {}), {} active (parallelism {})",
        status.succeeded,
        settings.completions,
        status.failed,
        settings.backoff_limit,
        status.active,
        settings.parallelism
    );
    let _ =
        writeln!(s, "Created:     {} ago; ran {}", super::age(app.meta.created_ms), super::get::job_duration(&view));
    if let Some(d) = &spec.active_deadline {
        let _ = writeln!(s, "Deadline:    {d} after its creation");
    }
    if let Some(t) = &spec.ttl_after_finished {
        let when = match status.finished_ms {
            Some(done) => {
                let left = (done + t.0.as_millis() as u64).saturating_sub(super::now_ms());
                format!("deleted {}s from now", left.div_ceil(1000))
            }
            None => "once finished".to_string(),
        };
        let _ = writeln!(s, "Kept:        {t} after it finishes ({when})");
    }
    if let Some(t) = status.retry_at_ms.filter(|t| *t > super::now_ms()) {
        let _ = writeln!(s, "Next run:    after a failure, in {}s", (t - super::now_ms()).div_ceil(1000));
    }
    if !spec.command.is_empty() || !spec.args.is_empty() {
        let _ = writeln!(s, "Command:     {:?} {:?}", spec.command, spec.args);
    }
    let _ = writeln!(s, "Runs:");
    if replicas.is_empty() {
        let _ = writeln!(s, "  <none>");
    }
    let mut sorted: Vec<&bramble_proto::model::Replica> = replicas.iter().collect();
    sorted.sort_by_key(|r| (r.meta.created_ms, r.meta.name.clone()));
    for r in sorted {
        let took = match (r.started_ms, r.finished_ms) {
            (Some(a), Some(b)) => format!("{:.1}s", b.saturating_sub(a) as f64 / 1000.0),
            (Some(a), None) => format!("{}s so far", super::now_ms().saturating_sub(a) / 1000),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "  {:<30} {:<10} {:<10} exit {:<4} {:<10} {}",
            r.meta.name,
            r.node.as_deref().unwrap_or("-"),
            format!("{:?}", r.phase),
            r.exit_code.map_or("-".into(), |c| c.to_string()),
            took,
            r.reason
        );
    }
    events_section(&mut s, &events);
    print!("{s}");
    Ok(())
}

fn events_section(s: &mut String, events: &[Event]) {
    let _ = writeln!(s, "Events:");
    if events.is_empty() {
        let _ = writeln!(s, "  <none>");
    }
    for e in events.iter().rev().take(20).rev() {
        let _ = writeln!(s, "  {:>8} ago  {:<18} {:<28} {}", super::age(e.time_ms), e.reason, e.object, e.message);
    }
}

fn when(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |m| format!("{} ago", super::age(m)))
}

/// The usage figures the leader holds (none if it cannot say).
async fn usage(
    config: Option<PathBuf>,
    app: Option<&str>,
) -> Option<(Vec<bramble_proto::usage::NodeUsage>, Vec<bramble_proto::usage::ReplicaUsage>)> {
    match request(config, Request::Top { app: app.map(str::to_string) }).await {
        Ok(Response::Top { nodes, replicas }) => Some((nodes, replicas)),
        _ => None,
    }
}

async fn app(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let (app, replicas, events, rollout, autoscale) =
        match request(config.clone(), Request::GetApp { name: args.name }).await? {
            Response::App { app, replicas, events, rollout, autoscale } => (app, replicas, events, rollout, autoscale),
            r => return Err(unexpected(&r)),
        };
    if args.output == Format::Json {
        let all = serde_json::json!({
            "app": app, "replicas": replicas, "events": events, "rollout": rollout, "autoscale": autoscale
        });
        print!("{}", json(&all));
        return Ok(());
    }
    let spec = &app.spec;
    let mut s = String::new();
    let _ = writeln!(s, "Name:        {}", app.meta.name);
    let _ = writeln!(s, "Image:       {}", spec.image);
    for c in &spec.init {
        let _ = writeln!(s, "Init:        {} ({}), runs to completion first", c.name, c.image);
    }
    for c in &spec.containers {
        let _ = writeln!(s, "Container:   {} ({})", c.name, c.image);
    }
    let _ = writeln!(s, "Generation:  {}", app.meta.generation);
    if let Some(by) = &app.meta.changed_by {
        let _ = writeln!(s, "Changed by:  {by}");
    }
    let running = replicas.iter().filter(|r| r.phase == ReplicaPhase::Running).count();
    let ready = replicas.iter().filter(|r| r.serving()).count();
    if spec.every_board() {
        let _ = writeln!(
            s,
            "Replicas:    one on every matching board: {} existing, {running} running, {ready} ready",
            replicas.len()
        );
    } else {
        let _ = writeln!(
            s,
            "Replicas:    {} desired, {} existing, {running} running, {ready} ready",
            spec.replicas.0,
            replicas.len()
        );
    }
    if !spec.labels.is_empty() {
        let labels: Vec<String> = spec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(s, "Labels:      {}", labels.join(", "));
    }
    if !spec.devices.is_empty() {
        let devices: Vec<String> = spec.devices.iter().map(|d| d.to_string()).collect();
        let _ = writeln!(s, "Devices:     {}", devices.join(", "));
    }
    if !spec.after.is_empty() {
        let after: Vec<&str> = spec.after.iter().map(|n| n.as_str()).collect();
        let _ = writeln!(s, "Starts after: {} (each with a ready replica)", after.join(", "));
    }
    if spec.host_network {
        let _ = writeln!(s, "Network:     the board's own (host_network)");
    }
    if !spec.command.is_empty() || !spec.args.is_empty() {
        let _ = writeln!(s, "Command:     {:?} {:?}", spec.command, spec.args);
    }
    let _ = writeln!(
        s,
        "Resources:   cpu {}, memory {}",
        spec.resources.cpu.map_or("-".into(), |c| c.to_string()),
        spec.resources.memory.map_or("-".into(), |m| human_bytes(m.0))
    );
    let _ = writeln!(s, "Restart:     {:?}", spec.restart);
    if let Some(d) = &spec.replace_after {
        let _ = writeln!(s, "Replace after node loss: {d}");
    }
    if let Some(a) = &spec.autoscale {
        let targets: Vec<String> = [("cpu", a.cpu), ("memory", a.memory)]
            .iter()
            .filter_map(|(n, t)| t.map(|t| format!("{n} {}% of request", t.0)))
            .collect();
        let _ = writeln!(s, "Autoscale:   min {}, max {}, {}", a.min.0, a.max.0, targets.join(", "));
        let _ = writeln!(s, "  Last pass: {}", autoscale.as_deref().unwrap_or("none yet"));
    }
    if !spec.secrets.is_empty() {
        let names: Vec<&str> = spec.secrets.iter().map(|n| n.as_str()).collect();
        let _ = writeln!(s, "Secrets:     {} (files in /run/secrets/NAME/KEY)", names.join(", "));
    }
    for c in &spec.configs {
        let roll = if c.roll { ", rolls on change" } else { "" };
        let _ = writeln!(s, "Config:      {} <- config {} (read-only{roll})", c.path, c.name);
    }
    for v in &spec.volumes {
        use bramble_proto::manifest::VolumeKind;
        let ro = if v.read_only { ", read-only" } else { "" };
        let what = match v.kind {
            VolumeKind::Tmpfs => format!("tmpfs of {} per replica", human_bytes(v.size_bytes())),
            VolumeKind::Local => format!("local volume {}", v.name.as_ref().map_or("?", |n| n.as_str())),
            VolumeKind::Host => format!(
                "host path {} on nodes labelled {}",
                v.host_path.as_deref().unwrap_or("?"),
                v.node_label.as_deref().unwrap_or("?")
            ),
        };
        let _ = writeln!(s, "Volume:      {} <- {what}{ro}", v.path);
    }
    if spec.pinned() {
        let _ = writeln!(
            s,
            "Pinned:      replicas stay on the nodes that hold their local volumes; a lost node's replicas wait for it (placement.may_move = true to replace them elsewhere, empty)"
        );
    } else if spec.local_volumes().next().is_some() {
        let _ = writeln!(
            s,
            "Pinned:      no: a lost node's replicas are replaced elsewhere with empty volumes (placement.may_move)"
        );
    }
    let u = &spec.update;
    let _ = writeln!(
        s,
        "Update:      max_surge {}, max_unavailable {}, min_ready {}, progress_deadline {}, auto_rollback {}",
        u.max_surge.0,
        u.max_unavailable.0,
        bramble_proto::quantity::HumanDuration(u.min_ready()),
        bramble_proto::quantity::HumanDuration(u.progress_deadline()),
        u.auto_rollback()
    );
    if let Some(r) = &rollout {
        let _ = writeln!(
            s,
            "Rollout:     revision {} {:?} ({}), {} ago{}",
            r.number,
            r.state,
            r.cause,
            super::age(r.created_ms),
            if r.message.is_empty() { String::new() } else { format!(": {}", r.message) }
        );
    }
    let _ = writeln!(s, "Replicas:");
    for r in &replicas {
        let _ = writeln!(
            s,
            "  {:<32} {:<12} {:<4} {:<12} restarts {}{}",
            r.meta.name,
            r.node.as_deref().unwrap_or("<none>"),
            super::ready(r),
            super::phase(r),
            r.restarts,
            if r.reason.is_empty() { String::new() } else { format!("  ({})", r.reason) }
        );
    }
    if let Some((_, usage)) = usage(config, Some(app.meta.name.as_str())).await {
        if !usage.is_empty() {
            let cpu: u64 = usage.iter().map(|u| u.cpu_millis).sum();
            let mem: u64 = usage.iter().map(|u| u.memory_working_set).sum();
            let oom: u64 = usage.iter().map(|u| u.oom_kills).sum();
            let _ = writeln!(
                s,
                "Usage:       cpu {cpu}m, memory {} over {} replicas, OOM kills {oom}",
                human_bytes(mem),
                usage.len()
            );
        }
    }
    events_section(&mut s, &events);
    print!("{s}");
    Ok(())
}

async fn replica(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let (r, detail, probes, events) = match request(config.clone(), Request::GetReplica { name: args.name }).await? {
        Response::Replica { replica, detail, probes, events } => (replica, detail, probes, events),
        r => return Err(unexpected(&r)),
    };
    if args.output == Format::Json {
        let all = serde_json::json!({ "replica": r, "detail": detail, "probes": probes, "events": events });
        print!("{}", json(&all));
        return Ok(());
    }
    let mut s = String::new();
    let _ = writeln!(s, "Name:        {}", r.meta.name);
    let _ = writeln!(s, "App:         {} (revision {})", r.app, r.revision_hash);
    let _ = writeln!(s, "Node:        {}", r.node.as_deref().unwrap_or("<none>"));
    let _ = writeln!(s, "IP:          {}", r.ip.map_or("<none>".into(), |ip| ip.to_string()));
    let _ = writeln!(s, "Phase:       {}", super::phase(&r));
    let _ = writeln!(s, "Ready:       {}", if r.serving() { "yes" } else { "no" });
    if !r.reason.is_empty() {
        let _ = writeln!(s, "Reason:      {}", r.reason);
    }
    if !probes.is_empty() {
        let _ = writeln!(s, "Probes:");
        for p in &probes {
            let result = match p.ok {
                None => "not run yet".to_string(),
                Some(true) => "success".to_string(),
                Some(false) => format!("failure ({} in a row): {}", p.failures, p.message),
            };
            let kills = if p.kills > 0 { format!("; killed the container {} times", p.kills) } else { String::new() };
            let _ = writeln!(s, "  {:<10} {:<24} {result}{kills}", p.probe, p.action);
        }
    }
    if let Some(d) = &detail {
        let _ = writeln!(s, "Progress:    {d}");
    }
    let _ = writeln!(s, "Restarts:    {}", r.restarts);
    let _ = writeln!(s, "Last exit:   {}", r.exit_code.map_or("-".into(), |c| c.to_string()));
    let _ = writeln!(s, "Started:     {}", when(r.started_ms));
    let _ = writeln!(s, "Finished:    {}", when(r.finished_ms));
    let _ = writeln!(s, "Created:     {} ago", super::age(r.meta.created_ms));
    if let Some(u) =
        usage(config, Some(r.app.as_str())).await.and_then(|(_, rs)| rs.into_iter().find(|u| u.replica == r.meta.name))
    {
        let limit = u.memory_limit.map_or(String::new(), |l| format!(" of {}", human_bytes(l)));
        let _ = writeln!(
            s,
            "Usage:       cpu {}m (throttled {}%), memory {}{limit}, pids {}, OOM kills {}, net in {}/s out {}/s",
            u.cpu_millis,
            u.throttled_permille / 10,
            human_bytes(u.memory_working_set),
            u.pids,
            u.oom_kills,
            human_bytes(u.net_rx_per_s),
            human_bytes(u.net_tx_per_s)
        );
    }
    events_section(&mut s, &events);
    print!("{s}");
    Ok(())
}

async fn node(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let (v, events) = match request(config.clone(), Request::GetNode { name: args.name }).await? {
        Response::Node { node, events } => (node, events),
        r => return Err(unexpected(&r)),
    };
    if args.output == Format::Json {
        print!("{}", json(&serde_json::json!({ "node": v, "events": events })));
        return Ok(());
    }
    let n = &v.node;
    let mut s = String::new();
    let _ = writeln!(s, "Name:          {}", n.meta.name);
    let _ = writeln!(s, "Status:        {}", v.status_text());
    let labels = n.effective_labels();
    let _ = writeln!(
        s,
        "Labels:        {}",
        if labels.is_empty() {
            "<none>".into()
        } else {
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n               ")
        }
    );
    let _ = writeln!(s, "Unschedulable: {}", n.unschedulable);
    let _ = writeln!(s, "Pod subnet:    {}", n.pod_cidr.map_or("<none>".into(), |c| c.to_string()));
    let _ = writeln!(s, "Address:       {}", n.address.map_or("<none>".into(), |a| a.to_string()));
    let _ = writeln!(s, "Created:       {} ago", super::age(n.meta.created_ms));
    if let Some(at) = n.cert_expires_ms {
        let now = super::now_ms();
        let left = |ms: u64| bramble_proto::quantity::format_duration(std::time::Duration::from_secs(ms / 1000));
        let text = if at > now {
            format!("expires in {} (the agent renews it two thirds in)", left(at - now))
        } else {
            format!("EXPIRED {} ago: the board must join again", left(now - at))
        };
        let _ = writeln!(s, "Certificate:   {text}");
    }
    let _ = writeln!(s, "System:");
    let _ = writeln!(s, "  Arch:        {}", n.info.arch);
    let _ = writeln!(s, "  OS:          {}", n.info.os);
    let _ = writeln!(s, "  Kernel:      {}", n.info.kernel);
    let _ = writeln!(s, "  Agent:       {}", n.info.agent_version);
    let l = &v.link;
    if l.base_grace_ms > 0 {
        let secs = |ms: u64| bramble_proto::quantity::format_duration(std::time::Duration::from_millis(ms));
        let lost = match l.losses {
            0 => "never lost".to_string(),
            n => format!("lost {n} time{} (last {} ago)", if n == 1 { "" } else { "s" }, super::age(l.last_lost_ms)),
        };
        let grace = if l.grace_ms > l.base_grace_ms {
            format!("grace {}, lengthened from {} while it flaps", secs(l.grace_ms), secs(l.base_grace_ms))
        } else {
            format!("grace {}", secs(l.grace_ms))
        };
        let _ = writeln!(s, "Link:          {lost}; {grace}");
    }
    let _ = writeln!(s, "Addresses:");
    if let Some(a) = &v.session_address {
        let _ = writeln!(s, "  Session:     {a} (epoch {})", v.session_epoch.unwrap_or(0));
    }
    for a in &n.info.addresses {
        let _ = writeln!(s, "  Interface:   {a}");
    }
    let _ = writeln!(
        s,
        "Capacity:      cpu {}, memory {}, replicas {}",
        Cpu(n.info.capacity.cpu_millis),
        human_bytes(n.info.capacity.memory_bytes),
        n.info.capacity.replicas
    );
    let _ = writeln!(
        s,
        "Allocatable:   cpu {}, memory {}, replicas {}",
        Cpu(n.info.allocatable.cpu_millis),
        human_bytes(n.info.allocatable.memory_bytes),
        n.info.allocatable.replicas
    );
    if n.info.devices.is_empty() {
        let _ = writeln!(s, "Devices:       <none>");
    } else {
        let _ = writeln!(s, "Devices:");
        for d in &n.info.devices {
            let usb = d.usb.map(|u| format!("  usb {u}")).unwrap_or_default();
            let serial = d.serial.as_ref().map(|x| format!("  serial {x}")).unwrap_or_default();
            let _ = writeln!(s, "  {:<7}{}  group {}  mode {:o}{usb}{serial}", d.class.as_str(), d.path, d.gid, d.mode);
        }
    }
    let _ = writeln!(s, "Conditions:");
    for c in std::iter::once(&v.ready).chain(&v.conditions) {
        let _ = writeln!(
            s,
            "  {}  {:?}  {}  {} (since {} ago)",
            c.kind,
            c.status,
            c.reason,
            c.message,
            super::age(c.last_transition_ms)
        );
    }
    let _ = writeln!(
        s,
        "Images:        {}",
        if v.images.is_empty() { "<none>".into() } else { v.images.join("\n               ") }
    );
    let _ = writeln!(
        s,
        "Last contact:  {}",
        if v.last_seen_ms == 0 {
            "never since the leader started".into()
        } else {
            format!("{} ago", super::age(v.last_seen_ms))
        }
    );
    if let Some(u) = usage(config, None).await.and_then(|(ns, _)| ns.into_iter().find(|u| u.node == n.meta.name)) {
        let temp = u.temperature_mc.map_or("no sensor".into(), |t| format!("{:.1}°C", t as f64 / 1000.0));
        let _ = writeln!(
            s,
            "Usage:         cpu {}m of {} CPUs, memory {} of {}, load {:.2}, disk free {}, temperature {temp}{}",
            u.cpu_millis,
            u.cpus,
            human_bytes(u.memory_used),
            human_bytes(u.memory_total),
            u.load1_milli as f64 / 1000.0,
            human_bytes(u.disk_free),
            u.throttled.filter(|t| *t != 0).map_or(String::new(), |t| format!(", THROTTLED {t:#x}"))
        );
    }
    events_section(&mut s, &events);
    print!("{s}");
    Ok(())
}
