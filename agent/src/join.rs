//! The agent's identity: joining once with a token, then the certificate in the data dir.

use crate::config::AgentConfig;
use bramble_proto::fsutil::write_file_atomic;
use bramble_proto::model::NodeInfo;
use bramble_proto::token::JoinToken;
use bramble_proto::wire::{Request, Response};
use bramble_transport::pki::{cert_der_from_pem, identity_of, node_csr, sha256_hex};
use bramble_transport::quic::{call, client_endpoint, connect};
use bramble_transport::tls::pinned_client_config;
use bramble_transport::{Identity, TransportError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("this agent has not joined a cluster yet: give it a join token (--token or `token` in the config; create one with `bramble token create`)")]
    NoToken,
    #[error(transparent)]
    Token(#[from] bramble_proto::token::TokenError),
    #[error("join via {addr} failed: {source}")]
    Transport { addr: SocketAddr, source: TransportError },
    #[error("the leader refused to join: {0}")]
    Refused(String),
    /// A standby leader answered; `active` is where the active one is, if there is one.
    #[error("{message}")]
    Standby { message: String, active: Option<String> },
    #[error("the leader answered the join with something unexpected")]
    Unexpected,
    #[error("the CA the leader sent does not match the join token's fingerprint")]
    CaMismatch,
    #[error("the data dir {dir} belongs to node {found:?}, but this agent is configured as {configured:?}; use the same name or another data dir")]
    NameMismatch { dir: PathBuf, found: String, configured: String },
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the identity in {path} is unusable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The node's credentials, as kept in its data dir.
#[derive(Clone)]
pub struct Credentials {
    pub name: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("name", &self.name).finish_non_exhaustive()
    }
}

struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn files(dir: &Path) -> Files {
    Files { ca: dir.join("ca.crt"), cert: dir.join("node.crt"), key: dir.join("node.key") }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JoinError + '_ {
    move |source| JoinError::Io { path: path.to_path_buf(), source }
}

fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), JoinError> {
    write_file_atomic(path, contents.as_bytes(), mode).map_err(io(path))
}

/// Saves a renewed certificate and its new key so that a crash at any point leaves a matching
/// pair ([`load`] finishes a swap a crash interrupted).
pub fn save_renewed(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), JoinError> {
    let f = files(dir);
    bramble_proto::fsutil::replace_pair((&f.key, key_pem.as_bytes(), 0o600), (&f.cert, cert_pem.as_bytes(), 0o644))
        .map_err(io(&f.cert))
}

/// Finishes (or forgets) a renewal a crash interrupted.
fn finish_renewal(dir: &Path) -> Result<(), JoinError> {
    let f = files(dir);
    bramble_proto::fsutil::finish_pair(&f.key, &f.cert).map_err(io(&f.cert))
}

/// Loads the credentials from `dir`, if the agent has joined.
pub fn load(dir: &Path, configured_name: &str) -> Result<Option<Credentials>, JoinError> {
    finish_renewal(dir)?;
    let f = files(dir);
    if !f.cert.exists() {
        return Ok(None);
    }
    let read = |p: &Path| std::fs::read_to_string(p).map_err(io(p));
    let creds =
        Credentials { name: String::new(), ca_pem: read(&f.ca)?, cert_pem: read(&f.cert)?, key_pem: read(&f.key)? };
    let corrupt = |reason: String| JoinError::Corrupt { path: f.cert.clone(), reason };
    let der = cert_der_from_pem(&creds.cert_pem).map_err(|e| corrupt(e.to_string()))?;
    let name = match identity_of(&der).map_err(|e| corrupt(e.to_string()))?.0 {
        Identity::Node(n) => n,
        other => return Err(corrupt(format!("it is a certificate for {other}, not for a node"))),
    };
    if name != configured_name {
        return Err(JoinError::NameMismatch {
            dir: dir.to_path_buf(),
            found: name,
            configured: configured_name.to_string(),
        });
    }
    Ok(Some(Credentials { name, ..creds }))
}

/// Joins through the leader at `addr` with `token`; stores and returns the new credentials.
pub async fn join(
    dir: &Path,
    addr: SocketAddr,
    token: &str,
    name: &str,
    info: NodeInfo,
) -> Result<Credentials, JoinError> {
    let token: JoinToken = token.parse()?;
    bramble_proto::fsutil::private_dir(dir).map_err(io(dir))?;
    let (csr_pem, key_pem) = node_csr(name).map_err(|e| JoinError::Refused(e.to_string()))?;
    let t = |source| JoinError::Transport { addr, source };
    let endpoint = client_endpoint(addr).map_err(t)?;
    let tls = pinned_client_config(&token.ca_fingerprint).map_err(|e| t(e.into()))?;
    let conn = connect(&endpoint, addr, tls, CALL_TIMEOUT).await.map_err(t)?;
    let request =
        Request::Join { token: token.to_string(), node_name: name.to_string(), csr_pem, info: Box::new(info) };
    let response = call(&conn, request, CALL_TIMEOUT).await.map_err(t);
    conn.close(quinn::VarInt::from_u32(0), b"joined");
    endpoint.wait_idle().await;
    let (cert_pem, ca_pem) = match response? {
        Response::Joined { cert_pem, ca_pem, .. } => (cert_pem, ca_pem),
        // A standby of highly available leaders: ask the active one (not a refusal).
        Response::Error(e) if e.code == bramble_proto::wire::ErrorCode::Unavailable => {
            return Err(JoinError::Standby { message: e.message, active: e.leader })
        }
        Response::Error(e) => return Err(JoinError::Refused(e.message)),
        _ => return Err(JoinError::Unexpected),
    };
    let ca_der = cert_der_from_pem(&ca_pem).map_err(|_| JoinError::CaMismatch)?;
    if sha256_hex(&ca_der) != token.ca_fingerprint {
        return Err(JoinError::CaMismatch);
    }
    let f = files(dir);
    write_atomic(&f.key, &key_pem, 0o600)?;
    write_atomic(&f.ca, &ca_pem, 0o644)?;
    // The certificate goes last: its presence means the agent has joined.
    write_atomic(&f.cert, &cert_pem, 0o644)?;
    Ok(Credentials { name: name.to_string(), ca_pem, cert_pem, key_pem })
}

/// Whether `config` has what joining needs.
pub fn token_of(config: &AgentConfig) -> Result<&str, JoinError> {
    config.token.as_deref().ok_or(JoinError::NoToken)
}
