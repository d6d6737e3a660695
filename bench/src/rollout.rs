//! Rollouts on a real cluster (three boards in network namespaces, real containers, an image from
//! a real registry, the load generator of the rollout test):
//! - a 3-replica rolling update with readiness probes, apply -> complete (the leader's record),
//!   beside the published figure of Eclipse Ankaios' rolling update (1,455 ms);
//! - requests that failed during those rollouts, under load through the service's virtual IP;
//! - apply -> all replicas ready (readiness passed) and, in the same runs, -> all Running;
//! - what probes cost a replica: its shim's CPU and memory with no probe, with http readiness and
//!   liveness probes, and with an exec liveness probe (all every second).

use crate::agent::kib;
use crate::apps::{replicas, setup, wait};
use crate::stats::summarize;
use bramble_proto::model::{Replica, ReplicaPhase, RevisionRecord, RolloutState, Service};
use bramble_proto::time::now_ms;
use bramble_tests::load::{load, web_app, Stats};
use bramble_tests::Cluster;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Rolling update, start to complete, and apply -> HTTP 200, as Ankaios published them for
/// itself and k3s (4 vCPU VM, 100 runs, images pre-pulled; `doc/docs/reference/orch-comparison.md`).
const ANKAIOS_ROLLING_UPDATE_MS: f64 = 1455.0;
const K3S_ROLLING_UPDATE_MS: f64 = 2101.0;
const ANKAIOS_APPLY_TO_HTTP_MS: f64 = 624.0;
const K3S_APPLY_TO_HTTP_MS: f64 = 2481.0;

fn manifest(c: &Cluster, name: &str, image: &str, replicas: usize, version: usize, probes: &str) -> String {
    let path = c.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, web_app(name, image, replicas, &version.to_string(), "", probes))
        .expect("write the manifest");
    path.display().to_string()
}

const READINESS: &str = "[app.probes.readiness]\nhttp = { port = \"http\", path = \"/\" }\nperiod = \"1s\"\n";
const HTTP_PROBES: &str = "[app.probes.readiness]\nhttp = { port = \"http\", path = \"/\" }\nperiod = \"1s\"\n\
                           [app.probes.liveness]\nhttp = { port = \"http\", path = \"/\" }\nperiod = \"1s\"\n";
const EXEC_PROBE: &str = "[app.probes.liveness]\nexec = [\"true\"]\nperiod = \"1s\"\n";

fn latest(c: &Cluster, app: &str) -> Option<RevisionRecord> {
    let out = c.cli(&["rollout", "history", &format!("app/{app}"), "-o", "json"]);
    serde_json::from_slice::<Vec<RevisionRecord>>(&out.stdout).ok()?.pop()
}

fn apply(c: &Cluster, path: &str) {
    let out = c.cli(&["apply", "-f", path]);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
}

fn delete(c: &Cluster, app: &str) {
    assert!(c.cli(&["delete", "app", app]).status.success());
    wait("the replicas to go", Duration::from_secs(60), || replicas(c, app).is_empty().then_some(()));
}

/// Rolling updates under load: each run changes the template (VERSION), waits for the record to
/// say Complete, and takes its finish time (the leader's clock) minus the time before `apply`.
fn rolling_updates(c: &Cluster, image: &str, runs: usize) -> serde_json::Value {
    let path = manifest(c, "roll", image, 3, 0, READINESS);
    apply(c, &path);
    wait("revision 1 complete", Duration::from_secs(120), || {
        latest(c, "roll").filter(|r| r.state == RolloutState::Complete).map(|_| ())
    });
    let vip = wait("the service's VIP and 3 endpoints", Duration::from_secs(30), || {
        let out = c.cli(&["get", "services", "-o", "json"]);
        let all: Vec<Service> = serde_json::from_slice(&out.stdout).ok()?;
        let s = all.into_iter().find(|s| s.meta.name == "roll")?;
        (s.endpoints.iter().filter(|e| e.ready).count() == 3).then_some(s.vip?)
    });
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = load(c.lab.ns_path(2), SocketAddr::from((vip, 80)), stop.clone(), stats.clone());
    std::thread::sleep(Duration::from_secs(1));
    let mut samples = Vec::new();
    for run in 1..=runs {
        let path = manifest(c, "roll", image, 3, run, READINESS);
        let t0 = now_ms();
        apply(c, &path);
        let done = wait("the rollout to complete", Duration::from_secs(120), || {
            latest(c, "roll").filter(|r| r.number == run as u64 + 1 && r.state == RolloutState::Complete)
        });
        samples.push(Duration::from_millis(done.finished_ms.expect("finished").saturating_sub(t0)));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    delete(c, "roll");
    let (ok, failed) = (stats.ok.load(Ordering::SeqCst), stats.failed.load(Ordering::SeqCst));
    let s = summarize(&samples);
    println!("rolling update of 3 replicas, readiness http every 1s, max_surge 1, {runs} runs under load:");
    println!("  {:<40} {:>9} {:>9} {:>9}", "", "min ms", "median", "p95");
    println!("  {:<40} {:>9.0} {:>9.0} {:>9.0}", "bramble: apply -> rollout complete", s.min, s.median, s.p95);
    println!("  {:<40} {:>9} {:>9.0} {:>9}", "Ankaios (published)", "", ANKAIOS_ROLLING_UPDATE_MS, "");
    println!("  {:<40} {:>9} {:>9.0} {:>9}", "k3s (published by Ankaios)", "", K3S_ROLLING_UPDATE_MS, "");
    println!(
        "  requests during the rollouts: {} answered, {failed} failed (new and keep-alive connections through the VIP)",
        ok + failed
    );
    serde_json::json!({
        "apply_to_complete": s.json(),
        "ankaios_published_ms": ANKAIOS_ROLLING_UPDATE_MS,
        "k3s_published_ms": K3S_ROLLING_UPDATE_MS,
        "requests": ok + failed,
        "failed_requests": failed,
    })
}

/// Apply -> all ready (readiness http every second) and -> all Running, for 1 and 10 replicas.
fn apply_to_ready(c: &Cluster, image: &str, runs: usize) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    println!("apply -> all replicas ready (readiness http every 1s) and -> Running, image cached, {runs} runs:");
    println!("  {:<10} {:>14} {:>9} {:>16} {:>9}", "replicas", "ready median", "p95", "running median", "p95");
    for n in [1usize, 10] {
        let (mut ready, mut running) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let name = format!("r{n}x{run}");
            let path = manifest(c, &name, image, n, 1, READINESS);
            let t0 = now_ms();
            apply(c, &path);
            let rs: Vec<Replica> = wait("all ready", Duration::from_secs(120), || {
                let rs = replicas(c, &name);
                (rs.len() == n && rs.iter().all(|r| r.serving() && r.ready_ms.is_some())).then_some(rs)
            });
            let last = |f: fn(&Replica) -> Option<u64>| rs.iter().filter_map(f).max().expect("set");
            ready.push(Duration::from_millis(last(|r| r.ready_ms).saturating_sub(t0)));
            running.push(Duration::from_millis(last(|r| r.started_ms).saturating_sub(t0)));
            delete(c, &name);
        }
        let (r, s) = (summarize(&ready), summarize(&running));
        println!("  {:<10} {:>14.0} {:>9.0} {:>16.0} {:>9.0}", n, r.median, r.p95, s.median, s.p95);
        out.insert(format!("replicas_{n}"), serde_json::json!({ "ready": r.json(), "running": s.json() }));
    }
    println!(
        "  published, apply -> HTTP 200 (1 replica, no probe): Ankaios {ANKAIOS_APPLY_TO_HTTP_MS:.0} ms, k3s {K3S_APPLY_TO_HTTP_MS:.0} ms"
    );
    serde_json::Value::Object(out)
}

/// CPU ticks of a process so far: its own (user + system) and its reaped children's (an exec
/// probe's command is one).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command (which may hold spaces and parentheses): the state, then numbers from
    // ppid (field 4) on; utime, stime, cutime, cstime are fields 14 to 17.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<i64> = rest.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    f.get(10..14).map_or(0, |t| t.iter().sum::<i64>().max(0) as u64)
}

/// The shim pid of each replica of `app`.
fn shims(c: &Cluster, app: &str) -> Vec<i32> {
    replicas(c, app)
        .iter()
        .filter_map(|r| {
            let board: usize = r.node.as_deref()?.trim_start_matches("board-").parse().ok()?;
            let state = c.shims_dir(board).join(&r.meta.name).join("state.json");
            let s: bramble_agent::runtime::protocol::ShimState =
                serde_json::from_slice(&std::fs::read(state).ok()?).ok()?;
            Some(s.shim_pid)
        })
        .collect()
}

/// Shim CPU and memory per replica for three replicas of each kind of probing, over `secs`.
fn probe_cost(c: &Cluster, image: &str, secs: u64) -> serde_json::Value {
    let kinds = [("none", ""), ("http", HTTP_PROBES), ("exec", EXEC_PROBE)];
    for (kind, probes) in kinds {
        apply(c, &manifest(c, &format!("p-{kind}"), image, 3, 1, probes));
    }
    for (kind, _) in kinds {
        wait("three running replicas", Duration::from_secs(120), || {
            let rs = replicas(c, &format!("p-{kind}"));
            (rs.len() == 3 && rs.iter().all(|r| r.phase == ReplicaPhase::Running)).then_some(())
        });
    }
    std::thread::sleep(Duration::from_secs(5));
    let pids: Vec<Vec<i32>> = kinds.iter().map(|(k, _)| shims(c, &format!("p-{k}"))).collect();
    let before: Vec<Vec<u64>> = pids.iter().map(|ps| ps.iter().map(|p| cpu_ticks(*p)).collect()).collect();
    std::thread::sleep(Duration::from_secs(secs));
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let mut out = serde_json::Map::new();
    println!("what probes cost a replica (its shim; 3 replicas each, probes every 1s, over {secs}s):");
    println!("  {:<34} {:>12} {:>12}", "", "CPU %", "shim PSS MiB");
    for (i, (kind, _)) in kinds.iter().enumerate() {
        let ticks: u64 = pids[i].iter().zip(&before[i]).map(|(p, b)| cpu_ticks(*p).saturating_sub(*b)).sum();
        let n = pids[i].len().max(1) as f64;
        let cpu = ticks as f64 / hz / secs as f64 / n * 100.0;
        let pss = pids[i].iter().map(|p| kib(*p, "smaps_rollup", "Pss:")).sum::<u64>() as f64 / n / 1024.0;
        let label = match *kind {
            "none" => "no probe",
            "http" => "http readiness + http liveness",
            _ => "exec liveness (`true`)",
        };
        println!("  {label:<34} {cpu:>12.2} {pss:>12.2}");
        out.insert((*kind).to_string(), serde_json::json!({ "cpu_percent": cpu, "shim_pss_mib": pss }));
    }
    for (kind, _) in kinds {
        delete(c, &format!("p-{kind}"));
    }
    serde_json::Value::Object(out)
}

pub fn run(runs: usize) -> serde_json::Value {
    assert!(nix::unistd::geteuid().is_root(), "the rollout benchmark needs root (namespaces, containers)");
    let (c, _registry, image) = setup(3, "");
    serde_json::json!({
        "rolling_update": rolling_updates(&c, &image, runs),
        "apply_to_ready": apply_to_ready(&c, &image, runs),
        "probe_cost": probe_cost(&c, &image, 30),
    })
}
