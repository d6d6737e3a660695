//! Finding the config, reaching a leader, making calls.

use bramble_proto::codec::MAX_FRAME_LEN;
use bramble_proto::wire::{ApiError, ErrorCode, Open, OpenKind, Request, Response, PROTOCOL_VERSION};
use bramble_transport::admin::AdminConfig;
use bramble_transport::quic::{call, client_endpoint, connect, read_frame, rejection, write_frame};
use bramble_transport::tls::client_config;
use bramble_transport::TransportError;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::error::CliError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one leader has to answer before the next in the config is tried as well.
const STAGGER: Duration = Duration::from_millis(300);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub fn config_path(flag: Option<PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(p) = flag {
        return Ok(p);
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| CliError::Config("no --config, BRAMBLE_CONFIG or HOME to find the config".into()))?;
    Ok(PathBuf::from(home).join(".config/bramble/config.toml"))
}

/// The CLI config (`--config`, `BRAMBLE_CONFIG` or `~/.config/bramble/config.toml`) and its path.
pub fn load_config(config: Option<PathBuf>) -> Result<(AdminConfig, PathBuf), CliError> {
    let path = config_path(config)?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CliError::Config(format!(
            "cannot read the CLI config {}: {e} (pass --config, set BRAMBLE_CONFIG, or copy a leader's admin.toml there)",
            path.display()
        ))
    })?;
    // A list of contexts: the chosen one's credentials.
    let (text, path) = match crate::contexts::resolve(&path, &text)? {
        None => (text, path),
        Some(file) => {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                CliError::Config(format!("cannot read {} (a context of {}): {e}", file.display(), path.display()))
            })?;
            (text, file)
        }
    };
    let cfg = AdminConfig::parse(&path.display().to_string(), &text).map_err(|e| CliError::Config(e.to_string()))?;
    Ok((cfg, path))
}

/// Refuses a config whose certificate has expired, saying so (the leader's TLS would only say
/// "handshake failed").
fn check_expiry(cfg: &AdminConfig, path: &std::path::Path) -> Result<(), CliError> {
    let der = bramble_transport::pki::cert_der_from_pem(&cfg.cert)
        .map_err(|e| CliError::Config(format!("{}: {e}", path.display())))?;
    let Ok(not_after) = bramble_transport::pki::not_after_ms(&der) else { return Ok(()) };
    let now = bramble_proto::time::now_ms();
    if now >= not_after {
        let who = bramble_transport::pki::identity_of(&der).map(|(id, _)| id.to_string()).unwrap_or_default();
        return Err(CliError::Api(ApiError::new(
            ErrorCode::Unauthenticated,
            format!(
                "the certificate in {} ({who}) expired {} ago; ask an admin for a new one (`bramble user create`)",
                path.display(),
                bramble_proto::quantity::format_duration(Duration::from_secs((now - not_after) / 1000))
            ),
        )));
    }
    Ok(())
}

/// Loads the config and connects to the first leader that answers.
async fn connect_any(config: Option<PathBuf>) -> Result<(quinn::Endpoint, quinn::Connection, String), CliError> {
    connect_to(config, None).await
}

/// Connects to `only` (the active leader a standby named), or else to the first leader of the
/// config that answers.
async fn connect_to(
    config: Option<PathBuf>,
    only: Option<&str>,
) -> Result<(quinn::Endpoint, quinn::Connection, String), CliError> {
    let (cfg, path) = load_config(config)?;
    check_expiry(&cfg, &path)?;
    let tls = client_config(&cfg.ca, Some((&cfg.cert, &cfg.key)))
        .map_err(|e| CliError::Config(format!("{}: {e}", path.display())))?;
    let mut failures = Vec::new();
    let leaders = match only {
        Some(l) => vec![l.to_string()],
        None => cfg.leaders.clone(),
    };
    let mut targets = Vec::new();
    for leader in &leaders {
        match tokio::net::lookup_host(leader.as_str()).await {
            Ok(a) => targets.extend(a.map(|addr| (leader.clone(), addr))),
            Err(e) => failures.push(format!("{leader}: {e}")),
        }
    }
    // In the config's order, the next one starting if the one before has not answered within
    // STAGGER: a dead leader first in the list (highly available leaders) costs a moment, not
    // the whole connect timeout.
    let mut attempts = tokio::task::JoinSet::new();
    for (i, (leader, addr)) in targets.into_iter().enumerate() {
        let endpoint = client_endpoint(addr).map_err(|e| CliError::Other(e.to_string()))?;
        let tls = tls.clone();
        attempts.spawn(async move {
            tokio::time::sleep(STAGGER * i as u32).await;
            let r = connect(&endpoint, addr, tls, CONNECT_TIMEOUT).await;
            (endpoint, leader, r)
        });
    }
    let mut refused = None;
    while let Some(done) = attempts.join_next().await {
        let Ok((endpoint, leader, r)) = done else { continue };
        match r {
            Ok(c) => return Ok((endpoint, c, leader)),
            Err(e) if e.is_unreachable() => failures.push(explain(&leader, &e)),
            Err(e) => refused = refused.or(Some(explain(&leader, &e))),
        }
    }
    if let Some(r) = refused {
        return Err(CliError::Other(r));
    }
    Err(CliError::Unreachable(format!("cannot reach a leader: {}", failures.join("; "))))
}

/// Loads the config and sends one request to the first leader that answers (and, if that is a
/// standby of highly available leaders, once more to the active one it names).
pub async fn request(config: Option<PathBuf>, req: Request) -> Result<Response, CliError> {
    match request_at(config.clone(), None, req.clone()).await {
        Err(CliError::Api(ApiError { leader: Some(active), .. })) => request_at(config, Some(&active), req).await,
        other => other,
    }
}

async fn request_at(config: Option<PathBuf>, only: Option<&str>, req: Request) -> Result<Response, CliError> {
    let (endpoint, conn, leader) = connect_to(config, only).await?;
    let result = call(&conn, req, CALL_TIMEOUT).await;
    conn.close(quinn::VarInt::from_u32(0), b"done");
    endpoint.wait_idle().await;
    match result {
        Ok(Response::Error(e)) => Err(CliError::Api(e)),
        Ok(r) => Ok(r),
        Err(e) => Err(CliError::Other(format!("{leader}: {e}"))),
    }
}

/// Sends a request whose answer is a stream of frames ended by `Done` (or an error); `each` gets
/// every other frame as it comes.
pub async fn stream(
    config: Option<PathBuf>,
    req: Request,
    mut each: impl FnMut(Response) -> Result<(), CliError>,
) -> Result<(), CliError> {
    match stream_at(config.clone(), None, req.clone(), &mut each).await {
        Err(CliError::Api(ApiError { leader: Some(active), .. })) => stream_at(config, Some(&active), req, each).await,
        other => other,
    }
}

async fn stream_at(
    config: Option<PathBuf>,
    only: Option<&str>,
    req: Request,
    mut each: impl FnMut(Response) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let (endpoint, conn, leader) = connect_to(config, only).await?;
    let result = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| CliError::Other(format!("{leader}: {e}")))?;
        let open = Open { version: PROTOCOL_VERSION, kind: OpenKind::Call(req) };
        write_frame(&mut send, &open).await.map_err(|e| CliError::Other(format!("{leader}: {e}")))?;
        loop {
            match read_frame::<Response>(&mut recv, MAX_FRAME_LEN).await {
                Ok(Some(Response::Done(_))) => return Ok(()),
                Ok(Some(Response::Error(e))) => return Err(CliError::Api(e)),
                Ok(Some(r)) => each(r)?,
                Ok(None) => return Err(CliError::Other(format!("{leader}: the stream ended early"))),
                Err(e) => return Err(CliError::Other(format!("{leader}: {}", rejection(&conn).unwrap_or(e)))),
            }
        }
    }
    .await;
    conn.close(quinn::VarInt::from_u32(0), b"done");
    endpoint.wait_idle().await;
    result
}

/// An open call stream for requests that talk both ways (exec): the endpoint and connection
/// (to close when done), the stream's two halves, and the leader's address.
pub struct Duplex {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub leader: String,
}

/// Opens a call stream with `req` as its first frame, and leaves the rest to the caller.
pub async fn duplex(config: Option<PathBuf>, req: Request) -> Result<Duplex, CliError> {
    let (endpoint, conn, leader) = connect_any(config).await?;
    let other = |e: String| CliError::Other(format!("{leader}: {e}"));
    let (mut send, recv) = conn.open_bi().await.map_err(|e| other(e.to_string()))?;
    let open = Open { version: PROTOCOL_VERSION, kind: OpenKind::Call(req) };
    write_frame(&mut send, &open).await.map_err(|e| other(e.to_string()))?;
    Ok(Duplex { endpoint, conn, send, recv, leader })
}

/// Sends a request followed by the raw bytes of `body` on the same stream, then waits for one
/// response. `sent` is told how many bytes went out so far.
pub async fn upload(
    config: Option<PathBuf>,
    req: Request,
    mut body: impl tokio::io::AsyncRead + Unpin,
    mut sent: impl FnMut(u64),
) -> Result<Response, CliError> {
    let (endpoint, conn, leader) = connect_any(config).await?;
    let result = async {
        let other = |e: String| CliError::Other(format!("{leader}: {e}"));
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| other(e.to_string()))?;
        let open = Open { version: PROTOCOL_VERSION, kind: OpenKind::Call(req) };
        write_frame(&mut send, &open).await.map_err(|e| other(e.to_string()))?;
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut body, &mut buf)
                .await
                .map_err(|e| CliError::Other(format!("reading the archive: {e}")))?;
            if n == 0 {
                break;
            }
            send.write_all(&buf[..n]).await.map_err(|e| other(e.to_string()))?;
            total += n as u64;
            sent(total);
        }
        send.finish().map_err(|e| other(e.to_string()))?;
        match read_frame::<Response>(&mut recv, MAX_FRAME_LEN).await {
            Ok(Some(Response::Error(e))) => Err(CliError::Api(e)),
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(other("no answer".into())),
            Err(e) => Err(other(rejection(&conn).unwrap_or(e).to_string())),
        }
    }
    .await;
    conn.close(quinn::VarInt::from_u32(0), b"done");
    endpoint.wait_idle().await;
    result
}

fn explain(leader: &str, e: &TransportError) -> String {
    let text = e.to_string();
    if text.contains("handshake") || text.contains("certificate") {
        format!("{leader}: TLS handshake failed ({text}); is this config for this cluster?")
    } else {
        format!("{leader}: {text}")
    }
}

pub fn unexpected(r: &Response) -> CliError {
    CliError::Other(format!("unexpected answer from the leader: {}", serde_json::to_string(r).unwrap_or_default()))
}
