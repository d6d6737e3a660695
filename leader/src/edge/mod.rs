//! The QUIC edge: accepts connections, reads each stream's opening frame and serves API calls,
//! relays and agent sessions (`crate::sessions`); a standby's edge; the serving certificate's
//! renewal. Started by `crate::wiring`.

pub mod peers;
pub mod relay;

use crate::api::Api;
use crate::ha::Ha;
use crate::init::Layout;
use bramble_proto::codec::MAX_FRAME_LEN;
use bramble_proto::time::now_ms;
use bramble_proto::wire::{ApiError, ErrorCode, LeaderMsg, Open, OpenKind, Request, Response, PROTOCOL_VERSION};
use bramble_transport::pki::identity_of;
use bramble_transport::quic::{read_frame, write_frame};
use bramble_transport::tls::server_config;
use bramble_transport::Identity;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

/// How long a peer has to send a stream's opening frame.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A standby's server: every connection gets `get leaders` answered and everything else (calls,
/// sessions, joins) refused with the active leader's address. Its connections close when this
/// leader is elected, so their peers come back to the active server.
pub(crate) async fn standby_loop(endpoint: Endpoint, ha: Arc<Ha>, cancel: CancellationToken, tasks: TaskTracker) {
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
        OpenKind::Peer(_) => write_frame(&mut send, &bramble_proto::wire::PeerReply::NotHere).await,
    };
    if sent.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

/// What the QUIC edge serves with: API calls, relays to boards, sessions (shared by every
/// connection and stream through one `Arc`).
#[derive(Debug, Clone)]
pub(crate) struct Edge {
    pub(crate) api: Arc<Api>,
    pub(crate) relay: crate::edge::relay::Handles,
    pub(crate) sessions: Arc<crate::sessions::Handles>,
    /// How often boards send a heartbeat (told in the welcome).
    pub(crate) heartbeat: Duration,
}

pub(crate) async fn accept_loop(endpoint: Endpoint, edge: Arc<Edge>, cancel: CancellationToken, tasks: TaskTracker) {
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
        let serve = serve_connection(incoming, edge.clone(), tasks.clone());
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

async fn serve_connection(incoming: quinn::Incoming, edge: Arc<Edge>, tasks: TaskTracker) {
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
                tasks.spawn(serve_stream(conn.clone(), identity.clone(), edge.clone(), send, recv).in_current_span());
            }
            Err(e) => {
                debug!("connection ended: {e}");
                break;
            }
        }
    }
}

/// What renewing the leader's serving certificate needs.
pub(crate) struct OwnCert {
    pub(crate) layout: Layout,
    pub(crate) ca_pem: String,
    pub(crate) lifetime: Duration,
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
pub(crate) async fn renew_own_certificate(
    endpoint: quinn::Endpoint,
    api: Arc<Api>,
    own: OwnCert,
    cancel: CancellationToken,
) {
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
    edge: Arc<Edge>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let api = &edge.api;
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
            req @ (Request::Logs(_)
            | Request::Image { .. }
            | Request::Exec(_)
            | Request::Volume { .. }
            | Request::Prefetch { .. }),
        ) if version_error.is_none() => {
            if let Err(e) = crate::api::authorize(identity.as_ref().map(|(i, _)| i), crate::api::required_role(&req)) {
                let _ = write_frame(&mut send, &Response::Error(e.into())).await;
                let _ = send.finish();
                return;
            }
            match req {
                Request::Logs(req) => crate::edge::relay::serve(edge.relay.clone(), req, send, recv).await,
                Request::Image { node, op } => {
                    crate::edge::relay::image(edge.relay.clone(), node, op, send, recv).await
                }
                Request::Exec(req) => crate::edge::relay::exec(edge.relay.clone(), req, send, recv).await,
                Request::Volume { node, op } => crate::edge::relay::volume(edge.relay.clone(), node, op, send).await,
                Request::Prefetch { image, nodes } => {
                    crate::edge::relay::prefetch(edge.relay.clone(), image, nodes, send).await
                }
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
        OpenKind::Peer(req) => match (&identity, version_error) {
            (Some((Identity::Node(name), _)), None) => {
                crate::edge::peers::serve(edge.relay.clone(), name.clone(), req, send).await
            }
            _ => {
                let reason = "only boards of this cluster ask for peers' content".to_string();
                let _ = write_frame(&mut send, &bramble_proto::wire::PeerReply::Refused { reason }).await;
                let _ = send.finish();
            }
        },
        OpenKind::Session(hello) => {
            if let Some(e) = version_error {
                let _ = write_frame(&mut send, &LeaderMsg::Refused(e)).await;
                let _ = send.finish();
                return;
            }
            let span = tracing::info_span!("session", node = %hello.node_name, epoch = hello.epoch);
            crate::sessions::session(conn, identity, edge.sessions.clone(), edge.heartbeat, *hello, send, recv)
                .instrument(span)
                .await;
        }
    }
}
