//! A metrics address that is taken or invalid: the leader says which and serves the cluster anyway.

use bramble_leader::{init::init, LeaderConfig};
use std::time::Duration;

async fn start_with_metrics(listen: &str) -> (tempfile::TempDir, bramble_leader::RunningLeader) {
    let dir = tempfile::tempdir().unwrap();
    let out = init(&dir.path().join("l"), "127.0.0.1:0".parse().unwrap(), "t", false, &Default::default()).unwrap();
    let mut config = LeaderConfig::load(&out.config_path).unwrap();
    config.metrics.listen = Some(listen.to_string());
    let leader = bramble_leader::start(&config).await.expect("the leader starts whatever the metrics address");
    (dir, leader)
}

#[tokio::test]
async fn a_taken_or_invalid_metrics_address_does_not_stop_the_leader() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for listen in [addr.as_str(), "nowhere:99"] {
        let (_dir, leader) = start_with_metrics(listen).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The cluster is served: the store answers through the API.
        let r =
            leader.api.handle(Some(&bramble_transport::Identity::admin("t")), bramble_proto::wire::Request::GetNodes);
        assert!(matches!(r, bramble_proto::wire::Response::Nodes(_)), "{r:?}");
        leader.shutdown(Duration::from_secs(2)).await;
    }
    // The text is rendered from the leader's state even with nothing in it.
    let (_dir, leader) = start_with_metrics("127.0.0.1:0").await;
    let text =
        bramble_leader::observability::metrics::render(&bramble_leader::wiring::metrics_handles(&leader.api)).unwrap();
    assert!(text.contains("\nbramble_sessions 0.0\n") && text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("\nbramble_store_size_bytes "), "{text}");
    leader.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn the_grafana_dashboard_asks_only_for_metrics_the_leader_serves() {
    let (_dir, leader) = start_with_metrics("127.0.0.1:0").await;
    // A board's samples (two, for rates), as a session records them.
    use bramble_proto::usage::{NodeSample, ReplicaSample, UsageSample};
    for (t, ns) in [(0u64, 0u64), (15_000, 15_000_000_000)] {
        let node = NodeSample {
            cpu_busy_ns: ns,
            cpus: 4,
            memory_total: 1 << 30,
            memory_used: 1 << 29,
            load1_milli: 100,
            disk_total: 1 << 34,
            disk_free: 1 << 33,
            temperature_mc: Some(50_000),
            throttled: Some(0),
        };
        let replicas = vec![ReplicaSample { replica: "web-1".into(), cpu_ns: ns / 4, ..Default::default() }];
        leader.api.usage.record("pi-1", UsageSample { at_ms: t, node, replicas }, 1_000 + t, |_| Some("web".into()));
    }
    let text =
        bramble_leader::observability::metrics::render(&bramble_leader::wiring::metrics_handles(&leader.api)).unwrap();
    assert!(text.contains("bramble_node_cpu_usage_cores{node=\"pi-1\"} 1.0"), "{text}");
    let dashboard = include_str!("../../dist/grafana/bramble-dashboard.json");
    let mut asked = std::collections::BTreeSet::new();
    for (i, _) in dashboard.match_indices("bramble_") {
        let name: String = dashboard[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let base =
            ["_bucket", "_count", "_sum"].iter().fold(name.clone(), |n, s| n.strip_suffix(s).unwrap_or(&n).to_string());
        asked.insert(base);
    }
    assert!(asked.len() >= 8, "{asked:?}");
    // Served now, or (for what needs nodes and apps in the store) registered under that name.
    let source = include_str!("../src/observability/metrics.rs");
    for name in asked {
        let registered = source.contains(&format!("\"{}\"", name.trim_start_matches("bramble_")));
        assert!(
            text.contains(&format!("# TYPE {name} ")) || registered,
            "the dashboard asks for {name}, which /metrics does not serve"
        );
    }
    leader.shutdown(Duration::from_secs(2)).await;
}
