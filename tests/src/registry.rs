//! Debian's `docker-registry` (CNCF distribution) on loopback, with its own config and storage,
//! stopped and removed on drop.

use crate::process::Proc;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Registry {
    pub addr: String,
    pub storage: PathBuf,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Registry {
    /// Starts a registry on loopback; `htpasswd` (a file) turns on basic auth, `tls` = (cert, key) HTTPS.
    pub fn start(htpasswd: Option<&Path>, tls: Option<(&Path, &Path)>) -> Registry {
        Self::start_in(None, htpasswd, tls)
    }

    /// Starts a plain-HTTP registry inside network namespace `ns` on `ip:5000`, for agents in
    /// other namespaces of the same lab.
    pub fn start_in_netns(ns: &str, ip: &str) -> Registry {
        Self::start_in(Some((ns, ip, 5000)), None, None)
    }

    /// [`Registry::start_in_netns`] on another port, with basic auth from `htpasswd` if given.
    pub fn start_in_netns_on(ns: &str, ip: &str, port: u16, htpasswd: Option<&Path>) -> Registry {
        Self::start_in(Some((ns, ip, port)), htpasswd, None)
    }

    fn start_in(netns: Option<(&str, &str, u16)>, htpasswd: Option<&Path>, tls: Option<(&Path, &Path)>) -> Registry {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.exists(),
            "this test needs Debian's docker-registry (apt-get install docker-registry; scripts/test does)"
        );
        let dir = tempfile::Builder::new().prefix("bramble-registry-").tempdir().expect("temp dir");
        let storage = dir.path().join("storage");
        let (host, port) = match netns {
            Some((_, ip, port)) => (ip.to_string(), port),
            None => ("127.0.0.1".to_string(), free_port()),
        };
        let mut cfg = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp:\n  addr: {host}:{port}\n",
            storage.display()
        );
        if let Some((cert, key)) = tls {
            cfg.push_str(&format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display()));
        }
        if let Some(h) = htpasswd {
            cfg.push_str(&format!("auth:\n  htpasswd:\n    realm: bramble-test\n    path: {}\n", h.display()));
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).expect("registry config");
        let log = dir.path().join("registry.log");
        let args = ["serve".to_string(), cfg_path.display().to_string()];
        let proc = match netns {
            Some((ns, _, _)) => Proc::spawn("registry", ns, bin, &args, &log),
            None => Proc::spawn_host("registry", bin, &args, &log),
        };
        let addr = format!("{host}:{port}");
        let start = Instant::now();
        loop {
            if let Some((ns, _, _)) = netns {
                // Reachable from inside its namespace (bash's /dev/tcp: no extra tool needed).
                let probe = std::process::Command::new("ip")
                    .args(["netns", "exec", ns, "bash", "-c", &format!("exec 3<>/dev/tcp/{host}/{port}")])
                    .output();
                if probe.is_ok_and(|o| o.status.success()) {
                    break;
                }
            } else if let Ok(mut s) = TcpStream::connect(&addr) {
                if tls.is_some() {
                    break; // accepting connections; HTTPS is checked by the client under test
                }
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the registry did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { addr, storage, _proc: proc, _dir: dir }
    }

    /// Flips one byte of a blob in the registry's storage.
    pub fn corrupt_blob(&self, digest: &bramble_images::Digest) {
        let hex = digest.hex();
        let p = self.storage.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(&hex).join("data");
        let mut bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("blob {} in the registry: {e}", p.display()));
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&p, bytes).expect("write blob");
    }
}
