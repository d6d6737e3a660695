//! The agent's footprint on a real board-like setup (a leader and one agent in network
//! namespaces, the image from a real registry): memory idle and with 20 containers, the cost of
//! each container (the agent's growth plus its shim), and bytes written per day while steady.

use crate::apps::{replicas, setup, wait};
use bramble_proto::model::ReplicaPhase;
use std::time::Duration;

pub(crate) fn kib(pid: i32, file: &str, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn write_bytes(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn shim_pids(c: &bramble_tests::Cluster) -> Vec<i32> {
    let shims = c.shims_dir(1);
    std::fs::read_dir(shims)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("state.json")).ok())
        .filter_map(|b| serde_json::from_slice::<bramble_agent::runtime::protocol::ShimState>(&b).ok())
        .map(|s| s.shim_pid)
        .collect()
}

pub fn run(containers: usize, steady_secs: u64) -> serde_json::Value {
    assert!(nix::unistd::geteuid().is_root(), "the agent benchmark needs root (namespaces, containers)");
    let (c, _registry, image) = setup(1, "");
    let agent = c.agent(1).pid() as i32;
    std::thread::sleep(Duration::from_secs(5));
    let (rss0, pss0) = (kib(agent, "status", "VmRSS:"), kib(agent, "smaps_rollup", "Pss:"));
    let w0 = write_bytes(agent);
    std::thread::sleep(Duration::from_secs(steady_secs));
    let idle_written = write_bytes(agent).saturating_sub(w0);

    let manifest = c.dir.path().join("steady.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[app]]\nname = \"steady\"\nimage = \"{image}\"\nreplicas = {containers}\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
        ),
    )
    .expect("manifest");
    assert!(c.cli(&["apply", "-f", manifest.to_str().unwrap()]).status.success());
    wait("all replicas Running", Duration::from_secs(120), || {
        let r = replicas(&c, "steady");
        (r.len() == containers && r.iter().all(|r| r.phase == ReplicaPhase::Running)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    let (rss1, pss1) = (kib(agent, "status", "VmRSS:"), kib(agent, "smaps_rollup", "Pss:"));
    let shims = shim_pids(&c);
    let shim_pss: u64 = shims.iter().map(|p| kib(*p, "smaps_rollup", "Pss:")).sum();
    let shim_rss: u64 = shims.iter().map(|p| kib(*p, "status", "VmRSS:")).sum();
    let writers: Vec<i32> = std::iter::once(agent).chain(shims.iter().copied()).collect();
    let w0: u64 = writers.iter().map(|p| write_bytes(*p)).sum();
    std::thread::sleep(Duration::from_secs(steady_secs));
    let steady_written: u64 = writers.iter().map(|p| write_bytes(*p)).sum::<u64>().saturating_sub(w0);
    let per_container_pss = (pss1.saturating_sub(pss0) + shim_pss) as f64 / containers as f64;
    let day = |b: u64| b as f64 * 86_400.0 / steady_secs as f64 / 1e6;
    println!("agent footprint (one board, real containers):");
    println!("  idle, no containers:        RSS {:.1} MiB, PSS {:.1} MiB", rss0 as f64 / 1024.0, pss0 as f64 / 1024.0);
    println!(
        "  {containers} containers running:      agent RSS {:.1} MiB, PSS {:.1} MiB; shims PSS {:.1} MiB in all (RSS {:.1} MiB)",
        rss1 as f64 / 1024.0,
        pss1 as f64 / 1024.0,
        shim_pss as f64 / 1024.0,
        shim_rss as f64 / 1024.0
    );
    println!("  per container (agent growth + its shim, PSS): {:.2} MiB", per_container_pss / 1024.0);
    println!(
        "  bytes written, {steady_secs} s: idle {idle_written} ({:.2} MB/day); with {containers} containers, agent + shims {steady_written} ({:.2} MB/day; container output not counted)",
        day(idle_written),
        day(steady_written)
    );
    assert!(c.cli(&["delete", "app", "steady"]).status.success());
    wait("the containers to go", Duration::from_secs(60), || shim_pids(&c).is_empty().then_some(()));
    serde_json::json!({
        "idle": { "rss_kib": rss0, "pss_kib": pss0, "write_bytes": idle_written, "mb_per_day": day(idle_written) },
        "with_containers": {
            "containers": containers,
            "agent_rss_kib": rss1, "agent_pss_kib": pss1,
            "shims_pss_kib": shim_pss, "shims_rss_kib": shim_rss,
            "per_container_pss_kib": per_container_pss,
            "write_bytes": steady_written, "mb_per_day": day(steady_written),
        },
        "seconds": steady_secs,
    })
}
