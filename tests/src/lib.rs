//! A harness for end-to-end tests: boards as network namespaces on a bridge, a real leader and
//! real agents as processes, and the real CLI.
//!
//! ```text
//!   netns <p>-br:  bridge br0 ── v0 ── eth0 in <p>-l   (the leader, 10.250.K.1)
//!                            ├── v1 ── eth0 in <p>-1   (board 1,    10.250.K.11)
//!                            └── vN ── eth0 in <p>-N
//! ```
//!
//! Everything is removed on drop, also when a test fails: processes are killed by PID, then the
//! namespaces are deleted. Needs root (namespaces) and `ip` (iproute2); without them the harness
//! fails with a message that says what is missing.

pub mod cluster;
pub mod ingress;
pub mod load;
pub mod netlab;
pub mod process;
pub mod reaper;
pub mod registry;
pub mod sim;
pub mod testimages;

pub use cluster::{Cluster, ClusterOptions};
pub use netlab::NetLab;

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fails the test, saying what is missing, unless it runs as root with `ip` available.
pub fn require_root_and_ip() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this end-to-end test needs root (it creates network namespaces); run it as root, as CI does");
    }
    let ip = std::process::Command::new("ip").arg("-V").output();
    if !ip.is_ok_and(|o| o.status.success()) {
        panic!("this end-to-end test needs `ip` from iproute2 (apt-get install iproute2)");
    }
}

/// A command's output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// The standard output of a command that must succeed (else the test fails with its stderr).
pub fn ok(out: std::process::Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(&out.stderr));
    text(&out.stdout)
}
