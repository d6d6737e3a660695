//! quinn endpoints and framed streams.

use crate::tls::TlsError;
use bramble_proto::codec::{self, CodecError, MAX_FRAME_LEN};
use bramble_proto::wire::{Open, OpenKind, Request, Response, LEADER_SERVER_NAME, PROTOCOL_VERSION};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ClientConfig, Connection, Endpoint, RecvStream, SendStream, ServerConfig, TransportConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often an idle connection sends a keep-alive (a few bytes; nothing is written to disk).
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// How long a silent connection lives (QUIC's idle timeout, handshakes included; an established
/// board session gives up sooner: [`SESSION_SILENCE`]): four lost keep-alives in a row.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// How often a board's session sends a keep-alive when nothing else went out: about 60 bytes
/// each way (a PING and its ACK), ~240 bytes/s per board at most.
pub const SESSION_KEEP_ALIVE: Duration = Duration::from_millis(500);
/// How long an established board session may go without a single datagram arriving before
/// either end gives it up ([`silence`]: four keep-alives in a row lost): a dead leader is
/// noticed by its boards, and a cut board by its leader, within 2 s. (Not QUIC's idle timeout,
/// which stays [`IDLE_TIMEOUT`]: a handshake with a leader busy with hundreds of boards at once
/// may take longer than this.)
pub const SESSION_SILENCE: Duration = Duration::from_secs(2);

/// Resolves once `conn` has received no datagram for `silent` (or has closed). Looks at the
/// connection's counters four times per `silent`.
pub async fn silence(conn: &Connection, silent: Duration) {
    let step = silent / 4;
    let mut seen = conn.stats().udp_rx.datagrams;
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(step).await;
        if conn.close_reason().is_some() {
            return;
        }
        let now = conn.stats().udp_rx.datagrams;
        if now != seen {
            (seen, heard) = (now, tokio::time::Instant::now());
        } else if heard.elapsed() >= silent {
            return;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot open a QUIC endpoint on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: quinn::ConnectError },
    #[error("connection to {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: quinn::ConnectionError },
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("cannot send: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("cannot receive: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("bad frame from peer: {0}")]
    Codec(#[from] CodecError),
    #[error("the peer closed the stream without answering")]
    NoResponse,
    #[error("{0}")]
    Rejected(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl TransportError {
    /// Whether the error means the leader could not be reached at all (as opposed to a refusal).
    pub fn is_unreachable(&self) -> bool {
        match self {
            TransportError::Timeout(_) | TransportError::Bind { .. } | TransportError::Connect { .. } => true,
            TransportError::Handshake { source, .. } => matches!(
                source,
                quinn::ConnectionError::TimedOut
                    | quinn::ConnectionError::Reset
                    | quinn::ConnectionError::LocallyClosed
            ),
            _ => false,
        }
    }
}

fn transport_config(keep_alive: Duration, idle_timeout: Duration) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive));
    t.max_idle_timeout(Some(idle_timeout.try_into().expect("idle timeout fits")));
    // Small boards, few streams: keep buffers modest.
    t.max_concurrent_bidi_streams(64u32.into());
    t.max_concurrent_uni_streams(16u32.into());
    t.stream_receive_window((1u32 << 20).into());
    t.receive_window((4u32 << 20).into());
    t.send_window(4 << 20);
    Arc::new(t)
}

/// A server endpoint (the leader).
pub fn server_endpoint(addr: SocketAddr, tls: rustls::ServerConfig) -> Result<Endpoint, TransportError> {
    Endpoint::server(quic_server_config(tls)?, addr).map_err(|source| TransportError::Bind { addr, source })
}

/// The QUIC server config for `tls` (what [`Endpoint::set_server_config`] takes to swap the
/// certificate of a running endpoint).
pub fn quic_server_config(tls: rustls::ServerConfig) -> Result<ServerConfig, TransportError> {
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut cfg = ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = Arc::try_unwrap(transport_config(KEEP_ALIVE, IDLE_TIMEOUT)).expect("just made");
    // One datagram per send: quinn keeps a send buffer in each connection as large as one
    // segmentation-offload batch (10 × the path MTU, ~14.5 KB), so 500 boards held ~7 MB of
    // buffers for what is mostly ACKs and small messages. A leader sends little in bulk.
    transport.enable_segmentation_offload(false);
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// A client endpoint bound to an ephemeral port of the right address family.
pub fn client_endpoint(peer: SocketAddr) -> Result<Endpoint, TransportError> {
    let bind: SocketAddr =
        if peer.is_ipv6() { "[::]:0".parse().expect("addr") } else { "0.0.0.0:0".parse().expect("addr") };
    client_endpoint_at(bind)
}

/// A client endpoint bound to `bind` (a source address of its own: many simulated boards on one
/// machine, each from its own loopback address, as real boards each have theirs).
pub fn client_endpoint_at(bind: SocketAddr) -> Result<Endpoint, TransportError> {
    Endpoint::client(bind).map_err(|source| TransportError::Bind { addr: bind, source })
}

/// Connects to the leader at `addr`, verifying it by [`LEADER_SERVER_NAME`].
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    timeout: Duration,
) -> Result<Connection, TransportError> {
    connect_with(endpoint, addr, tls, timeout, KEEP_ALIVE, IDLE_TIMEOUT).await
}

/// Connects a board's session to the leader at `addr`: as [`connect`], with the session's
/// keep-alive ([`SESSION_KEEP_ALIVE`]), so that both ends hear something at least that often.
pub async fn connect_session(
    endpoint: &Endpoint,
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    timeout: Duration,
) -> Result<Connection, TransportError> {
    connect_with(endpoint, addr, tls, timeout, SESSION_KEEP_ALIVE, IDLE_TIMEOUT).await
}

async fn connect_with(
    endpoint: &Endpoint,
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    timeout: Duration,
    keep_alive: Duration,
    idle_timeout: Duration,
) -> Result<Connection, TransportError> {
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut cfg = ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport_config(keep_alive, idle_timeout));
    let connecting = endpoint
        .connect_with(cfg, addr, LEADER_SERVER_NAME)
        .map_err(|source| TransportError::Connect { addr, source })?;
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(TransportError::Handshake { addr, source }),
        Err(_) => Err(TransportError::Timeout(timeout)),
    }
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), TransportError> {
    let frame = codec::encode(msg, MAX_FRAME_LEN)?;
    send.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame; `None` when the peer finished the stream cleanly between frames.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream, max: usize) -> Result<Option<T>, TransportError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => return Err(CodecError::Truncated(n).into()),
        Err(e) => return Err(e.into()),
    }
    let len = codec::frame_len(prefix, max)?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(n) => TransportError::Codec(CodecError::Truncated(4 + n)),
        e => e.into(),
    })?;
    Ok(Some(codec::decode(&payload)?))
}

/// Sends one request on a new stream and waits for its response.
pub async fn call(conn: &Connection, request: Request, timeout: Duration) -> Result<Response, TransportError> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &Open { version: PROTOCOL_VERSION, kind: OpenKind::Call(request) }).await?;
        send.finish()?;
        read_frame::<Response>(&mut recv, MAX_FRAME_LEN).await?.ok_or(TransportError::NoResponse)
    };
    let result = tokio::time::timeout(timeout, exchange).await.map_err(|_| TransportError::Timeout(timeout))?;
    // With TLS 1.3 the server checks our certificate after the client has finished its side of
    // the handshake, so a refusal shows up as a closed connection: say why.
    result.map_err(|e| rejection(conn).unwrap_or(e))
}

/// Why the peer closed `conn` during the TLS handshake, in words, if it did.
pub fn rejection(conn: &Connection) -> Option<TransportError> {
    let quinn::ConnectionError::ConnectionClosed(close) = conn.close_reason()? else { return None };
    let code = u64::from(close.error_code);
    if !(0x100..0x200).contains(&code) {
        return None;
    }
    let alert = code - 0x100;
    let what = match alert {
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "certificate revoked",
        45 => "certificate expired",
        46 => "certificate unknown",
        48 => "certificate from an unknown CA (not this cluster's)",
        51 => "a signature did not verify (a certificate from another cluster?)",
        116 => "a certificate is required",
        120 => "no common application protocol (not a Bramble peer?)",
        _ => "handshake failure",
    };
    Some(TransportError::Rejected(format!("the peer rejected the TLS handshake: {what} (alert {alert})")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;
    use crate::tls;

    #[tokio::test]
    async fn a_board_session_is_kept_alive_by_the_board_alone_and_neither_end_falls_silent_while_idle() {
        let ca = Ca::generate("test").unwrap();
        let leader = ca.issue_leader(&[]).unwrap();
        let server = tls::server_config(ca.cert_pem(), &leader.cert_pem, &leader.key_pem).unwrap();
        let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), server).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let admin = ca.issue_admin("admin").unwrap();
        let client = tls::client_config(ca.cert_pem(), Some((&admin.cert_pem, &admin.key_pem))).unwrap();
        let board = client_endpoint(addr).unwrap();
        let accepted = tokio::spawn({
            let e = endpoint.clone();
            async move { e.accept().await.expect("a connection").await.expect("a handshake") }
        });
        let conn = connect_session(&board, addr, client, Duration::from_secs(5)).await.unwrap();
        let at_leader = accepted.await.unwrap();
        // (Each end probes the path's MTU with PINGs of its own first.)
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (board_before, leader_before) = (conn.stats().frame_tx, at_leader.stats().frame_tx);
        // Nothing but keep-alives for longer than either end waits before giving a session up.
        tokio::select! {
            _ = silence(&conn, SESSION_SILENCE) => panic!("the board heard nothing from the leader"),
            _ = silence(&at_leader, SESSION_SILENCE) => panic!("the leader heard nothing from the board"),
            _ = tokio::time::sleep(SESSION_SILENCE + Duration::from_secs(1)) => {}
        }
        let (board_sent, leader_sent) = (conn.stats().frame_tx, at_leader.stats().frame_tx);
        let pings = board_sent.ping - board_before.ping;
        assert!(pings >= 4, "the board keeps alive every 500 ms: {pings} PINGs in 3 s");
        // (Every datagram received restarts the leader's own keep-alive timer: it never fires.)
        assert_eq!(leader_sent.ping - leader_before.ping, 0, "the leader adds no keep-alives of its own");
        assert!(leader_sent.acks > leader_before.acks, "its ACKs are what the board hears");
        assert!(conn.close_reason().is_none() && at_leader.close_reason().is_none());
    }
}
