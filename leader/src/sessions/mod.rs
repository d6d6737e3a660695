//! A board's session on the leader. `machine.rs` holds one session's rules without I/O — what
//! the board is sent and in which order — with unit tests; [`session`] is its driver (frames,
//! watches, the store reads the machine asks for off the async threads), and [`absorb`] is what
//! each message from the board changes. `crate::edge` hands it the session's stream.

pub mod machine;
pub mod reports;

use crate::boards::nodes::Session;
use bramble_proto::codec::MAX_FRAME_LEN;
use bramble_proto::model::Node;
use bramble_proto::registry_auth::Credentials;
use bramble_proto::time::now_ms;
use bramble_proto::wire::{AgentMsg, ApiError, ErrorCode, Hello, LeaderMsg};
use bramble_transport::quic::{read_frame, write_frame};
use bramble_transport::Identity;
use machine::{Payload, Versioned};
use quinn::{Connection, RecvStream, SendStream};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// What a board's session uses: the controllers' context (the store, readiness, what boards
/// report, events, the network, drains), what the replica controller publishes, the restore
/// hold-back, the key that opens secrets, usage, and the CA that signs renewals.
#[derive(Debug, Clone)]
pub struct Handles {
    pub ctx: crate::controllers::Context,
    pub published: Arc<crate::controllers::Published>,
    pub restored: Arc<std::sync::atomic::AtomicBool>,
    pub keyring: Arc<crate::trust::secrets::Keyring>,
    pub usage: Arc<crate::boards::usage::Usage>,
    pub ca: Arc<bramble_transport::pki::Ca>,
    /// How long renewed board certificates live.
    pub node_cert_lifetime: Duration,
}

fn peer_not_after(conn: &Connection) -> Option<u64> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    bramble_transport::pki::not_after_ms(certs.first()?).ok()
}

async fn refuse(send: &mut SendStream, e: ApiError) {
    warn!("session refused: {}", e.message);
    let _ = write_frame(send, &LeaderMsg::Refused(e)).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

pub(crate) async fn session(
    conn: Connection,
    identity: Option<(Identity, String)>,
    api: Arc<Handles>,
    heartbeat: Duration,
    hello: Hello,
    mut send: SendStream,
    recv: RecvStream,
) {
    let name = hello.node_name.clone();
    let says = |feature: &str| hello.features.iter().any(|f| f == feature);
    let keeps_alive = says(bramble_proto::wire::FEATURE_LIVENESS);
    // What this board is sent, and in which order: `sessions::machine`.
    let mut machine = machine::Session::new(&name);
    if !says(bramble_proto::wire::FEATURE_REGISTRIES) {
        machine = machine.without_registries();
    }
    if !says(bramble_proto::wire::FEATURE_PEER_DELTAS) {
        machine = machine.without_peer_deltas();
    }
    let key_fp = match identity {
        Some((Identity::Node(n), fp)) if n == name => fp,
        Some((id, _)) => {
            let msg = format!("the certificate is for {id}, but the session says node:{name}");
            return refuse(&mut send, ApiError::new(ErrorCode::PermissionDenied, msg)).await;
        }
        None => {
            let msg = "a node certificate is required for a session; join with a token first";
            return refuse(&mut send, ApiError::new(ErrorCode::Unauthenticated, msg)).await;
        }
    };
    let info = hello.info.clone();
    let a = api.clone();
    let n = name.clone();
    let cert_expires = peer_not_after(&conn);
    let seen = match conn.remote_address().ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    };
    // An agent on the leader's own board comes over loopback: other boards reach it at the
    // address it reports instead.
    let reported = || hello.info.addresses.iter().find_map(|a| a.parse::<std::net::Ipv4Addr>().ok());
    let address = seen.filter(|ip| !ip.is_loopback()).or_else(reported).or(seen);
    let checked = tokio::task::spawn_blocking(move || {
        let node = a.ctx.objects.load::<Node>(&n).map_err(|_| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("node {n:?} is not registered with this leader; join again with a token"),
            )
        })?;
        // The key before the last renewal is still good (the board may not have saved the new one).
        if node.value.key_fingerprint != key_fp && node.value.old_key_fingerprint.as_deref() != Some(key_fp.as_str()) {
            return Err(ApiError::new(ErrorCode::PermissionDenied, format!("node {n:?} is bound to another key")));
        }
        reports::node_info(&a.ctx.objects, &a.ctx.events, &a.published.kick, &n, info, address, cert_expires)
            .map_err(ApiError::from)
    })
    .await;
    match checked {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return refuse(&mut send, e).await,
        Err(e) => return refuse(&mut send, ApiError::new(ErrorCode::Internal, e.to_string())).await,
    }
    let registry = api.ctx.registry.clone();
    let epoch = hello.epoch;
    let address = conn.remote_address().to_string();
    let s = Session { epoch, address, connection: Some(conn.clone()) };
    if let Err(stale) = registry.connect(&name, s, Instant::now(), now_ms()) {
        return refuse(&mut send, ApiError::new(ErrorCode::Conflict, stale.to_string())).await;
    }
    info!("session started");
    api.published.kick.notify_one();
    // Cut off from us for as long as we wait before calling the board NotReady, it stops its
    // jobs' runs: the planner replaces a lost run only once that has surely happened.
    let fence_ms = registry.grace().as_millis() as u64;
    let welcome = LeaderMsg::Welcome { epoch, heartbeat_ms: heartbeat.as_millis() as u64, fence_ms };
    let ended = match write_frame(&mut send, &welcome).await {
        Err(e) => Ended::Closed(e.to_string()),
        Ok(()) => {
            let watched = keeps_alive.then(|| conn.clone());
            serve_session(&api, &name, epoch, (machine, watched), send, recv).await
        }
    };
    let reason = ended.reason();
    info!("session ended: {reason}");
    // Timed out or fell silent: the board (or its link) went quiet, as opposed to closing the
    // session.
    let lost = matches!(ended, Ended::Silent) || matches!(conn.close_reason(), Some(quinn::ConnectionError::TimedOut));
    registry.disconnect(&name, epoch, &reason, lost, Instant::now(), now_ms());
    api.ctx.drain.forget_node(&name);
    api.published.kick.notify_one();
}

/// How a session ended.
#[derive(Debug)]
enum Ended {
    /// Nothing heard from the board for `SESSION_SILENCE`: a loss (it counts for damping).
    Silent,
    /// Closed, refused or replaced, for this reason.
    Closed(String),
}

impl Ended {
    /// What the node's events and the log say.
    fn reason(&self) -> String {
        match self {
            Ended::Silent => {
                let silence = bramble_proto::quantity::format_duration(bramble_transport::quic::SESSION_SILENCE);
                format!("nothing heard from the board for {silence}")
            }
            Ended::Closed(reason) => reason.clone(),
        }
    }
}

/// The body of a session: the network and the node's desired set down (all first, then deltas),
/// reports up.
async fn serve_session(
    api: &Arc<Handles>,
    name: &str,
    epoch: u64,
    (machine, watched): (machine::Session, Option<quinn::Connection>),
    mut send: SendStream,
    mut recv: RecvStream,
) -> Ended {
    let registry = api.ctx.registry.clone();
    // A board that keeps alive every 500 ms and is not heard for 2 s is gone (its link, or the
    // board): the session ends, and its grace period starts.
    let silent = async {
        match &watched {
            Some(c) => bramble_transport::quic::silence(c, bramble_transport::quic::SESSION_SILENCE).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(silent);
    // Frames arrive through a channel so that the loop selects only on cancel-safe futures.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let reader = tokio::spawn(async move {
        loop {
            let r = read_frame::<AgentMsg>(&mut recv, MAX_FRAME_LEN).await;
            let end = !matches!(r, Ok(Some(_)));
            if tx.send(r).await.is_err() || end {
                break;
            }
        }
    });
    let mut desired = api.published.desired.subscribe();
    let mut network = api.published.network.subscribe();
    let mut secrets = api.published.secrets.subscribe();
    let mut machine = Some(machine);
    // Whether what the board is sent may have changed since the last poll: a published change, or
    // a restore starting or ending. A board's own messages (a heartbeat every 2 s, usage) change
    // nothing it is sent, and polling after each of them cost the leader O(boards) per message
    // (the board's network view has a peer per board): a sixth of its CPU at 250 boards.
    let (mut dirty, mut polled_restoring) = (true, None);
    let reason = loop {
        let restoring = api.restored.load(std::sync::atomic::Ordering::Relaxed);
        if dirty || polled_restoring != Some(restoring) {
            dirty = false;
            polled_restoring = Some(restoring);
            let view = network.borrow_and_update().clone();
            // Nothing of the set before the replica controller's first pass.
            let set = desired.borrow_and_update().as_ref().map(|d| d.get(name).cloned().unwrap_or_default());
            let mut m = machine.take().expect("the session's machine is back after each poll");
            let msgs = if m.reads_store(set.as_ref()) {
                // Secrets and configs come from the store (etcd may be across the network).
                let a = api.clone();
                let polled = tokio::task::spawn_blocking(move || {
                    let msgs = m.poll(view.as_ref(), set, restoring, |kind, n| load(&a, kind, n));
                    (m, msgs)
                })
                .await;
                match polled {
                    Ok((m, msgs)) => {
                        machine = Some(m);
                        msgs
                    }
                    Err(e) => break Ended::Closed(format!("the session's step failed: {e}")),
                }
            } else {
                let msgs = m.poll(view.as_ref(), set, restoring, |_, _| Ok(None));
                machine = Some(m);
                msgs
            };
            let mut failed = None;
            for msg in &msgs {
                if let Err(e) = write_frame(&mut send, msg).await {
                    failed = Some(e.to_string());
                    break;
                }
            }
            if let Some(e) = failed {
                break Ended::Closed(e);
            }
        }
        tokio::select! {
            _ = &mut silent => {
                if let Some(c) = &watched {
                    c.close(quinn::VarInt::from_u32(0), b"the board fell silent");
                }
                break Ended::Silent;
            }
            r = desired.changed() => match r {
                Ok(()) => dirty = true,
                Err(_) => break Ended::Closed("the leader is stopping".to_string()),
            },
            r = network.changed() => match r {
                Ok(()) => dirty = true,
                Err(_) => break Ended::Closed("the leader is stopping".to_string()),
            },
            r = secrets.changed() => match r {
                Ok(()) => {
                    machine.as_mut().expect("back").payloads_changed();
                    dirty = true;
                }
                Err(_) => break Ended::Closed("the leader is stopping".to_string()),
            },
            msg = rx.recv() => match msg {
                Some(Ok(Some(msg))) => {
                    // Only the current session speaks for the node (fencing by epoch).
                    if !registry.heartbeat(name, epoch, Instant::now(), now_ms()) {
                        break Ended::Closed("a newer session replaced this one".to_string());
                    }
                    if let AgentMsg::Renew { csr_pem } = msg {
                        let a = api.clone();
                        let n = name.to_string();
                        let signed = tokio::task::spawn_blocking(move || {
                            renew(&a.ca, &a.ctx.objects, &a.ctx.events, a.node_cert_lifetime, &n, &csr_pem, now_ms())
                        })
                        .await;
                        let reply = match signed {
                            Ok(Ok(cert)) => LeaderMsg::Renewed { cert_pem: Some(cert), error: None },
                            Ok(Err(e)) => LeaderMsg::Renewed { cert_pem: None, error: Some(e.to_string()) },
                            Err(e) => LeaderMsg::Renewed { cert_pem: None, error: Some(e.to_string()) },
                        };
                        if let LeaderMsg::Renewed { error: Some(e), .. } = &reply {
                            warn!("certificate renewal refused: {e}");
                        }
                        if let Err(e) = write_frame(&mut send, &reply).await {
                            break Ended::Closed(e.to_string());
                        }
                        continue;
                    }
                    handle_agent_msg(api, name, msg).await;
                }
                Some(Ok(None)) | None => break Ended::Closed("the agent ended the session".to_string()),
                Some(Err(e)) => break Ended::Closed(e.to_string()),
            },
        }
    };
    reader.abort();
    reason
}

/// `name`'s current version and files, if it exists (a secret opened from its sealed form).
fn load(api: &Handles, kind: Payload, name: &str) -> Result<Option<Versioned>, String> {
    match kind {
        Payload::Secrets => {
            let Some(v) =
                api.ctx.objects.get::<crate::trust::secrets::StoredSecret>(name).map_err(|e| e.to_string())?
            else {
                return Ok(None);
            };
            let values = api.keyring.open(name, &v.value.sealed).map_err(|e| e.to_string())?;
            Ok(Some((v.value.version, values)))
        }
        Payload::Configs => {
            let Some(v) = api.ctx.objects.get::<bramble_proto::model::Config>(name).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let files = v.value.spec.files.into_iter().map(|(k, s)| (k, s.into_bytes())).collect();
            Ok(Some((v.value.meta.generation, files)))
        }
        Payload::Registries => registry_payload(&api.ctx.objects, &api.keyring, name),
    }
}

/// The settings and credentials boards use for registry `host` (its `[[registry]]`, with its
/// secret opened, and its mirrors' own), as a payload's version and values; none without one.
pub fn registry_payload(
    objects: &crate::objects::Objects,
    keyring: &crate::trust::secrets::Keyring,
    host: &str,
) -> Result<Option<Versioned>, String> {
    let registries: Vec<bramble_proto::model::Registry> =
        objects.list().map_err(|e| e.to_string())?.into_iter().map(|v| v.value).collect();
    let credentials = |r: &bramble_proto::manifest::RegistrySpec| -> Result<Option<Credentials>, String> {
        let Some(secret) = &r.secret else { return Ok(None) };
        let Some(v) = objects.get::<crate::trust::secrets::StoredSecret>(secret.as_str()).map_err(|e| e.to_string())?
        else {
            warn!(registry = %r.name, "secret {secret} does not exist: boards pull from {} without credentials", r.host);
            return Ok(None);
        };
        let values = keyring.open(secret.as_str(), &v.value.sealed).map_err(|e| e.to_string())?;
        match bramble_proto::registry_auth::from_secret(&r.host, &values) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                warn!(registry = %r.name, "secret {secret} gives no credentials for {}: {e}", r.host);
                Ok(None)
            }
        }
    };
    let Some(r) = registries.iter().find(|r| r.spec.host == host) else { return Ok(None) };
    let mut values = registry_values(&r.spec, credentials(&r.spec)?.as_ref(), "");
    for m in &r.spec.mirrors {
        if let Some(mr) = registries.iter().find(|x| &x.spec.host == m) {
            values.extend(registry_values(&mr.spec, credentials(&mr.spec)?.as_ref(), &format!("mirror/{m}/")));
        }
    }
    Ok(Some((version_of(&values), values)))
}

/// A registry's settings as a board's payload values, under `prefix` (see `LeaderMsg::Registries`).
fn registry_values(
    r: &bramble_proto::manifest::RegistrySpec,
    credentials: Option<&Credentials>,
    prefix: &str,
) -> BTreeMap<String, Vec<u8>> {
    let mut v = BTreeMap::new();
    let mut put = |k: &str, value: &str| {
        v.insert(format!("{prefix}{k}"), value.as_bytes().to_vec());
    };
    if r.insecure {
        put("insecure", "true");
    }
    if prefix.is_empty() && !r.mirrors.is_empty() {
        put("mirrors", &r.mirrors.join(","));
    }
    match credentials {
        Some(Credentials::Basic { username, password }) => {
            put("username", username);
            put("password", password);
        }
        Some(Credentials::Token(t)) => put("token", t),
        None => {}
    }
    v
}

/// A version that changes when the values do (FNV-1a over keys and values).
fn version_of(values: &BTreeMap<String, Vec<u8>>) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for (k, v) in values {
        for b in k.as_bytes().iter().chain([0u8].iter()).chain(v).chain([0u8].iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

async fn handle_agent_msg(api: &Arc<Handles>, name: &str, msg: AgentMsg) {
    if matches!(msg, AgentMsg::Heartbeat { .. }) {
        return; // (the session loop noted it: nothing for a blocking thread to do)
    }
    let (a, n) = (api.clone(), name.to_string());
    let kick = tokio::task::spawn_blocking(move || absorb(&a, &n, msg, now_ms())).await;
    if kick.unwrap_or(false) {
        api.published.kick.notify_one();
    }
}

/// What board `name`'s message changes on the leader (the store, memory); true when the
/// controller should look again at once. Everything a board says is checked here, where it lands
/// (`leader/fuzz/fuzz_targets/agent_messages.rs` sends it anything).
pub fn absorb(api: &Handles, name: &str, msg: AgentMsg, now: u64) -> bool {
    match msg {
        AgentMsg::Heartbeat { .. } | AgentMsg::Renew { .. } => false, // (Renew: the session loop answers it)
        AgentMsg::Info(info) => {
            if let Err(e) =
                reports::node_info(&api.ctx.objects, &api.ctx.events, &api.published.kick, name, info, None, None)
            {
                warn!("cannot record node info: {e}");
            }
            false
        }
        AgentMsg::Status { replicas, .. } => reports::statuses(&api.ctx, name, replicas, now),
        AgentMsg::Images(list) => {
            reports::images(&api.ctx, name, list);
            false
        }
        AgentMsg::Volumes(list) => {
            api.ctx.observed.set_node_volumes(name, list);
            false
        }
        AgentMsg::Usage(sample) => {
            let desired = api.published.desired.borrow().clone();
            let set = desired.as_ref().and_then(|d| d.get(name));
            let bound_here = |r: &str| set.and_then(|s| s.get(r)).map(|a| a.app.clone());
            for w in api.usage.record(name, sample, now, bound_here) {
                debug!("{w}");
            }
            false
        }
        AgentMsg::NetworkApplied { version } => {
            api.ctx.drain.applied(name, version);
            // A replica may now be drained: look at once.
            true
        }
        AgentMsg::Event(e) => {
            reports::event(&api.ctx, name, e);
            false
        }
    }
}

/// Signs board `name`'s renewal `csr_pem` for `lifetime` and records the new key (the old one
/// stays good until its certificate expires) and expiry; returns the certificate.
pub fn renew(
    ca: &bramble_transport::pki::Ca,
    objects: &crate::objects::Objects,
    events: &crate::events::Events,
    lifetime: Duration,
    name: &str,
    csr_pem: &str,
    now: u64,
) -> crate::error::Result<String> {
    use crate::error::Error;
    let (cert_pem, key_fp) =
        ca.sign_node_csr_for(csr_pem, name, lifetime).map_err(|e| Error::Invalid(format!("renewal refused: {e}")))?;
    let der = bramble_transport::pki::cert_der_from_pem(&cert_pem).map_err(|e| Error::Internal(e.to_string()))?;
    let expires = bramble_transport::pki::not_after_ms(&der).map_err(|e| Error::Internal(e.to_string()))?;
    objects.update::<Node>(name, |node| {
        if node.key_fingerprint != key_fp {
            node.old_key_fingerprint = Some(std::mem::replace(&mut node.key_fingerprint, key_fp.clone()));
        }
        node.cert_expires_ms = Some(expires);
        Ok(true)
    })?;
    let left = bramble_proto::quantity::format_duration(Duration::from_secs(expires.saturating_sub(now) / 1000));
    events.node(
        name,
        bramble_proto::model::EventReason::CertificateRenewed,
        format!("certificate renewed, valid for {left}"),
        now,
    );
    Ok(cert_pem)
}
