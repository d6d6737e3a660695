//! Probes as the shim runs them: what to check (resolved from the app's spec), a pure tracker that
//! decides from results and times what is due, whether the replica is ready and when the container
//! must be killed, and the network attempts (tcp connect, http GET) as non-blocking sockets the
//! shim's poll loop drives. Exec probes run through the shim's exec path.

use bramble_proto::wire::ProbeStatus;

/// How often, at most, a readiness probe is tried until it first passes after a start (its
/// period, if shorter): a new replica should take traffic as soon as it answers, not a period
/// later. The tries start [`FIRST_RETRY_MS`] apart and double up to this: most servers listen
/// within milliseconds of their start, so the first tries come quickly.
pub const UNTIL_READY_PERIOD_MS: u64 = 250;
/// The wait after a readiness probe's first failed try since the container started.
pub const FIRST_RETRY_MS: u64 = 5;
use serde::{Deserialize, Serialize};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeAction {
    Exec { args: Vec<String> },
    Http { port: u16, path: String },
    Tcp { port: u16 },
}

impl ProbeAction {
    pub fn describe(&self) -> String {
        match self {
            ProbeAction::Exec { args } => format!("exec {}", args.join(" ")),
            ProbeAction::Http { port, path } => format!("http :{port}{path}"),
            ProbeAction::Tcp { port } => format!("tcp :{port}"),
        }
    }
}

/// One probe, resolved: ports are numbers, durations milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeConfig {
    pub kind: ProbeKind,
    pub action: ProbeAction,
    pub initial_delay_ms: u64,
    pub period_ms: u64,
    pub timeout_ms: u64,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

/// What the tracker asks of the shim after a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Nothing,
    /// A liveness or startup probe failed too often: kill the container (its restart policy
    /// then decides), for this reason.
    Kill(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    config: ProbeConfig,
    ok: Option<bool>,
    successes: u32,
    failures: u32,
    message: String,
    kills: u32,
    /// Startup: has passed. Readiness: is ready.
    passed: bool,
    /// Has passed since the container last started.
    passed_once: bool,
    /// Tried since the container last started (the quick retries until ready double with it).
    tries: u32,
    /// When it is next due (None: not while the container does not run, or held by startup).
    next_ms: Option<u64>,
    in_flight: bool,
}

/// The probes of one container over its runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    probes: Vec<State>,
    started_ms: Option<u64>,
}

impl Tracker {
    pub fn new(configs: &[ProbeConfig]) -> Tracker {
        let probes = configs
            .iter()
            .map(|c| State {
                config: c.clone(),
                ok: None,
                successes: 0,
                failures: 0,
                message: String::new(),
                kills: 0,
                passed: false,
                passed_once: false,
                tries: 0,
                next_ms: None,
                in_flight: false,
            })
            .collect();
        Tracker { probes, started_ms: None }
    }

    fn startup_passed(&self) -> bool {
        self.probes.iter().filter(|p| p.config.kind == ProbeKind::Startup).all(|p| p.passed)
    }

    /// A new run of the container began: every probe starts over (kill counts stay).
    pub fn container_started(&mut self, now_ms: u64) {
        self.started_ms = Some(now_ms);
        let gated = self.probes.iter().any(|p| p.config.kind == ProbeKind::Startup);
        for p in &mut self.probes {
            p.ok = None;
            p.successes = 0;
            p.failures = 0;
            p.passed = false;
            p.passed_once = false;
            p.tries = 0;
            p.in_flight = false;
            let held = gated && p.config.kind != ProbeKind::Startup;
            p.next_ms = (!held).then_some(now_ms + p.config.initial_delay_ms);
        }
    }

    /// The container stopped running: nothing is due, nothing is ready.
    pub fn container_stopped(&mut self) {
        self.started_ms = None;
        for p in &mut self.probes {
            p.next_ms = None;
            p.passed = false;
            p.in_flight = false;
        }
    }

    /// Probes due at `now_ms` (each marked in flight: the caller runs it and records the result).
    pub fn take_due(&mut self, now_ms: u64) -> Vec<(usize, ProbeConfig)> {
        let mut out = Vec::new();
        for (i, p) in self.probes.iter_mut().enumerate() {
            if !p.in_flight && p.next_ms.is_some_and(|at| at <= now_ms) {
                p.in_flight = true;
                out.push((i, p.config.clone()));
            }
        }
        out
    }

    /// The result of probe `i` at `now_ms`.
    pub fn record(&mut self, i: usize, ok: bool, message: &str, now_ms: u64) -> Verdict {
        let Some(started) = self.started_ms else { return Verdict::Nothing };
        let Some(p) = self.probes.get_mut(i) else { return Verdict::Nothing };
        if !p.in_flight {
            return Verdict::Nothing; // a result from a run that has ended
        }
        p.in_flight = false;
        p.ok = Some(ok);
        p.tries = p.tries.saturating_add(1);
        p.next_ms = Some(now_ms + p.config.period_ms);
        if ok {
            p.successes += 1;
            p.failures = 0;
            if p.successes >= p.config.success_threshold {
                p.passed = true;
                p.passed_once = true;
            }
        } else {
            p.failures += 1;
            p.successes = 0;
            p.message = message.to_string();
        }
        // A readiness probe that has not passed since the container started is tried again
        // sooner, 5 ms, 10 ms, 20 ms… apart up to 250 ms: the replica is not ready either way,
        // and takes traffic as soon as it answers.
        if p.config.kind == ProbeKind::Readiness && !p.passed_once {
            let wait = (FIRST_RETRY_MS << (p.tries - 1).min(16)).min(UNTIL_READY_PERIOD_MS);
            p.next_ms = Some(now_ms + p.config.period_ms.min(wait));
        }
        let kind = p.config.kind;
        let failed = !ok && p.failures >= p.config.failure_threshold;
        match kind {
            ProbeKind::Readiness => {
                if failed {
                    p.passed = false;
                }
                Verdict::Nothing
            }
            ProbeKind::Startup if ok && p.passed => {
                // Passed: it stops, and the others begin (their initial delay counts from the start).
                p.next_ms = None;
                for q in self.probes.iter_mut().filter(|q| q.config.kind != ProbeKind::Startup) {
                    q.next_ms = Some((started + q.config.initial_delay_ms).max(now_ms));
                }
                Verdict::Nothing
            }
            ProbeKind::Startup | ProbeKind::Liveness if failed => {
                p.kills += 1;
                let why = format!("{} probe failed {} times: {}", kind.name(), p.failures, p.message);
                for q in &mut self.probes {
                    q.next_ms = None;
                }
                Verdict::Kill(why)
            }
            _ => Verdict::Nothing,
        }
    }

    /// Ready: running, past its startup probe, and passing its readiness probe if it has one.
    pub fn ready(&self, running: bool) -> bool {
        running
            && self.started_ms.is_some()
            && self.startup_passed()
            && self.probes.iter().filter(|p| p.config.kind == ProbeKind::Readiness).all(|p| p.passed)
    }

    /// When a probe is next due.
    pub fn next_due(&self) -> Option<u64> {
        self.probes.iter().filter(|p| !p.in_flight).filter_map(|p| p.next_ms).min()
    }

    pub fn statuses(&self) -> Vec<ProbeStatus> {
        self.probes
            .iter()
            .map(|p| ProbeStatus {
                probe: p.config.kind.name().to_string(),
                action: p.config.action.describe(),
                ok: p.ok,
                failures: p.failures,
                message: p.message.clone(),
                kills: p.kills,
            })
            .collect()
    }
}

/// A tcp or http probe in progress on a non-blocking socket.
#[derive(Debug)]
pub struct NetAttempt {
    pub probe: usize,
    pub stream: TcpStream,
    pub deadline_ms: u64,
    /// `Some(request)` for http until it is written.
    request: Option<Vec<u8>>,
    http: bool,
    connected: bool,
    answer: Vec<u8>,
    /// Set once it finished (the shim records it after its poll round).
    pub result: Option<(bool, String)>,
}

/// What a network attempt wants next from poll, or its result.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    WantWrite,
    WantRead,
    Done(bool, String),
}

impl NetAttempt {
    /// Starts connecting to `ip:port`; a probe that fails at once is `Err(message)`.
    pub fn start(probe: usize, ip: Ipv4Addr, action: &ProbeAction, deadline_ms: u64) -> Result<NetAttempt, String> {
        let (port, request) = match action {
            ProbeAction::Tcp { port } => (*port, None),
            ProbeAction::Http { port, path } => (
                *port,
                Some(
                    format!(
                        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: bramble-probe/1\r\n\
                         Accept: */*\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes(),
                ),
            ),
            ProbeAction::Exec { .. } => return Err("not a network probe".into()),
        };
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .map_err(|e| format!("socket: {e}"))?;
        socket.set_nonblocking(true).map_err(|e| format!("socket: {e}"))?;
        socket.set_cloexec(true).map_err(|e| format!("socket: {e}"))?;
        let addr = SocketAddr::from((ip, port));
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(format!("connect to {addr}: {e}")),
        }
        let http = request.is_some();
        Ok(NetAttempt {
            probe,
            stream: socket.into(),
            deadline_ms,
            request,
            http,
            connected: false,
            answer: Vec::new(),
            result: None,
        })
    }

    /// What to wait for before calling `advance` (at first: the connection).
    pub fn interest(&self) -> Step {
        if !self.connected || self.request.is_some() {
            Step::WantWrite
        } else {
            Step::WantRead
        }
    }

    /// Moves on after poll said the socket is ready (or hung up).
    pub fn advance(&mut self) -> Step {
        if !self.connected {
            match self.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return Step::Done(false, format!("connect: {e}")),
            }
            // Connected only if the peer address is known (a refused connect reports through it too).
            if let Err(e) = self.stream.peer_addr() {
                return Step::Done(false, format!("connect: {e}"));
            }
            self.connected = true;
            if !self.http {
                return Step::Done(true, String::new());
            }
        }
        if let Some(req) = self.request.take() {
            match self.stream.write(&req) {
                Ok(n) if n == req.len() => {}
                Ok(n) => self.request = Some(req[n..].to_vec()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.request = Some(req),
                Err(e) => return Step::Done(false, format!("send: {e}")),
            }
            return self.interest();
        }
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return status(&self.answer, true),
                Ok(n) => {
                    self.answer.extend_from_slice(&buf[..n]);
                    if let done @ Step::Done(..) = status(&self.answer, false) {
                        return done;
                    }
                    if self.answer.len() > 4096 {
                        return Step::Done(false, "no HTTP status line in the first 4 KiB".into());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::WantRead,
                Err(e) => return Step::Done(false, format!("read: {e}")),
            }
        }
    }
}

/// The verdict of an HTTP answer so far: 2xx and 3xx pass (a redirect is not followed).
fn status(answer: &[u8], eof: bool) -> Step {
    let Some(end) = answer.windows(2).position(|w| w == b"\r\n") else {
        return if eof {
            Step::Done(false, "the connection closed before an HTTP status".into())
        } else {
            Step::WantRead
        };
    };
    let line = String::from_utf8_lossy(&answer[..end]);
    let code = line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if line.starts_with("HTTP/") && (200..400).contains(&c) => Step::Done(true, String::new()),
        Some(c) if line.starts_with("HTTP/") => Step::Done(false, format!("HTTP status {c}")),
        _ => Step::Done(false, format!("not an HTTP answer: {:?}", line.chars().take(60).collect::<String>())),
    }
}

#[cfg(test)]
mod tests;
