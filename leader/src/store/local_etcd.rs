//! A throwaway etcd cluster of Debian's `etcd` binary, for tests and benchmarks: N members on one
//! address (loopback, or a network namespace's), distinct ports, data in a temporary directory,
//! each member killed by its PID when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LocalEtcd {
    pub members: Vec<Member>,
    netns: Option<String>,
    dir: tempfile::TempDir,
    initial: String,
    tls: Option<Tls>,
}

/// TLS for clients (peers talk plain HTTP among themselves here): the CA that signed both
/// sides, the members' certificate and key (PEM files); clients must show a certificate of the
/// same CA.
#[derive(Debug, Clone)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    child: Option<Child>,
}

/// A TCP port nobody listens on right now on `ip` (bind and let go).
fn free_port(ip: &str) -> Option<u16> {
    std::net::TcpListener::bind((ip, 0)).ok()?.local_addr().ok().map(|a| a.port())
}

impl LocalEtcd {
    /// Starts `n` members on `ip` (in `netns`, if given; a port is taken there by asking the
    /// kernel of the host when `ip` is loopback) and waits until they answer. Panics with what is
    /// missing when etcd is not installed.
    pub fn start(n: usize, ip: &str, netns: Option<&str>, ports_from: Option<u16>) -> LocalEtcd {
        Self::start_with(n, ip, netns, ports_from, None)
    }

    /// Like [`LocalEtcd::start`], serving clients over TLS when `tls` is given.
    pub fn start_with(n: usize, ip: &str, netns: Option<&str>, ports_from: Option<u16>, tls: Option<Tls>) -> LocalEtcd {
        let scheme = if tls.is_some() { "https" } else { "http" };
        assert!(
            std::path::Path::new("/usr/bin/etcd").exists(),
            "etcd is not installed: `apt-get install etcd-server` (scripts/test does)"
        );
        let dir = tempfile::Builder::new().prefix("bramble-etcd-").tempdir().expect("temp dir");
        let mut members = Vec::new();
        for i in 0..n {
            let (c, p) = match ports_from {
                Some(base) => (base + 2 * i as u16, base + 2 * i as u16 + 1),
                None => (free_port(ip).expect("a free port"), free_port(ip).expect("a free port")),
            };
            members.push(Member {
                name: format!("m{i}"),
                client_url: format!("{scheme}://{ip}:{c}"),
                peer_url: format!("http://{ip}:{p}"),
                child: None,
            });
        }
        let initial = members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        let mut e = LocalEtcd { members, netns: netns.map(str::to_string), dir, initial, tls };
        for i in 0..n {
            e.start_member(i);
        }
        e.wait_ready(Duration::from_secs(30));
        e
    }

    fn start_member(&mut self, i: usize) {
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name))).expect("etcd log");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/bin/etcd"]);
                c
            }
            None => Command::new("/usr/bin/etcd"),
        };
        cmd.args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &m.client_url, "--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url, "--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial, "--initial-cluster-token", "bramble-test"])
            .args(["--initial-cluster-state", "new"])
            // As dist/etcd recommends for boards: quick elections on a LAN, few snapshots.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000", "--snapshot-count", "10000"])
            .args(["--log-level", "warn"])
            .args(self.tls.iter().flat_map(|t| {
                [
                    "--cert-file".into(),
                    t.cert.display().to_string(),
                    "--key-file".into(),
                    t.key.display().to_string(),
                    "--trusted-ca-file".into(),
                    t.ca.display().to_string(),
                    "--client-cert-auth".into(),
                ]
            }))
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH.replace("aarch64", "arm64"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    /// The PIDs of the running members (for their I/O counters).
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(|m| m.child.as_ref().map(|c| c.id())).collect()
    }

    /// The client URLs, for `[store] endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Waits until every running member serves `/health` with a leader.
    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            loop {
                if self.healthy(m) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} is not healthy after {within:?}: {}",
                    m.name,
                    self.log(m)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn healthy(&self, m: &Member) -> bool {
        if let Some(t) = &self.tls {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "2", "--cacert"])
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.cert)
                .arg("--key")
                .arg(&t.key)
                .arg(format!("{}/health", m.client_url))
                .output();
            return out.map(|o| String::from_utf8_lossy(&o.stdout).contains("\"health\":\"true\"")).unwrap_or(false);
        }
        let addr = m.client_url.trim_start_matches("http://").to_string();
        let probe = format!(
            "exec 3<>/dev/tcp/{}/{} && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
            addr.split(':').next().unwrap_or("127.0.0.1"),
            addr.split(':').nth(1).unwrap_or("2379")
        );
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "bash", "-c", &probe]);
                c
            }
            None => {
                let mut c = Command::new("bash");
                c.args(["-c", &probe]);
                c
            }
        };
        cmd.output().map(|o| String::from_utf8_lossy(&o.stdout).contains("\"health\":\"true\"")).unwrap_or(false)
    }

    fn log(&self, m: &Member) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name))).unwrap_or_default()
    }

    /// Kills member `i` (SIGKILL, by PID); `restart` brings it back with its data.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.start_member(i);
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
