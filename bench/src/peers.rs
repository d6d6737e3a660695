//! Images shared by the boards: a `size` MiB image (busybox and one layer of noise) rolled out to
//! 1, 3 and more boards at once, with boards sharing layers (the default) and with each board
//! pulling from the registry itself (`[images] peers = false`), in the same run. Bytes the
//! registry sent (an nft counter on its namespace's output: the "uplink"), apply → every replica
//! Running, and the agents' peak RSS (serving copies included).

use crate::apps::{replicas, wait};
use bramble_proto::model::ReplicaPhase;
use bramble_proto::time::now_ms;
use bramble_tests::registry::Registry;
use bramble_tests::testimages::{busybox_layer, Layout, TarBuilder};
use bramble_tests::{Cluster, ClusterOptions};
use std::process::Command;
use std::time::Duration;

fn nft(ns: &str, args: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns, "nft", "-j"]).args(args.split(' ')).output().expect("nft");
    assert!(out.status.success(), "nft {args}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sent(ns: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&nft(ns, "list table inet bench_uplink")).expect("json");
    v["nftables"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["bytes"].as_u64())
        .sum()
}

fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

struct Run {
    bytes: u64,
    ms: u64,
    peak_kib: u64,
}

fn rollout(boards: usize, peers: bool, size_mib: usize, uplink_mbit: u64) -> Run {
    let toml = if peers { "" } else { "[images]\npeers = false\n" };
    let c = Cluster::start_with(ClusterOptions { agents: boards, ..Default::default() }, move |lab| {
        format!("{toml}[[images.registry]]\nhost = \"{}:5000\"\ninsecure = true\n", lab.addr(0))
    });
    let ns = c.lab.ns(0);
    let registry = Registry::start_in_netns(&ns, &c.lab.addr(0));
    let layout = c.dir.path().join("big");
    let l = Layout::new(&layout);
    let noise = bramble_tests::testimages::noise(0x9E3779B97F4A7C15, size_mib << 20);
    let big = TarBuilder::default().file("noise", 0o644, &noise).finish();
    drop(noise);
    let m = l.image("amd64", None, &[busybox_layer("amd64"), big], &["sh"]);
    l.finish("1", vec![m], false);
    let image = format!("{}/bench/big:1", registry.addr);
    bramble_tests::testimages::push_from(Some(&ns), &layout, "1", &image);
    nft(&ns, "add table inet bench_uplink");
    nft(&ns, "add chain inet bench_uplink out { type filter hook output priority 0 ; }");
    if uplink_mbit > 0 {
        // The uplink: what the registry sends beyond this rate is dropped (TCP backs off); the
        // counter after it counts what went through, retransmissions included.
        let kbytes = uplink_mbit * 1000 / 8;
        nft(&ns, &format!("add rule inet bench_uplink out tcp sport 5000 limit rate over {kbytes} kbytes/second drop"));
    }
    nft(&ns, "add rule inet bench_uplink out tcp sport 5000 counter");
    let manifest = c.write(
        "big.toml",
        &format!(
            "[[app]]\nname = \"big\"\nimage = \"{image}\"\nreplicas = {boards}\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n\
             [app.placement]\nmax_per_node = 1\n"
        ),
    );
    let t0 = now_ms();
    assert!(c.cli(&["apply", "-f", &manifest]).status.success());
    let last = wait("every replica Running", Duration::from_secs(600), || {
        let rs = replicas(&c, "big");
        let running: Vec<u64> =
            rs.iter().filter(|r| r.phase == ReplicaPhase::Running).filter_map(|r| r.started_ms).collect();
        (running.len() == boards).then(|| running.into_iter().max().unwrap_or(t0))
    });
    let peak_kib = (1..=boards).map(|i| peak_kib(c.agent(i).pid())).max().unwrap_or(0);
    Run { bytes: sent(&ns), ms: last.saturating_sub(t0), peak_kib }
}

pub fn run(boards: &[usize], size_mib: usize, uplink_mbit: u64) -> serde_json::Value {
    let link = if uplink_mbit > 0 { format!("a {uplink_mbit} Mbit/s uplink") } else { "an unshaped uplink".into() };
    println!("a {size_mib} MiB image rolled out to N boards at once through {link}; bytes the registry sent, apply -> all Running:");
    println!(
        "  {:>6}  {:>14} {:>10} {:>10}   {:>14} {:>10} {:>10}",
        "boards", "shared: MiB", "ms", "agent KiB", "each: MiB", "ms", "agent KiB"
    );
    let mut out = Vec::new();
    for &n in boards {
        let shared = rollout(n, true, size_mib, uplink_mbit);
        let each = rollout(n, false, size_mib, uplink_mbit);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "  {n:>6}  {:>14.1} {:>10} {:>10}   {:>14.1} {:>10} {:>10}",
            mib(shared.bytes),
            shared.ms,
            shared.peak_kib,
            mib(each.bytes),
            each.ms,
            each.peak_kib
        );
        out.push(serde_json::json!({
            "boards": n,
            "shared": { "uplink_bytes": shared.bytes, "apply_to_running_ms": shared.ms, "agent_peak_rss_kib": shared.peak_kib },
            "each_from_registry": { "uplink_bytes": each.bytes, "apply_to_running_ms": each.ms, "agent_peak_rss_kib": each.peak_kib },
        }));
    }
    serde_json::json!({ "size_mib": size_mib, "uplink_mbit": uplink_mbit, "runs": out })
}
