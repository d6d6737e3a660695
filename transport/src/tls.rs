//! rustls configurations: ring provider, TLS 1.3 only, ALPN `bramble/1`.

use crate::pki::{cert_der_from_pem, key_der_from_pem, sha256_hex, PkiError};
use bramble_proto::wire::ALPN;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(cert_der_from_pem(ca_pem)?)?;
    Ok(Arc::new(roots))
}

/// The leader's server config. Client certificates from the cluster CA are verified when offered;
/// a client without one may connect, but may only ask to join (the API checks that).
pub fn server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider()).allow_unauthenticated().build()?;
    let chain = vec![cert_der_from_pem(cert_pem)?, cert_der_from_pem(ca_pem)?];
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der_from_pem(key_pem)?)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// A client config that trusts the cluster CA and presents `identity` (certificate and key PEM).
pub fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?);
    let mut cfg = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert_der_from_pem(cert)?], key_der_from_pem(key)?)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// A client config for joining: it trusts only a leader whose chain holds the CA with SHA-256
/// `fingerprint` (from the join token), and presents no certificate.
pub fn pinned_client_config(fingerprint: &str) -> Result<ClientConfig, TlsError> {
    let verifier = PinnedCa { fingerprint: fingerprint.to_string(), provider: provider() };
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// Verifies the leader against the CA pinned by a join token.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| sha256_hex(c) == self.fingerprint) else {
            let offered: Vec<String> = intermediates.iter().map(|c| sha256_hex(c)).collect();
            return Err(rustls::Error::General(format!(
                "the leader's CA does not match the join token: token pins {}, leader offered {}",
                self.fingerprint,
                if offered.is_empty() { "no CA".to_string() } else { offered.join(", ") }
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The leaf certificate (DER) a web server at `addr` presents for `host` (SNI), read within
/// `timeout`. Nothing is verified and nothing is sent after the handshake: this only looks at what
/// is served (an ingress proxy's ACME certificate, to see when it ends).
pub fn served_certificate(
    addr: std::net::SocketAddr,
    host: &str,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let seen = Arc::new(std::sync::Mutex::new(None));
    let verifier = Recorder { seen: seen.clone(), provider: provider() };
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?}: {e}"))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let mut sock = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    sock.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| format!("{addr} ({host}): {e}"))?;
    }
    let _ = conn.writer().flush();
    conn.send_close_notify();
    let _ = conn.complete_io(&mut sock);
    let leaf = seen.lock().expect("not poisoned").take();
    leaf.ok_or_else(|| format!("{addr} ({host}) presented no certificate"))
}

/// Accepts any server certificate and keeps the leaf (signatures are still checked: the server
/// holds the key of what it presents).
#[derive(Debug)]
struct Recorder {
    seen: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("not poisoned") = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_a_server_presents_is_read_whatever_signs_it() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["shop.lan".to_string()]).unwrap().self_signed(&key).unwrap();
        let der = cert.der().to_vec();
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der_from_pem(&key.serialize_pem()).unwrap())
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut conn = rustls::ServerConnection::new(Arc::new(cfg)).unwrap();
            while conn.is_handshaking() {
                if conn.complete_io(&mut sock).is_err() {
                    break;
                }
            }
            conn.server_name().map(String::from)
        });
        let got = served_certificate(addr, "shop.lan", std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(got, der, "the leaf as served");
        assert_eq!(server.join().unwrap().as_deref(), Some("shop.lan"), "asked for the host by SNI");
        let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert!(served_certificate(nowhere, "shop.lan", std::time::Duration::from_secs(2)).is_err());
    }
}
