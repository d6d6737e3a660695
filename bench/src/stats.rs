//! Summaries of repeated measurements.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub p95: f64,
    pub runs: usize,
}

/// Milliseconds: min, median, 95th percentile (nearest rank).
pub fn summarize(samples: &[Duration]) -> Summary {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let rank = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    Summary { min: ms[0], median: rank(0.5), p95: rank(0.95), runs: ms.len() }
}

impl Summary {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "min_ms": self.min, "median_ms": self.median, "p95_ms": self.p95, "runs": self.runs })
    }
}

/// `bramble-leader init` in `dir/leader` listening on a free loopback port; returns the data dir
/// and the listen address.
pub fn init_leader(bins: &std::path::Path, dir: &std::path::Path) -> (std::path::PathBuf, String) {
    init_leader_with(bins, dir, &[])
}

/// [`init_leader`] with more arguments to `bramble-leader init`.
pub fn init_leader_with(bins: &std::path::Path, dir: &std::path::Path, extra: &[&str]) -> (std::path::PathBuf, String) {
    let leader_dir = dir.join("leader");
    let port = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let listen = format!("127.0.0.1:{port}");
    let out = std::process::Command::new(bins.join("bramble-leader"))
        .args(["init", "--listen", &listen, "--data-dir", leader_dir.to_str().expect("utf-8")])
        .args(extra)
        .output()
        .expect("run bramble-leader init");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (leader_dir, listen)
}
