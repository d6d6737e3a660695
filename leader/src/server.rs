//! The QUIC server: accepts connections, reads each stream's opening frame and serves calls and
//! agent sessions; watches node readiness.

use crate::api::Api;
use crate::config::LeaderConfig;
use crate::config::StoreBackend;
use crate::events::Events;
use crate::ha::Ha;
use crate::init::Layout;
use crate::nodes::{NodeRegistry, Session};
use crate::objects::Objects;
use crate::sessions::machine::{self, Payload, Versioned};
use crate::store::{EtcdStore, RedbStore, Store, StoreError};
use bramble_proto::codec::MAX_FRAME_LEN;
use bramble_proto::model::Node;
use bramble_proto::time::now_ms;
use bramble_proto::wire::{
    AgentMsg, ApiError, ErrorCode, Hello, LeaderMsg, Open, OpenKind, Request, Response, PROTOCOL_VERSION,
};
use bramble_transport::pki::{identity_of, Ca, PkiError};
use bramble_transport::quic::{read_frame, server_endpoint, write_frame};
use bramble_transport::tls::{server_config, TlsError};
use bramble_transport::{Identity, TransportError};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

/// How long a peer has to send a stream's opening frame.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("{path} is not an initialised leader data dir (no pki/ca.crt); run `bramble-leader init` first")]
    NotInitialised { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Config(String),
}

/// A leader that is serving.
#[derive(Debug)]
pub struct RunningLeader {
    pub local_addr: SocketAddr,
    pub ca_fingerprint: String,
    pub api: Arc<Api>,
    endpoint: Endpoint,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Fires when the leader lost its etcd lease (it must stop: another may be active).
    lost: CancellationToken,
}

impl RunningLeader {
    /// Whether it stopped because it lost its lease.
    pub fn lost_lease(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Stops accepting, closes every connection and waits (at most `deadline`) for tasks to end.
    pub async fn shutdown(self, deadline: Duration) {
        info!("leader shutting down");
        self.cancel.cancel();
        // A clean stop hands over at once instead of after the lease's TTL.
        if let Some(ha) = &self.api.ha {
            if !self.lost.is_cancelled() {
                ha.resign();
            }
        }
        self.endpoint.close(quinn::VarInt::from_u32(0), b"leader shutting down");
        self.tasks.close();
        let drain = async {
            self.tasks.wait().await;
            self.endpoint.wait_idle().await;
        };
        if tokio::time::timeout(deadline, drain).await.is_err() {
            warn!("shutdown deadline of {deadline:?} passed; exiting with work still open");
        }
    }

    pub fn cancelled(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

fn read(path: PathBuf) -> Result<String, LeaderError> {
    std::fs::read_to_string(&path).map_err(|source| LeaderError::Read { path, source })
}

/// Opens the store and PKI of `config.data_dir` and starts serving on `config.listen`.
pub async fn start(config: &LeaderConfig) -> Result<RunningLeader, LeaderError> {
    start_with(config, || {}).await
}

/// Opens the etcd store, retrying (with a word in the log) until etcd answers.
async fn open_etcd(config: &LeaderConfig) -> Arc<EtcdStore> {
    let options = config.store.etcd();
    let mut delay = Duration::from_millis(500);
    loop {
        let o = options.clone();
        match tokio::task::spawn_blocking(move || EtcdStore::open(&o)).await {
            Ok(Ok(s)) => return Arc::new(s),
            Ok(Err(e)) => warn!("{e}; retrying in {:.1}s (boards keep running their containers)", delay.as_secs_f64()),
            Err(e) => warn!("opening the etcd store: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Like [`start`]; with the etcd store, `on_standby` is called once this leader is serving as a
/// standby, and this returns when it has been elected.
pub async fn start_with(config: &LeaderConfig, on_standby: impl FnOnce()) -> Result<RunningLeader, LeaderError> {
    let layout = Layout::new(&config.data_dir);
    if !layout.is_initialised() {
        return Err(LeaderError::NotInitialised { path: config.data_dir.clone() });
    }
    let ca_pem = read(layout.ca_cert())?;
    let ca = Ca::load(&ca_pem, &read(layout.ca_key())?)?;
    // A renewal of the serving certificate a crash interrupted is finished (or forgotten).
    bramble_proto::fsutil::finish_pair(&layout.leader_key(), &layout.leader_cert())
        .map_err(|source| LeaderError::Read { path: layout.leader_cert(), source })?;
    let tls = server_config(&ca_pem, &read(layout.leader_cert())?, &read(layout.leader_key())?)?;
    let endpoint = server_endpoint(config.listen, tls)?;
    let local_addr = endpoint.local_addr().map_err(|source| TransportError::Bind { addr: config.listen, source })?;
    let name = config.store.name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "leader".into())
    });
    let lost = CancellationToken::new();
    let (store, ha): (Arc<dyn Store>, _) = match config.store.backend {
        StoreBackend::Redb => (Arc::new(RedbStore::open(&layout.store())?), None),
        StoreBackend::Etcd => {
            let etcd = open_etcd(config).await;
            // Before standing for election (and without writing): a leader of another cluster
            // must not win it.
            refuse_another_ca(etcd.as_ref(), &ca.fingerprint())?;
            let advertise = config.advertise().to_string();
            let ha = loop {
                match Ha::join(
                    etcd.client(),
                    etcd.runtime(),
                    &config.store.etcd(),
                    &name,
                    &advertise,
                    config.store.lease_ttl.0,
                )
                .await
                {
                    Ok(ha) => break ha,
                    Err(e) => {
                        warn!("{e}; retrying in 1s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            // Until elected: answer `get leaders`, send everyone else to the active leader.
            let standby = CancellationToken::new();
            let standby_tasks = TaskTracker::new();
            standby_tasks.spawn(standby_loop(endpoint.clone(), ha.clone(), standby.clone(), standby_tasks.clone()));
            info!(%local_addr, leader = %name, "standing by: waiting to be elected");
            on_standby();
            let fence = ha.campaign().await?;
            etcd.set_fence(Some(fence));
            standby.cancel();
            standby_tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(2), standby_tasks.wait()).await;
            let l = ha.lost();
            let mine = lost.clone();
            tokio::spawn(async move {
                l.cancelled().await;
                mine.cancel();
            });
            let store: Arc<dyn Store> = etcd;
            (store, Some(ha))
        }
    };
    let events = Arc::new(Events::new());
    let registry = Arc::new(NodeRegistry::new(config.nodes.not_ready_after.0, events.clone()));
    let ca_fingerprint = ca.fingerprint();
    let objects = Objects::new(store);
    check_ca(&objects, &ca_fingerprint)?;
    crate::network::ensure_settings(&objects, &config.network).map_err(|e| LeaderError::Config(e.to_string()))?;
    let keyring = crate::secrets::Keyring::load_or_create(&layout.secrets_key())
        .map_err(|e| LeaderError::Config(e.to_string()))?;
    // The first admin (init's admin.toml) is a user like the others: listed, revocable.
    if let Ok(text) = std::fs::read_to_string(layout.admin_config()) {
        if let Err(e) = crate::users::record_init_admin(&objects, &text, bramble_proto::time::now_ms()) {
            warn!("cannot record the first admin as a user: {e}");
        }
    }
    let mut api = Api::new(objects, ca, registry, events, config.network.clone()).with_keyring(keyring);
    api.node_cert_lifetime = config.pki.node_cert_lifetime.0;
    api.me.name = name;
    api.me.addr = config.advertise().to_string();
    if let Some(ha) = &ha {
        api.me = ha.me();
    } else {
        api.store_path = Some(layout.store());
    }
    api.ha = ha;
    api.data_dir = Some((config.data_dir.clone(), config.cluster_name.clone()));
    let metrics_port = config.metrics.listen.as_deref().and_then(|l| l.parse::<std::net::SocketAddr>().ok());
    api.reserved = Arc::new(crate::api::apps::Reserved::of_leader(
        local_addr.port(),
        metrics_port.map(|m| m.port()),
        Some(&config.data_dir),
    ));
    // Before any session: a restored leader holds back whole sets from the first board on.
    if api.objects.store().get(crate::objects::keys::RESTORED).ok().flatten().is_some() {
        api.restored.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let api = Arc::new(api);
    let cancel = CancellationToken::new();
    {
        // Lost the lease: stop acting at once (fenced writes already fail); systemd starts this
        // leader again as a standby.
        let (lost, cancel) = (lost.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = lost.cancelled() => {
                    tracing::error!("lost the leader lease: stopping, so that another leader acts alone");
                    cancel.cancel();
                }
                _ = cancel.cancelled() => {}
            }
        });
    }
    let tasks = TaskTracker::new();
    tasks.spawn(accept_loop(endpoint.clone(), api.clone(), config.nodes.heartbeat.0, cancel.clone(), tasks.clone()));
    tasks.spawn(monitor_nodes(api.clone(), cancel.clone()));
    tasks.spawn(crate::controllers::autoscaler::run(api.clone(), cancel.clone()));
    tasks.spawn(crate::backup::schedule(api.clone(), config.backup.clone(), cancel.clone()));
    tasks.spawn(crate::backup::release_when_all_seen(api.clone(), cancel.clone()));
    if let Some(listen) = config.metrics.listen.clone() {
        let token = config.metrics.token_file.as_ref().and_then(|f| match std::fs::read_to_string(f) {
            Ok(t) => t.lines().next().map(|l| l.trim().to_string()).filter(|t| !t.is_empty()),
            Err(e) => {
                warn!("metrics: cannot read the token file {}: {e}; the dashboard shows no details", f.display());
                None
            }
        });
        tasks.spawn(crate::metrics::serve(api.clone(), listen, config.cluster_name.clone(), token, cancel.clone()));
    }
    let renewal =
        OwnCert { layout: layout.clone(), ca_pem: ca_pem.clone(), lifetime: config.pki.leader_cert_lifetime.0 };
    tasks.spawn(renew_own_certificate(endpoint.clone(), api.clone(), renewal, cancel.clone()));
    tasks.spawn(crate::controllers::run::run(Arc::new(api.context()), api.published.clone(), cancel.clone()));
    info!(%local_addr, ca = %ca_fingerprint, "leader serving");
    Ok(RunningLeader { local_addr, ca_fingerprint, api, endpoint, cancel, tasks, lost })
}

/// Refuses a store that holds a cluster of another CA (boards would not trust this leader; a
/// second leader on the wrong etcd prefix). Reads only.
fn refuse_another_ca(store: &dyn Store, fingerprint: &str) -> Result<(), LeaderError> {
    match store.get(crate::objects::keys::CA)? {
        Some(kv) if kv.value != fingerprint.as_bytes() => Err(LeaderError::Config(format!(
            "the store holds the cluster of another CA ({}…) than this leader's ({}…); is this the right store (etcd prefix)?",
            String::from_utf8_lossy(&kv.value).chars().take(16).collect::<String>(),
            &fingerprint[..16]
        ))),
        _ => Ok(()),
    }
}

/// [`refuse_another_ca`], then records the fingerprint in a store that has none yet.
fn check_ca(objects: &Objects, fingerprint: &str) -> Result<(), LeaderError> {
    let store = objects.store();
    refuse_another_ca(store.as_ref(), fingerprint)?;
    if store.get(crate::objects::keys::CA)?.is_some() {
        return Ok(());
    }
    match store.put(crate::objects::keys::CA, fingerprint.as_bytes(), crate::store::Expect::Absent) {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A standby's server: every connection gets `get leaders` answered and everything else (calls,
/// sessions, joins) refused with the active leader's address. Its connections close when this
/// leader is elected, so their peers come back to the active server.
async fn standby_loop(endpoint: Endpoint, ha: Arc<Ha>, cancel: CancellationToken, tasks: TaskTracker) {
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let (ha, cancel, t) = (ha.clone(), cancel.clone(), tasks.clone());
        tasks.spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let identity = peer_identity(&conn);
            loop {
                let (send, recv) = tokio::select! {
                    _ = cancel.cancelled() => {
                        conn.close(quinn::VarInt::from_u32(0), b"this leader was elected; connect again");
                        return;
                    }
                    s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
                };
                t.spawn(standby_stream(ha.clone(), identity.is_some(), send, recv));
            }
        });
    }
}

async fn standby_stream(ha: Arc<Ha>, identified: bool, mut send: SendStream, mut recv: RecvStream) {
    let Ok(Ok(Some(open))) = tokio::time::timeout(OPEN_TIMEOUT, read_frame::<Open>(&mut recv, MAX_FRAME_LEN)).await
    else {
        return;
    };
    let refusal = ApiError::not_active(&ha.me().name, ha.active().as_ref());
    let sent = match open.kind {
        OpenKind::Call(Request::GetLeaders) if identified => {
            write_frame(&mut send, &Response::Leaders(ha.leaders())).await
        }
        OpenKind::Call(_) => write_frame(&mut send, &Response::Error(refusal)).await,
        OpenKind::Session(_) => write_frame(&mut send, &LeaderMsg::Refused(refusal)).await,
    };
    if sent.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

async fn accept_loop(
    endpoint: Endpoint,
    api: Arc<Api>,
    heartbeat: Duration,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let connections = bramble_proto::limit::Limiter::new(MAX_CONNECTIONS_PER_PEER, MAX_CONNECTIONS);
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let remote = incoming.remote_address();
        // Connections per address and in all are capped (each holds memory and a task); a board
        // holds one, a CLI one a command.
        let Some(slot) = connections.take(remote.ip()) else {
            debug!(%remote, "too many connections; refused");
            incoming.refuse();
            continue;
        };
        let span = tracing::info_span!("conn", %remote);
        let serve = serve_connection(incoming, api.clone(), heartbeat, tasks.clone());
        tasks.spawn(
            async move {
                serve.await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Connections one address may hold at once, and all together.
pub const MAX_CONNECTIONS_PER_PEER: usize = 32;
pub const MAX_CONNECTIONS: usize = 1024;
/// Before a peer has shown a certificate it may only join: its opening frame is read up to this.
pub const MAX_UNAUTHENTICATED_FRAME: usize = 64 << 10;

async fn serve_connection(incoming: quinn::Incoming, api: Arc<Api>, heartbeat: Duration, tasks: TaskTracker) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            debug!("handshake failed: {e}");
            return;
        }
    };
    let identity = peer_identity(&conn);
    debug!(identity = ?identity, "connected");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tasks.spawn(
                    serve_stream(conn.clone(), identity.clone(), api.clone(), heartbeat, send, recv).in_current_span(),
                );
            }
            Err(e) => {
                debug!("connection ended: {e}");
                break;
            }
        }
    }
}

/// What renewing the leader's serving certificate needs.
struct OwnCert {
    layout: Layout,
    ca_pem: String,
    lifetime: Duration,
}

impl OwnCert {
    /// Renews the serving certificate if two thirds of its life have passed (or it lives longer
    /// than configured): a new key and certificate for the same names, saved as a pair, swapped
    /// into the running endpoint (connections already open keep theirs). Returns how long until
    /// the next look.
    fn check(&self, endpoint: &quinn::Endpoint, api: &Api) -> Result<Duration, String> {
        use bramble_transport::pki::{cert_der_from_pem, renew_at_ms, subject_alt_names, validity_ms};
        let pem = std::fs::read_to_string(self.layout.leader_cert()).map_err(|e| e.to_string())?;
        let der = cert_der_from_pem(&pem).map_err(|e| e.to_string())?;
        let (nb, na) = validity_ms(&der).map_err(|e| e.to_string())?;
        let mut renew_at = renew_at_ms(&der).map_err(|e| e.to_string())?;
        let lifetime_ms = self.lifetime.as_millis() as u64;
        let now = now_ms();
        // Longer than configured (plus the backdating for skewed clocks): shortened by the admin.
        let too_long = na.saturating_sub(nb) > lifetime_ms + lifetime_ms / 4 + 60_000;
        if now >= renew_at || too_long {
            let names: Vec<String> = subject_alt_names(&der)
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|n| n != bramble_proto::wire::LEADER_SERVER_NAME && n != "localhost")
                .collect();
            let issued = api.ca.issue_leader_for(&names, self.lifetime).map_err(|e| e.to_string())?;
            let tls = server_config(&self.ca_pem, &issued.cert_pem, &issued.key_pem).map_err(|e| e.to_string())?;
            let quic = bramble_transport::quic::quic_server_config(tls).map_err(|e| e.to_string())?;
            bramble_proto::fsutil::replace_pair(
                (&self.layout.leader_key(), issued.key_pem.as_bytes(), 0o600),
                (&self.layout.leader_cert(), issued.cert_pem.as_bytes(), 0o644),
            )
            .map_err(|e| format!("saving the renewed certificate: {e}"))?;
            endpoint.set_server_config(Some(quic));
            let new = cert_der_from_pem(&issued.cert_pem).map_err(|e| e.to_string())?;
            renew_at = renew_at_ms(&new).map_err(|e| e.to_string())?;
            info!(
                "serving certificate renewed (valid for {})",
                bramble_proto::quantity::format_duration(self.lifetime)
            );
        }
        let wait = renew_at.saturating_sub(now_ms());
        Ok(Duration::from_millis(wait).clamp(Duration::from_secs(1), Duration::from_secs(3600)))
    }
}

/// Keeps the leader's serving certificate fresh.
async fn renew_own_certificate(endpoint: quinn::Endpoint, api: Arc<Api>, own: OwnCert, cancel: CancellationToken) {
    loop {
        let wait = match own.check(&endpoint, &api) {
            Ok(wait) => wait,
            Err(e) => {
                warn!("cannot renew the serving certificate (trying again in a minute): {e}");
                Duration::from_secs(60)
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// When the peer's certificate expires, if it sent one.
fn peer_not_after(conn: &Connection) -> Option<u64> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    bramble_transport::pki::not_after_ms(certs.first()?).ok()
}

/// The identity and key fingerprint from the peer's verified certificate, if it sent one.
fn peer_identity(conn: &Connection) -> Option<(Identity, String)> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    match identity_of(certs.first()?) {
        Ok(id) => Some(id),
        Err(e) => {
            warn!("peer certificate has no usable identity: {e}");
            None
        }
    }
}

async fn serve_stream(
    conn: Connection,
    identity: Option<(Identity, String)>,
    api: Arc<Api>,
    heartbeat: Duration,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    // Without a certificate only a join is taken, and its frame is small: nothing larger is read
    // (or decoded) from a stranger.
    let limit = if identity.is_some() { MAX_FRAME_LEN } else { MAX_UNAUTHENTICATED_FRAME };
    let open = match tokio::time::timeout(OPEN_TIMEOUT, read_frame::<Open>(&mut recv, limit)).await {
        Ok(Ok(Some(open))) => open,
        Ok(Ok(None)) => return,
        // (A stranger's junk is not worth a line in the journal each time.)
        Ok(Err(e)) => {
            if identity.is_some() {
                warn!("refusing stream: {e}");
            } else {
                debug!("refusing a stream without a certificate: {e}");
            }
            let _ = send.reset(quinn::VarInt::from_u32(2));
            return;
        }
        Err(_) => {
            debug!("refusing stream: no opening frame within {OPEN_TIMEOUT:?}");
            let _ = send.reset(quinn::VarInt::from_u32(2));
            return;
        }
    };
    // The revocation list, on every stream of every connection: a hash lookup.
    if let Some(why) = identity.as_ref().and_then(|(id, fp)| api.revoked.refusal(id, fp)) {
        warn!("refused: {why}");
        let _ = write_frame(&mut send, &Response::Error(ApiError::new(ErrorCode::Unauthenticated, why))).await;
        let _ = send.finish();
        return;
    }
    let version_error = (open.version != PROTOCOL_VERSION).then(|| {
        ApiError::new(
            ErrorCode::VersionMismatch,
            format!(
                "protocol version {} is not supported; this leader speaks version {PROTOCOL_VERSION}",
                open.version
            ),
        )
    });
    match open.kind {
        OpenKind::Call(
            req @ (Request::Logs(_) | Request::Image { .. } | Request::Exec(_) | Request::Volume { .. }),
        ) if version_error.is_none() => {
            if let Err(e) = crate::api::authorize(identity.as_ref().map(|(i, _)| i), crate::api::required_role(&req)) {
                let _ = write_frame(&mut send, &Response::Error(e.into())).await;
                let _ = send.finish();
                return;
            }
            match req {
                Request::Logs(req) => crate::relay::serve(api, req, send, recv).await,
                Request::Image { node, op } => crate::relay::image(api, node, op, send, recv).await,
                Request::Exec(req) => crate::relay::exec(api, req, send, recv).await,
                Request::Volume { node, op } => crate::relay::volume(api, node, op, send).await,
                _ => unreachable!("matched above"),
            }
        }
        OpenKind::Call(request) => {
            let response = match version_error {
                Some(e) => Response::Error(e),
                None => {
                    let api = api.clone();
                    let id = identity.map(|(id, _)| id);
                    tokio::task::spawn_blocking(move || api.handle(id.as_ref(), request)).await.unwrap_or_else(|e| {
                        Response::Error(ApiError::new(ErrorCode::Internal, format!("request failed: {e}")))
                    })
                }
            };
            if let Response::Error(e) = &response {
                debug!(code = ?e.code, "request refused: {}", e.message);
            }
            if write_frame(&mut send, &response).await.is_ok() {
                let _ = send.finish();
                let _ = send.stopped().await;
            }
        }
        OpenKind::Session(hello) => {
            if let Some(e) = version_error {
                let _ = write_frame(&mut send, &LeaderMsg::Refused(e)).await;
                let _ = send.finish();
                return;
            }
            let span = tracing::info_span!("session", node = %hello.node_name, epoch = hello.epoch);
            session(conn, identity, api, heartbeat, hello, send, recv).instrument(span).await;
        }
    }
}

async fn refuse(send: &mut SendStream, e: ApiError) {
    warn!("session refused: {}", e.message);
    let _ = write_frame(send, &LeaderMsg::Refused(e)).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

async fn session(
    conn: Connection,
    identity: Option<(Identity, String)>,
    api: Arc<Api>,
    heartbeat: Duration,
    hello: Hello,
    mut send: SendStream,
    recv: RecvStream,
) {
    let name = hello.node_name.clone();
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
        let node = a.objects.load::<Node>(&n).map_err(|_| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("node {n:?} is not registered with this leader; join again with a token"),
            )
        })?;
        // The key before the last renewal is still good (the board may not have saved the new one).
        if node.value.key_fingerprint != key_fp && node.value.old_key_fingerprint.as_deref() != Some(key_fp.as_str()) {
            return Err(ApiError::new(ErrorCode::PermissionDenied, format!("node {n:?} is bound to another key")));
        }
        a.set_node_info(&n, info, address, cert_expires).map_err(ApiError::from)
    })
    .await;
    match checked {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return refuse(&mut send, e).await,
        Err(e) => return refuse(&mut send, ApiError::new(ErrorCode::Internal, e.to_string())).await,
    }
    let registry = api.registry.clone();
    let epoch = hello.epoch;
    let address = conn.remote_address().to_string();
    let s = Session { epoch, address, connection: Some(conn.clone()) };
    if let Err(stale) = registry.connect(&name, s, Instant::now(), now_ms()) {
        return refuse(&mut send, ApiError::new(ErrorCode::Conflict, stale.to_string())).await;
    }
    info!("session started");
    api.published.kick.notify_one();
    let welcome = LeaderMsg::Welcome { epoch, heartbeat_ms: heartbeat.as_millis() as u64 };
    let reason = match write_frame(&mut send, &welcome).await {
        Err(e) => e.to_string(),
        Ok(()) => serve_session(&api, &name, epoch, send, recv).await,
    };
    info!("session ended: {reason}");
    registry.disconnect(&name, epoch, &reason, now_ms());
    api.drain.forget_node(&name);
    api.published.kick.notify_one();
}

/// The body of a session: the network and the node's desired set down (all first, then deltas),
/// reports up.
async fn serve_session(api: &Arc<Api>, name: &str, epoch: u64, mut send: SendStream, mut recv: RecvStream) -> String {
    let registry = api.registry.clone();
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
    // What this board is sent, and in which order: `sessions::machine`.
    let mut machine = Some(machine::Session::new(name));
    let reason = loop {
        let view = network.borrow_and_update().clone();
        // Nothing of the set before the replica controller's first pass.
        let set = desired.borrow_and_update().as_ref().map(|d| d.get(name).cloned().unwrap_or_default());
        let restoring = api.restored.load(std::sync::atomic::Ordering::Relaxed);
        let mut m = machine.take().expect("the session's machine is back after each poll");
        let msgs = if m.reads_store(set.as_ref()) {
            // Secrets and configs come from the store (etcd may be across the network).
            let a = api.clone();
            let polled = tokio::task::spawn_blocking(move || {
                let msgs = m.poll(view.as_deref(), set, restoring, |kind, n| load(&a, kind, n));
                (m, msgs)
            })
            .await;
            match polled {
                Ok((m, msgs)) => {
                    machine = Some(m);
                    msgs
                }
                Err(e) => break format!("the session's step failed: {e}"),
            }
        } else {
            let msgs = m.poll(view.as_deref(), set, restoring, |_, _| Ok(None));
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
            break e;
        }
        tokio::select! {
            r = desired.changed() => if r.is_err() { break "the leader is stopping".to_string() },
            r = network.changed() => if r.is_err() { break "the leader is stopping".to_string() },
            r = secrets.changed() => match r {
                Ok(()) => machine.as_mut().expect("back").payloads_changed(),
                Err(_) => break "the leader is stopping".to_string(),
            },
            msg = rx.recv() => match msg {
                Some(Ok(Some(msg))) => {
                    // Only the current session speaks for the node (fencing by epoch).
                    if !registry.heartbeat(name, epoch, Instant::now(), now_ms()) {
                        break "a newer session replaced this one".to_string();
                    }
                    if let AgentMsg::Renew { csr_pem } = msg {
                        let a = api.clone();
                        let n = name.to_string();
                        let signed = tokio::task::spawn_blocking(move || a.renew_node(&n, &csr_pem)).await;
                        let reply = match signed {
                            Ok(Ok(cert)) => LeaderMsg::Renewed { cert_pem: Some(cert), error: None },
                            Ok(Err(e)) => LeaderMsg::Renewed { cert_pem: None, error: Some(e.to_string()) },
                            Err(e) => LeaderMsg::Renewed { cert_pem: None, error: Some(e.to_string()) },
                        };
                        if let LeaderMsg::Renewed { error: Some(e), .. } = &reply {
                            warn!("certificate renewal refused: {e}");
                        }
                        if let Err(e) = write_frame(&mut send, &reply).await {
                            break e.to_string();
                        }
                        continue;
                    }
                    handle_agent_msg(api, name, msg).await;
                }
                Some(Ok(None)) | None => break "the agent ended the session".to_string(),
                Some(Err(e)) => break e.to_string(),
            },
        }
    };
    reader.abort();
    reason
}

/// `name`'s current version and files, if it exists (a secret opened from its sealed form).
fn load(api: &Api, kind: Payload, name: &str) -> Result<Option<Versioned>, String> {
    match kind {
        Payload::Secrets => {
            let Some(v) = api.objects.get::<crate::secrets::StoredSecret>(name).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let values = api.keyring.open(name, &v.value.sealed).map_err(|e| e.to_string())?;
            Ok(Some((v.value.version, values)))
        }
        Payload::Configs => {
            let Some(v) = api.objects.get::<bramble_proto::model::Config>(name).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let files = v.value.spec.files.into_iter().map(|(k, s)| (k, s.into_bytes())).collect();
            Ok(Some((v.value.meta.generation, files)))
        }
    }
}

async fn handle_agent_msg(api: &Arc<Api>, name: &str, msg: AgentMsg) {
    let (a, n) = (api.clone(), name.to_string());
    let kick = tokio::task::spawn_blocking(move || absorb(&a, &n, msg, now_ms())).await;
    if kick.unwrap_or(false) {
        api.published.kick.notify_one();
    }
}

/// What board `name`'s message changes on the leader (the store, memory); true when the
/// controller should look again at once. Everything a board says is checked here, where it lands
/// (`leader/fuzz/fuzz_targets/agent_messages.rs` sends it anything).
pub fn absorb(api: &Api, name: &str, msg: AgentMsg, now: u64) -> bool {
    match msg {
        AgentMsg::Heartbeat { .. } | AgentMsg::Renew { .. } => false, // (Renew: the session loop answers it)
        AgentMsg::Info(info) => {
            if let Err(e) = api.set_node_info(name, info, None, None) {
                warn!("cannot record node info: {e}");
            }
            false
        }
        AgentMsg::Status { replicas, .. } => crate::reports::statuses(&api.context(), name, replicas, now),
        AgentMsg::Images(list) => {
            crate::reports::images(&api.context(), name, list);
            false
        }
        AgentMsg::Volumes(list) => {
            api.observed.set_node_volumes(name, list);
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
            api.drain.applied(name, version);
            // A replica may now be drained: look at once.
            true
        }
        AgentMsg::Event(e) => {
            crate::reports::event(&api.context(), name, e);
            false
        }
    }
}

/// Marks nodes NotReady when they fall silent; reads the store, never writes it.
async fn monitor_nodes(api: Arc<Api>, cancel: CancellationToken) {
    let period = (api.registry.grace() / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let a = api.clone();
        let names = tokio::task::spawn_blocking(move || a.objects.list::<Node>()).await;
        match names {
            Ok(Ok(nodes)) => {
                api.registry.check(nodes.into_iter().map(|n| n.value.meta.name), Instant::now(), now_ms());
            }
            Ok(Err(e)) => warn!("cannot list nodes: {e}"),
            Err(e) => warn!("node monitor: {e}"),
        }
    }
}
