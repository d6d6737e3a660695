//! A load generator for rollouts: an HTTP/1.1 server for busybox containers, and clients that
//! send requests through a service's virtual IP from a board's network namespace — some opening
//! a connection per request, some keeping theirs — counting what fails. Used by the rollout test
//! and `bramble-bench rollout`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An HTTP/1.1 server in busybox sh behind `nc -ll`: one handler per connection, answering
/// requests on it until the client closes (keep-alive) or asks to close.
pub const HANDLER: &str = r#"#!/bin/sh
CR=$(printf '\r')
close=
while read -r line; do
  case "$line" in *HTTP/1.0*) close=1;; esac
  while read -r h; do
    case "$h" in "$CR"|"") break;; [Cc]onnection:*[Cc]lose*) close=1;; esac
  done
  body="$(hostname) v$VERSION"
  if [ -n "$close" ]; then
    printf 'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' ${#body} "$body"
    exit 0
  fi
  printf 'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s' ${#body} "$body"
done
"#;

/// Serves with the handler; on the stop signal it stops listening and exits at once (no grace
/// of its own: not dropping requests is Bramble's part).
pub const RUN: &str = "echo \"$HANDLER\" > /h.sh; chmod +x /h.sh; nc -ll -p 8080 -e /h.sh & pid=$!; \
                   trap 'kill $pid; exit 0' TERM; wait $pid";

/// An app of `replicas` serving [`HANDLER`] on its port `http` (8080), answering
/// "`hostname` v`version`", behind a service of the same name on port 80. `keys` go in the app's
/// table (e.g. `update = …`), `tables` after its port (e.g. probes).
pub fn web_app(name: &str, image: &str, replicas: usize, version: &str, keys: &str, tables: &str) -> String {
    format!(
        r#"[[app]]
name = "{name}"
image = "{image}"
replicas = {replicas}
command = ["/bin/sh", "-c", "{run}"]
env = {{ VERSION = "{version}", HANDLER = '''{HANDLER}''' }}
stop_grace = "5s"
{keys}
[[app.ports]]
name = "http"
container = 8080
{tables}
[[service]]
name = "{name}"
app = "{name}"
ports = [{{ port = 80, target = "http" }}]
"#,
        run = RUN.replace('"', "\\\"")
    )
}

/// What the load generator saw.
#[derive(Debug, Default)]
pub struct Stats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Requests sent again on a new connection because the server had closed the reused one
    /// before answering (what HTTP clients do for idempotent requests).
    pub retried: AtomicU64,
    pub reused: AtomicU64,
    pub failures: Mutex<Vec<String>>,
    /// Bodies seen: which versions answered.
    pub versions: Mutex<std::collections::BTreeSet<String>>,
}

impl Stats {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut f = self.failures.lock().expect("not poisoned");
        if f.len() < 20 {
            f.push(why);
        }
    }
    fn ok(&self, body: &str) {
        self.ok.fetch_add(1, Ordering::SeqCst);
        if let Some(v) = body.split_whitespace().nth(1) {
            self.versions.lock().expect("not poisoned").insert(v.to_string());
        }
    }
}

/// Reads one response (status line, headers, `Content-Length` body). `Ok(None)`: the connection
/// closed before a single byte of it.
pub fn read_response(s: &mut TcpStream) -> std::io::Result<Option<(u16, String, bool)>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed inside the headers")),
            Ok(_) => buf.push(byte[0]),
            Err(e) if buf.is_empty() && e.kind() == ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    let close = head.to_ascii_lowercase().contains("connection: close");
    Ok(Some((status, String::from_utf8_lossy(&body).to_string(), close)))
}

pub fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    Ok(s)
}

/// A client that opens a connection for every request.
pub fn new_connections(addr: SocketAddr, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
    while !stop.load(Ordering::SeqCst) {
        let r = connect(addr).and_then(|mut s| {
            s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")?;
            read_response(&mut s)
        });
        match r {
            Ok(Some((200, body, _))) => stats.ok(&body),
            Ok(Some((code, body, _))) => stats.fail(format!("new connection: HTTP {code} {body}")),
            Ok(None) => stats.fail("new connection: closed without an answer".into()),
            Err(e) => stats.fail(format!("new connection: {e}")),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A client that keeps its connection open between requests, as browsers and HTTP libraries do.
pub fn keep_alive(addr: SocketAddr, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::SeqCst) {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let reused = conn.is_some();
            let mut s = match conn.take() {
                Some(s) => s,
                None => match connect(addr) {
                    Ok(s) => s,
                    Err(e) => {
                        stats.fail(format!("keep-alive connect: {e}"));
                        break;
                    }
                },
            };
            if reused {
                stats.reused.fetch_add(1, Ordering::SeqCst);
            }
            let r = s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").and_then(|_| read_response(&mut s));
            match r {
                Ok(Some((200, body, close))) => {
                    stats.ok(&body);
                    if !close {
                        conn = Some(s);
                    }
                    break;
                }
                Ok(Some((code, body, _))) => {
                    stats.fail(format!("keep-alive: HTTP {code} {body}"));
                    break;
                }
                // The server closed the idle connection before this request reached it: send it
                // again on a new one (once).
                Ok(None) | Err(_) if reused && attempt == 1 => {
                    stats.retried.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                Ok(None) => {
                    stats.fail("keep-alive: closed without an answer on a new connection".into());
                    break;
                }
                Err(e) => {
                    stats.fail(format!("keep-alive (reused: {reused}): {e}"));
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts the load from board `ns` to `addr`: two clients of each kind.
pub fn load(
    ns: PathBuf,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..4)
        .map(|i| {
            let (ns, stop, stats) = (ns.clone(), stop.clone(), stats.clone());
            std::thread::spawn(move || {
                let f = std::fs::File::open(&ns).expect("the board's namespace");
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                if i % 2 == 0 {
                    new_connections(addr, stop, stats)
                } else {
                    keep_alive(addr, stop, stats)
                }
            })
        })
        .collect()
}

/// Apache's `ab`, an outside load generator beside ours: HTTP/1.0, a connection per request,
/// from a board's namespace, until [`Ab::finish`].
pub struct Ab {
    child: std::process::Child,
}

/// What `ab` reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbReport {
    pub complete: u64,
    /// Connect, receive, length and exception failures.
    pub failed: u64,
    pub non_2xx: u64,
    pub output: String,
}

impl Ab {
    /// `ab` in network namespace `ns` (a name for `ip netns exec`) against `url`, `concurrency`
    /// requests at a time; it keeps going through receive errors (`-r`: they are counted).
    pub fn start(ns: &str, url: &str, concurrency: u32) -> Ab {
        Ab::start_with(ns, url, concurrency, &[])
    }

    /// The same with `headers` (`Host: shop.lan`) on each request.
    pub fn start_with(ns: &str, url: &str, concurrency: u32, headers: &[&str]) -> Ab {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "ab", "-r", "-s", "5", "-t", "3600", "-n", "50000000"])
            .args(headers.iter().flat_map(|h| ["-H", h]))
            .args(["-c", &concurrency.to_string(), url])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ab (Debian's apache2-utils; scripts/test installs it)");
        Ab { child }
    }

    /// Stops it (SIGINT: it prints its report) and reads the report. Panics if it had stopped by
    /// itself (ab gives up on a refused connection): that is a failure of the service.
    pub fn finish(mut self) -> AbReport {
        if let Some(status) = self.child.try_wait().expect("wait") {
            let out = self.child.wait_with_output().expect("ab's output");
            panic!("ab stopped by itself ({status}): {}{}", crate::text(&out.stdout), crate::text(&out.stderr));
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT to ab");
        let out = self.child.wait_with_output().expect("ab's output");
        let output = crate::text(&out.stdout) + &crate::text(&out.stderr);
        let field = |name: &str| {
            output
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        };
        AbReport {
            complete: field("Complete requests:").unwrap_or_else(|| panic!("no report from ab: {output}")),
            failed: field("Failed requests:").unwrap_or_else(|| panic!("no report from ab: {output}")),
            non_2xx: field("Non-2xx responses:").unwrap_or(0),
            output,
        }
    }
}
