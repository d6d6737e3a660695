//! The cost of monitoring: what sampling a board and its replicas costs the agent (reading /proc
//! and the cgroup files of 20 replicas — a cgroup v2 tree laid out in a temp dir, the board's own
//! /proc and /sys), the bytes a sample adds to the session, and (with `bramble-bench scale`) the
//! leader's memory with the history of 50 boards × 20 replicas. Published for comparison (not
//! measured here): metrics-server asks ~1 mCPU and 2 MB per node.

use bramble_agent::runtime::cgroups::{CgroupFs, Version};
use bramble_agent::usage::Sampler;
use bramble_proto::usage::{NodeSample, ReplicaSample, UsageSample};
use std::collections::BTreeSet;
use std::time::Instant;

/// What a simulated board sends at tick `seq` for `running` (counters that grow).
pub fn sample(seq: u64, running: &BTreeSet<String>) -> UsageSample {
    UsageSample {
        at_ms: bramble_proto::time::now_ms(),
        node: NodeSample {
            cpu_busy_ns: seq * 1_500_000_000,
            cpus: 4,
            memory_total: 4 << 30,
            memory_used: 1 << 30,
            load1_milli: 420,
            disk_total: 32 << 30,
            disk_free: 20 << 30,
            temperature_mc: Some(51_000),
            throttled: Some(0),
        },
        replicas: running
            .iter()
            .map(|r| ReplicaSample {
                replica: r.clone(),
                cpu_ns: seq * 50_000_000,
                throttled_ns: 0,
                memory_working_set: 12 << 20,
                memory_limit: Some(64 << 20),
                oom_kills: 0,
                pids: 3,
                net_rx: seq * 10_000,
                net_tx: seq * 20_000,
            })
            .collect(),
    }
}

fn fake_cgroups(root: &std::path::Path, ids: &[String]) {
    for id in ids {
        let d = root.join("bramble").join(id);
        std::fs::create_dir_all(&d).expect("cgroup dir");
        for (f, v) in [
            ("memory.current", "12582912\n"),
            ("memory.stat", "anon 10000000\nfile 2000000\ninactive_file 1000000\nactive_file 1000000\n"),
            ("memory.max", "67108864\n"),
            ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
            ("cpu.stat", "usage_usec 123456789\nuser_usec 100000000\nsystem_usec 23456789\nnr_periods 10\nnr_throttled 1\nthrottled_usec 5000\n"),
            ("pids.current", "3\n"),
        ] {
            std::fs::write(d.join(f), v).expect("cgroup file");
        }
    }
}

pub fn run(replicas: usize) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids: Vec<String> = (0..replicas).map(|i| format!("app-0123456789-r{i:04}")).collect();
    fake_cgroups(dir.path(), &ids);
    let sampler = Sampler {
        proc_dir: "/proc".into(),
        sys_dir: "/sys".into(),
        data_dir: dir.path().to_path_buf(),
        cgroups: CgroupFs::at(dir.path(), Version::V2),
        shims_dir: dir.path().join("shims"),
        cgroup_parent: "bramble".into(),
    };
    let rounds = 500;
    let t0 = Instant::now();
    let mut s = UsageSample::default();
    for _ in 0..rounds {
        s = sampler.sample(&ids);
    }
    let per_sample_us = t0.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    assert_eq!(s.replicas.len(), replicas, "every replica sampled");
    // On the session: the frame's JSON (the codec adds a 4-byte length).
    let bytes = serde_json::to_vec(&bramble_proto::wire::AgentMsg::Usage(s)).expect("json").len() + 4;
    let interval_s = 15.0;
    let cpu_share_permille = per_sample_us / (interval_s * 1e6) * 1000.0;
    println!("monitoring cost on a board with {replicas} replicas (sampled every {interval_s} s by default):");
    println!(
        "  one sample (board + {replicas} replicas): {per_sample_us:.0} µs = {:.1} µs per replica",
        per_sample_us / replicas as f64
    );
    println!("  CPU at the default interval: {:.4} ‰ of one core ({:.3} mCPU)", cpu_share_permille, cpu_share_permille);
    println!("  on the session: {bytes} bytes per sample = {:.1} bytes/s", bytes as f64 / interval_s);
    println!("  published: metrics-server requests ~1 mCPU and 2 MB per node (not measured here)");
    serde_json::json!({
        "replicas": replicas,
        "sample_us": per_sample_us,
        "per_replica_us": per_sample_us / replicas as f64,
        "mcpu_at_15s": cpu_share_permille,
        "bytes_per_sample": bytes,
        "bytes_per_second_at_15s": bytes as f64 / interval_s,
    })
}
