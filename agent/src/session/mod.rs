//! The agent's sessions: join if needed, then one session with the leader at a time, reconnecting with
//! backoff until told to stop. One session's rules are `machine.rs` (no I/O); `session` below drives it.

pub mod machine;

use crate::backoff::Backoff;
use crate::config::{AgentConfig, ConfigError};
use crate::join::{self, Credentials, JoinError};
use crate::reconcile::{Handle, Input};
use crate::sysinfo::node_info;
use bramble_proto::codec::MAX_FRAME_LEN;
use bramble_proto::wire::{AgentMsg, ErrorCode, Hello, LeaderMsg, Open, OpenKind, PROTOCOL_VERSION};
use bramble_transport::quic::{client_endpoint, connect_session, read_frame, write_frame};
use bramble_transport::tls::client_config;
use bramble_transport::TransportError;
use machine::{Output, Session, SessionError};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// For this long after a session is lost, the leaders are tried again every
/// [`QUICK_RETRY`] (with jitter) rather than with backoff: a standby takes over within its lease
/// (2 s by default), and a restarted leader serves within milliseconds.
const QUICK_WINDOW: Duration = Duration::from_secs(10);
const QUICK_RETRY: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error("no leader address configured: set `leaders` in the config or pass --leader")]
    NoLeader,
    #[error("cannot resolve leader address {0:?}")]
    Resolve(String),
    #[error("cannot use {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot start the container reconciler: {0}")]
    Workloads(std::io::Error),
    #[error("cannot set up pod networking: {0}")]
    Network(String),
    #[error("cannot run containers: {0}")]
    NoShim(String),
}

async fn resolve(leaders: &[String]) -> Result<Vec<SocketAddr>, AgentError> {
    let mut out = Vec::new();
    for l in leaders {
        let addrs = tokio::net::lookup_host(l.as_str()).await.map_err(|_| AgentError::Resolve(l.clone()))?;
        out.extend(addrs);
    }
    if out.is_empty() {
        return Err(AgentError::NoLeader);
    }
    Ok(out)
}

/// Where the leaders are: those configured, or, with none, those that answer on the LAN for the
/// cluster whose CA has `ca_fingerprint` (mDNS; none found: empty, and the caller tries again).
async fn leaders_of(config: &AgentConfig, ca_fingerprint: &str) -> Result<Vec<SocketAddr>, AgentError> {
    if !config.leaders.is_empty() {
        return resolve(&config.leaders).await;
    }
    let found = crate::discover::leaders(ca_fingerprint, crate::discover::WAIT).await;
    if found.is_empty() {
        warn!("no leader configured and none answered on the LAN (mDNS _bramble._udp): set `leaders` or pass --leader if multicast does not reach it");
    }
    Ok(found)
}

/// The fingerprint of the CA in `ca_pem` (what the board pins once it has joined).
fn ca_fingerprint(ca_pem: &str) -> String {
    bramble_transport::pki::cert_der_from_pem(ca_pem)
        .map(|d| bramble_transport::pki::sha256_hex(&d))
        .unwrap_or_default()
}

/// Reads and bumps the session epoch kept in the data dir, so epochs grow across restarts.
fn next_epoch(dir: &Path) -> Result<u64, AgentError> {
    let path = dir.join("epoch");
    let current = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    let next = current + 1;
    bramble_proto::fsutil::write_file_atomic(&path, next.to_string().as_bytes(), 0o644)
        .map_err(|source| AgentError::Io { path: path.clone(), source })?;
    Ok(next)
}

/// Joins if the board has no certificate yet, then keeps one session with a leader at a time
/// (reconnecting with backoff, trying the other leaders first) until `cancel` fires. `work` is
/// what `crate::wiring` started: the reconciler, and the network thread's channels.
pub async fn serve(
    config: AgentConfig,
    name: String,
    mut work: crate::reconcile::Handle,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    let dir = config.data_dir.clone();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let creds = match join::load(&dir, &name)? {
        Some(c) => c,
        None => {
            let token = join::token_of(&config)?.to_string();
            let pin = token.parse::<bramble_proto::token::JoinToken>().map(|t| t.ca_fingerprint).unwrap_or_default();
            loop {
                let mut addrs: std::collections::VecDeque<SocketAddr> = leaders_of(&config, &pin).await?.into();
                let mut last = None;
                let mut redirects = 0;
                while let Some(addr) = addrs.pop_front() {
                    match join::join(&dir, addr, &token, &name, node_info(&config)).await {
                        Ok(c) => {
                            info!(node = %name, %addr, "joined the cluster");
                            last = Some(Ok(c));
                            break;
                        }
                        // A refusal is final: retrying with the same token will not help.
                        Err(e @ (JoinError::Refused(_) | JoinError::CaMismatch | JoinError::Token(_))) => {
                            return Err(e.into())
                        }
                        Err(e @ JoinError::Transport { .. }) if is_pin_failure(&e) => return Err(e.into()),
                        // A standby: the active leader next (at most a few hops per round).
                        Err(JoinError::Standby { message, active }) => {
                            info!(%addr, "{message}");
                            if let Some(a) = active.filter(|_| redirects < 3) {
                                redirects += 1;
                                if let Ok(found) = resolve(std::slice::from_ref(&a)).await {
                                    found.into_iter().rev().for_each(|f| addrs.push_front(f));
                                }
                            }
                        }
                        Err(e) => {
                            warn!("{e}");
                            last = Some(Err(e));
                        }
                    }
                }
                if let Some(Ok(c)) = last {
                    break c;
                }
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    backoff.reset();
    let mut creds = creds;
    // The leader of the last session: when it ends, the others are tried first (with highly
    // available leaders the one that just went away is the least likely to answer).
    let mut last_leader: Option<SocketAddr> = None;
    // The leader whose established session ended last, and when.
    let mut lost: Option<(SocketAddr, Instant)> = None;
    'rounds: loop {
        let mut addrs: std::collections::VecDeque<SocketAddr> =
            leaders_of(&config, &ca_fingerprint(&creds.ca_pem)).await?.into();
        if let Some(i) = last_leader.and_then(|l| addrs.iter().position(|a| *a == l)) {
            addrs.rotate_left(i + 1);
        }
        let quick = lost.filter(|(_, at)| at.elapsed() < QUICK_WINDOW).map(|(a, _)| a);
        // Just lost and others to try: a dead leader would cost the connect timeout every round
        // (a standby still names it as active until its lease runs out).
        if let Some(gone) = quick.filter(|_| addrs.len() > 1) {
            addrs.retain(|a| *a != gone);
        }
        let mut redirects = 0;
        while let Some(addr) = addrs.pop_front() {
            last_leader = Some(addr);
            let epoch = next_epoch(&dir)?;
            let started = Instant::now();
            let span = tracing::info_span!("session", leader = %addr, epoch);
            let mut established = false;
            let result =
                session(&config, &mut creds, addr, epoch, &cancel, &mut work, &mut established).instrument(span).await;
            if cancel.is_cancelled() {
                return Ok(());
            }
            // (A session that ends as soon as it is up is a leader in trouble: backoff for it.)
            let ended = (established && started.elapsed() >= Duration::from_secs(1)).then(Instant::now);
            // (Said after every attempt: the reconciler counts from the first one that failed.)
            tell_reconciler(&work, Input::Leader { connected: false, fence: None }).await;
            if started.elapsed() >= STABLE_SESSION {
                backoff.reset();
            }
            match result {
                Ok(()) => {}
                // A standby of highly available leaders names the active one: go there now.
                Err(SessionError::Refused { message, active: Some(active), .. }) if redirects < 3 => {
                    info!(leader = %addr, "{message}");
                    redirects += 1;
                    if let Ok(found) = resolve(std::slice::from_ref(&active)).await {
                        // Not back to the leader just lost: the standby names it until it takes over.
                        found.into_iter().rev().filter(|f| quick != Some(*f)).for_each(|f| addrs.push_front(f));
                    }
                }
                Err(SessionError::Refused { code: ErrorCode::Unavailable, message, .. }) => {
                    info!(leader = %addr, "{message}")
                }
                Err(SessionError::Refused { code, message, .. }) => {
                    error!(?code, "session refused: {message}")
                }
                Err(e) => match another_ca(&e.to_string()) {
                    Some(why) => error!(leader = %addr, "{why}"),
                    None => warn!(leader = %addr, "session ended: {e}"),
                },
            }
            // A session that was up ended: a new round at once, the others first.
            if let Some(at) = ended {
                lost = Some((addr, at));
                continue 'rounds;
            }
        }
        let delay = match lost {
            Some((_, at)) if at.elapsed() < QUICK_WINDOW => QUICK_RETRY.mul_f64(0.5 + fastrand::f64()),
            _ => backoff.next_delay(),
        };
        info!("reconnecting in {:.1}s", delay.as_secs_f64());
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Checks a renewed certificate (this node's, for the new key), saves it with its key and uses
/// them from the next connection on. Returns when it expires, for the log.
fn renewed(dir: &Path, creds: &mut Credentials, cert_pem: String, key_pem: String) -> Result<String, String> {
    let der = bramble_transport::pki::cert_der_from_pem(&cert_pem).map_err(|e| e.to_string())?;
    match bramble_transport::pki::identity_of(&der).map_err(|e| e.to_string())? {
        (bramble_transport::Identity::Node(n), _) if n == creds.name => {}
        (other, _) => return Err(format!("it is for {other}, not node:{}", creds.name)),
    }
    let until = bramble_transport::pki::not_after_ms(&der).map_err(|e| e.to_string())?;
    join::save_renewed(dir, &cert_pem, &key_pem).map_err(|e| e.to_string())?;
    creds.cert_pem = cert_pem;
    creds.key_pem = key_pem;
    let left = until.saturating_sub(bramble_proto::time::now_ms()) / 1000;
    Ok(format!("{} from now", bramble_proto::quantity::format_duration(Duration::from_secs(left))))
}

/// A leader whose certificate this board's CA did not sign: said plainly, with the likely cause.
fn another_ca(error: &str) -> Option<String> {
    (error.contains("UnknownIssuer") || error.contains("BadSignature")).then(|| {
        "the leader presents a certificate from another CA than the one this board trusts (ca.crt in \
         its data dir): is it another cluster's leader, or was a backup of another cluster restored \
         there? This board keeps its containers running and tries again; it never trusts another CA"
            .to_string()
    })
}

fn is_pin_failure(e: &JoinError) -> bool {
    e.to_string().contains("does not match the join token")
}

/// Refuses to connect with a certificate that has expired, and says what to do.
fn check_expiry(creds: &Credentials) -> Result<(), SessionError> {
    let Ok(der) = bramble_transport::pki::cert_der_from_pem(&creds.cert_pem) else { return Ok(()) };
    let Ok(not_after) = bramble_transport::pki::not_after_ms(&der) else { return Ok(()) };
    let now = bramble_proto::time::now_ms();
    if now < not_after {
        return Ok(());
    }
    Err(SessionError::Refused {
        active: None,
        code: ErrorCode::Unauthenticated,
        message: format!(
            "this board's certificate expired {} ago and was not renewed in time (was the board off?); \
             join again: remove node.crt from the data dir and start the agent with a new token",
            bramble_proto::quantity::format_duration(Duration::from_secs((now - not_after) / 1000))
        ),
    })
}

/// When two thirds of this board's certificate's life have passed (none: it cannot be read).
fn renew_at(creds: &Credentials) -> Option<u64> {
    let der = bramble_transport::pki::cert_der_from_pem(&creds.cert_pem).ok()?;
    bramble_transport::pki::renew_at_ms(&der).ok()
}

/// The driver of one session: reads frames and timers, hands them to [`Session`] with the time,
/// writes what it says to send and does what it says to do.
async fn session(
    config: &AgentConfig,
    creds: &mut Credentials,
    addr: SocketAddr,
    epoch: u64,
    cancel: &CancellationToken,
    work: &mut Handle,
    established: &mut bool,
) -> Result<(), SessionError> {
    check_expiry(creds)?;
    let tls = client_config(&creds.ca_pem, Some((&creds.cert_pem, &creds.key_pem))).map_err(TransportError::from)?;
    let mut machine = Session::new(work.network.is_some());
    let endpoint = client_endpoint(addr)?;
    let conn = connect_session(&endpoint, addr, tls, CONNECT_TIMEOUT).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(TransportError::from)?;
    // What the board says of itself: at the start, then again when its network breaks or heals.
    let mut problems = work.network_problem.clone();
    let info_now =
        |problems: &mut Option<tokio::sync::watch::Receiver<Option<bramble_proto::model::NetworkProblem>>>| {
            let mut info = node_info(config);
            info.network_problem = problems.as_mut().and_then(|p| p.borrow_and_update().clone());
            info
        };
    let hello = Hello {
        node_name: creds.name.clone(),
        epoch,
        info: info_now(&mut problems),
        features: vec![
            bramble_proto::wire::FEATURE_REGISTRIES.to_string(),
            bramble_proto::wire::FEATURE_LIVENESS.to_string(),
            bramble_proto::wire::FEATURE_PEER_DELTAS.to_string(),
        ],
    };
    // Devices plugged in or out: looked for every `devices.scan_every`, said when they change.
    let mut devices_sent = hello.info.devices.clone();
    let mut device_tick = tokio::time::interval(config.devices.scan_every.0);
    device_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    write_frame(&mut send, &Open { version: PROTOCOL_VERSION, kind: OpenKind::Session(Box::new(hello)) }).await?;
    let welcomed = machine.welcome(read_frame::<LeaderMsg>(&mut recv, MAX_FRAME_LEN).await?)?;
    let heartbeat = welcomed.heartbeat;
    *established = true;
    info!("session established");
    tell_reconciler(work, Input::Leader { connected: true, fence: welcomed.fence }).await;
    // Frames from the leader arrive through a channel so the loop below selects only on
    // cancel-safe operations.
    let (tx, mut rx) = mpsc::channel::<Result<Option<LeaderMsg>, TransportError>>(8);
    let reader = tokio::spawn(async move {
        loop {
            let r = read_frame::<LeaderMsg>(&mut recv, MAX_FRAME_LEN).await;
            let end = !matches!(r, Ok(Some(_)));
            if tx.send(r).await.is_err() || end {
                break;
            }
        }
    });
    // The leader opens streams on this connection: containers' logs, the image store.
    let ctx = std::sync::Arc::new(crate::streams::Context::new(config, work.registries.client()));
    let volumes = crate::volumes::Volumes::new(&config.data_dir);
    let streams = conn.clone();
    // Pulls ask this board's peers through this connection while it lasts.
    *work.peer_slot.lock().expect("peer slot") = Some(conn.clone());
    let log_server = tokio::spawn(async move {
        while let Ok((s, r)) = streams.accept_bi().await {
            tokio::spawn(crate::streams::serve(ctx.clone(), s, r));
        }
    });
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Usage: the board and its running replicas, every interval (memory only).
    let sampler = Arc::new(crate::usage::Sampler::host(&config.data_dir, &config.resources.cgroup_parent));
    let mut usage_tick = tokio::time::interval(config.monitoring.interval.0);
    usage_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status = work.status.clone();
    let mut images = work.images.clone();
    let mut applied = work.network_applied.clone();
    // A leader that sends nothing at all for this long (not even the ACKs of the keep-alives)
    // is gone: the others are tried at once.
    let silent = bramble_transport::quic::silence(&conn, bramble_transport::quic::SESSION_SILENCE);
    tokio::pin!(silent);
    let result: Result<(), SessionError> = loop {
        let mut out = Vec::new();
        if let Some(rx) = applied.as_mut() {
            out.extend(machine.network_applied(*rx.borrow_and_update()));
        }
        // (`changed()` below marks a value seen; the machine compares with what it sent.)
        let list = images.borrow_and_update().clone();
        let now = status.borrow_and_update().clone();
        out.extend(machine.report(&list, &volumes.names(), &now));
        if let Err(e) = send_all(&mut send, &out).await {
            break Err(e);
        }
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            _ = &mut silent => {
                conn.close(quinn::VarInt::from_u32(0), b"the leader fell silent");
                break Err(SessionError::Silent(bramble_transport::quic::SESSION_SILENCE));
            }
            _ = tick.tick() => {
                let out = machine.tick(bramble_proto::time::now_ms(), renew_at(creds), || {
                    bramble_transport::pki::node_csr(&creds.name).map_err(|e| e.to_string())
                });
                if let Err(e) = send_all(&mut send, &out).await {
                    break Err(e);
                }
            }
            _ = status.changed() => {}
            _ = usage_tick.tick() => {
                let running: Vec<String> = status
                    .borrow()
                    .iter()
                    .filter(|(_, s)| s.phase == bramble_proto::model::ReplicaPhase::Running)
                    .map(|(name, _)| name.clone())
                    .collect();
                let s = sampler.clone();
                if let Ok(sample) = tokio::task::spawn_blocking(move || s.sample(&running)).await {
                    if let Err(e) = write_frame(&mut send, &AgentMsg::Usage(sample)).await {
                        break Err(e.into());
                    }
                }
            }
            r = async { applied.as_mut().expect("checked").changed().await }, if applied.is_some() => {
                if r.is_err() {
                    applied = None;
                }
            }
            _ = images.changed() => {}
            _ = device_tick.tick() => {
                let devices = config.devices.clone();
                let Ok(now) = tokio::task::spawn_blocking(move || devices.scan()).await else { continue };
                if now != devices_sent {
                    info!(devices = now.len(), "the board's devices changed");
                    devices_sent = now;
                    if let Err(e) = write_frame(&mut send, &AgentMsg::Info(info_now(&mut problems))).await {
                        break Err(e.into());
                    }
                }
            }
            r = async { problems.as_mut().expect("checked").changed().await }, if problems.is_some() => {
                if r.is_err() {
                    problems = None;
                } else if let Err(e) = write_frame(&mut send, &AgentMsg::Info(info_now(&mut problems))).await {
                    break Err(e.into());
                }
            }
            Some(ev) = work.events.recv() => {
                if let Err(e) = write_frame(&mut send, &AgentMsg::Event(ev)).await {
                    break Err(e.into());
                }
            }
            msg = rx.recv() => match msg {
                Some(Ok(Some(msg))) => match machine.from_leader(msg) {
                    Ok(outputs) => {
                        if let Err(e) = perform(config, creds, work, outputs).await {
                            break Err(e);
                        }
                    }
                    Err(e) => break Err(e),
                },
                Some(Ok(None)) | None => break Err(SessionError::Closed),
                Some(Err(e)) => break Err(e.into()),
            },
        }
    };
    reader.abort();
    log_server.abort();
    *work.peer_slot.lock().expect("peer slot") = None;
    let _ = send.finish();
    conn.close(quinn::VarInt::from_u32(0), b"agent closing session");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}

/// Whether a leader session is up, for the fence of jobs' runs (room waited for off the async
/// threads; a reconciler gone is the agent stopping).
async fn tell_reconciler(work: &Handle, input: Input) {
    let inputs = work.inputs.clone();
    let _ = tokio::task::spawn_blocking(move || inputs.send(input)).await;
}

async fn send_all(send: &mut quinn::SendStream, msgs: &[AgentMsg]) -> Result<(), SessionError> {
    for m in msgs {
        write_frame(send, m).await?;
    }
    Ok(())
}

/// Does what the session says, in order. The reconciler's and the network controller's inputs are
/// bounded: room is waited for off the async threads.
async fn perform(
    config: &AgentConfig,
    creds: &mut Credentials,
    work: &Handle,
    outputs: Vec<Output>,
) -> Result<(), SessionError> {
    for o in outputs {
        match o {
            Output::Desired { full, upsert, remove } => {
                let inputs = work.inputs.clone();
                let sent = tokio::task::spawn_blocking(move || inputs.send(Input::Desired { full, upsert, remove }));
                if !matches!(sent.await, Ok(Ok(()))) {
                    return Err(SessionError::Unexpected);
                }
            }
            Output::Network(input) => {
                let Some(tx) = work.network.clone() else { continue };
                let sent = tokio::task::spawn_blocking(move || tx.send(input).map_err(|_| ()));
                if !matches!(sent.await, Ok(Ok(()))) {
                    return Err(SessionError::Unexpected);
                }
            }
            // Memory, and the tmpfs of replicas that use them (files rewritten in place).
            Output::Secrets { put, drop, full } => {
                let secrets = work.secrets.clone();
                let _ = tokio::task::spawn_blocking(move || secrets.update(put, &drop, full)).await;
            }
            // Rewritten in place; the replicas whose app asks run its reload command.
            Output::Configs { put, drop, full } => {
                let configs = work.configs.clone();
                let changed = tokio::task::spawn_blocking(move || configs.update(put, &drop, full)).await;
                if let Some(changed) = changed.ok().filter(|c| !c.is_empty()) {
                    tell_reconciler(work, Input::ConfigsChanged { changed }).await;
                }
            }
            Output::Registries { put, drop, full } => work.registries.update(put, &drop, full),
            Output::Renewed { cert_pem, key_pem } => match renewed(&config.data_dir, creds, cert_pem, key_pem) {
                Ok(until) => info!("certificate renewed: valid until {until}"),
                Err(e) => warn!("cannot keep the renewed certificate: {e}"),
            },
        }
    }
    Ok(())
}
