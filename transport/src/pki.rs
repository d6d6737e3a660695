//! The cluster's certificates.
//!
//! One self-signed CA per cluster signs everything. Identities live in the subject common name:
//! `node:<name>` for agents, `admin:<name>` for operators, `leader` for the leader (whose
//! certificate also names [`LEADER_SERVER_NAME`] so clients can verify it by that name whatever
//! address they dial).

use bramble_proto::wire::LEADER_SERVER_NAME;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid certificate signing request: {0}")]
    BadCsr(rcgen::Error),
    #[error("invalid certificate: {0}")]
    BadCert(String),
    #[error("invalid PEM: {0}")]
    BadPem(String),
    #[error("the system random number generator failed")]
    Random,
}

/// What a person or pipeline may do. Each role may do everything the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// get, describe, logs, events.
    Viewer,
    /// That, plus apply, diff, scale, rollout, and deleting apps, services and secrets; writing
    /// secrets (never reading them).
    Deployer,
    /// Everything: nodes, tokens, users, exec, images and volumes on boards.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "deployer" => Ok(Role::Deployer),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("expected admin, deployer or viewer, found {s:?}")),
        }
    }
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Leader,
    Node(String),
    /// A person or pipeline: `<role>:<name>` in the certificate.
    User {
        name: String,
        role: Role,
    },
}

impl Identity {
    pub fn admin(name: &str) -> Identity {
        Identity::User { name: name.to_string(), role: Role::Admin }
    }

    /// What it may do as a client of the API (the leader's own certificate: everything).
    pub fn role(&self) -> Option<Role> {
        match self {
            Identity::Leader => Some(Role::Admin),
            Identity::Node(_) => None,
            Identity::User { role, .. } => Some(*role),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Leader => f.write_str("leader"),
            Identity::Node(n) => write!(f, "node:{n}"),
            Identity::User { name, role } => write!(f, "{role}:{name}"),
        }
    }
}

/// How long certificates the CA issues stay valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86400);
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86400);
/// Boards' certificates: short, renewed by their agents over the session.
pub const NODE_VALIDITY: Duration = Duration::from_secs(30 * 86400);

/// A certificate with its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// The cluster certificate authority.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA for the cluster `cluster`.
    pub fn generate(cluster: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        // A random part keeps the names of two clusters' CAs apart, so a certificate from the
        // wrong cluster is reported as "unknown CA" rather than as a bad signature.
        let mut id = [0u8; 4];
        ring::rand::SystemRandom::new().fill(&mut id).map_err(|_| PkiError::Random)?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        params.distinguished_name = dn(&format!("bramble cluster CA {cluster} {id}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, CA_VALIDITY)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key })
    }

    /// Loads a CA from its certificate and key (PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadPem(format!("CA key: {e}")))?;
        let cert_der = cert_der_from_pem(cert_pem)?.to_vec();
        let ca = Ca { cert_pem: cert_pem.to_string(), cert_der, key };
        ca.issuer()?; // refuse a certificate we cannot sign with
        Ok(ca)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the CA certificate (DER), lowercase hex: what join tokens pin.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(|e| PkiError::BadCert(format!("CA certificate: {e}")))
    }

    /// The leader's serving certificate (also valid as a client, for leader-to-leader traffic).
    pub fn issue_leader(&self, extra_names: &[String]) -> Result<Issued, PkiError> {
        self.issue_leader_for(extra_names, LEAF_VALIDITY)
    }

    /// The leader's serving certificate, valid for `valid_for`.
    pub fn issue_leader_for(&self, extra_names: &[String], valid_for: Duration) -> Result<Issued, PkiError> {
        let mut names = vec![LEADER_SERVER_NAME.to_string(), "localhost".to_string()];
        names.extend(extra_names.iter().cloned());
        names.dedup();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = dn("leader");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, valid_for)
    }

    /// An operator's client certificate.
    pub fn issue_admin(&self, name: &str) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(&format!("admin:{name}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, LEAF_VALIDITY)
    }

    /// Signs a user's CSR as `<role>:<name>`, valid for `valid_for`. Only the CSR's public key is
    /// used. Returns the certificate (PEM) and its public key's fingerprint.
    pub fn sign_user_csr(
        &self,
        csr_pem: &str,
        name: &str,
        role: Role,
        valid_for: Duration,
    ) -> Result<(String, String), PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(&format!("{role}:{name}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, valid_for)?;
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok((cert.pem(), sha256_hex(rcgen::PublicKeyData::der_bytes(&csr.public_key))))
    }

    fn issue(&self, mut params: CertificateParams, valid_for: Duration) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, valid_for)?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Signs a node's CSR for `node_name`. Only the CSR's public key is used (after its signature
    /// is verified); the names and usages come from the CA. Returns the certificate (PEM) and the
    /// fingerprint of the node's public key.
    pub fn sign_node_csr(&self, csr_pem: &str, node_name: &str) -> Result<(String, String), PkiError> {
        self.sign_node_csr_for(csr_pem, node_name, NODE_VALIDITY)
    }

    /// [`Ca::sign_node_csr`], valid for `valid_for`.
    pub fn sign_node_csr_for(
        &self,
        csr_pem: &str,
        node_name: &str,
        valid_for: Duration,
    ) -> Result<(String, String), PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let mut params = CertificateParams::new(vec![node_name.to_string()])?;
        params.distinguished_name = dn(&format!("node:{node_name}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, valid_for)?;
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok((cert.pem(), sha256_hex(rcgen::PublicKeyData::der_bytes(&csr.public_key))))
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "bramble");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity(params: &mut CertificateParams, valid_for: Duration) -> Result<(), PkiError> {
    let now = OffsetDateTime::now_utc();
    // Allow for boards whose clocks lag (a Pi has no RTC and may boot before NTP syncs): an hour,
    // or a quarter of a short lifetime.
    params.not_before = now - (valid_for / 4).min(Duration::from_secs(3600));
    params.not_after = now + valid_for;
    let mut serial = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut serial).map_err(|_| PkiError::Random)?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(())
}

/// Makes a key pair and a CSR for `node:<node_name>`; returns (CSR PEM, private key PEM).
pub fn node_csr(node_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![node_name.to_string()])?;
    params.distinguished_name = dn(&format!("node:{node_name}"));
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// Makes a key pair and a CSR for a user (the CA sets the name and role it signs); returns
/// (CSR PEM, private key PEM). The key never leaves the machine that made it.
pub fn user_csr(name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(name);
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// When a certificate (DER) stops being valid, in ms since the epoch.
pub fn not_after_ms(cert_der: &[u8]) -> Result<u64, PkiError> {
    Ok(validity_ms(cert_der)?.1)
}

/// A certificate's (not before, not after), in ms since the epoch.
pub fn validity_ms(cert_der: &[u8]) -> Result<(u64, u64), PkiError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| PkiError::BadCert(e.to_string()))?;
    let ms = |t: ASN1Time| (t.timestamp().max(0) as u64) * 1000;
    Ok((ms(cert.validity().not_before), ms(cert.validity().not_after)))
}

/// A web server's certificate as checked for an ingress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCert {
    /// Its end, in ms since the epoch.
    pub not_after_ms: u64,
    /// Its DNS names (subject alternative names).
    pub names: Vec<String>,
}

/// Checks a certificate chain and its key as a web server is given them (PEM: the leaf first;
/// the key PKCS#8, SEC1 or PKCS#1): the leaf parses and the key is its key. Errors say which.
pub fn check_server_pair(crt_pem: &[u8], key_pem: &[u8]) -> Result<ServerCert, String> {
    use x509_parser::prelude::*;
    let leaf = CertificateDer::pem_slice_iter(crt_pem)
        .next()
        .ok_or("tls.crt holds no PEM certificate")?
        .map_err(|e| format!("tls.crt: {e}"))?;
    let (_, cert) = X509Certificate::from_der(&leaf).map_err(|e| format!("tls.crt: not an X.509 certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("tls.key: no private key in PEM: {e}"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key: not a key this proxy can use (RSA, ECDSA P-256/P-384, Ed25519): {e}"))?;
    let public = signer.public_key().ok_or("tls.key: its public key cannot be derived")?;
    if public.as_ref() != cert.public_key().raw {
        return Err("tls.key is not the key of tls.crt (their public keys differ)".into());
    }
    let names = dns_names(&leaf);
    let not_after_ms = (cert.validity().not_after.timestamp().max(0) as u64) * 1000;
    Ok(ServerCert { not_after_ms, names })
}

/// A certificate's (DER) DNS names (subject alternative names; none if it does not parse).
pub fn dns_names(cert_der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Whether a certificate's DNS name `pattern` (`shop.lan`, `*.lan`) covers `host`.
pub fn name_covers(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match pattern.strip_prefix("*.") {
        Some(rest) => host.split_once('.').is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
        None => pattern == host,
    }
}

/// When a certificate should be renewed: two thirds into its validity.
pub fn renew_at_ms(cert_der: &[u8]) -> Result<u64, PkiError> {
    let (nb, na) = validity_ms(cert_der)?;
    Ok(nb + (na.saturating_sub(nb)) * 2 / 3)
}

/// The DNS names and IP addresses a certificate is for (its subject alternative names).
pub fn subject_alt_names(cert_der: &[u8]) -> Result<Vec<String>, PkiError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| PkiError::BadCert(e.to_string()))?;
    let Some(san) = cert.subject_alternative_name().map_err(|e| PkiError::BadCert(e.to_string()))? else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string())
            }
            GeneralName::IPAddress(b) if b.len() == 16 => {
                let a: [u8; 16] = (*b).try_into().ok()?;
                Some(std::net::Ipv6Addr::from(a).to_string())
            }
            _ => None,
        })
        .collect())
}

/// A CSR for `node:<node_name>` with an existing key (PEM).
pub fn node_csr_with_key(node_name: &str, key_pem: &str) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadPem(format!("private key: {e}")))?;
    let mut params = CertificateParams::new(vec![node_name.to_string()])?;
    params.distinguished_name = dn(&format!("node:{node_name}"));
    Ok(params.serialize_request(&key)?.pem()?)
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The first certificate in a PEM text, as DER.
pub fn cert_der_from_pem(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::BadPem(format!("certificate: {e}")))
}

/// The first private key in a PEM text, as DER.
pub fn key_der_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::BadPem(format!("private key: {e}")))
}

/// Reads the identity (subject common name) and public-key fingerprint of a certificate (DER).
pub fn identity_of(cert_der: &[u8]) -> Result<(Identity, String), PkiError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| PkiError::BadCert(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| PkiError::BadCert("no common name".into()))?;
    let identity = if cn == "leader" {
        Identity::Leader
    } else if let Some(n) = cn.strip_prefix("node:") {
        Identity::Node(n.to_string())
    } else if let Some((role, n)) = cn.split_once(':').and_then(|(r, n)| Some((r.parse::<Role>().ok()?, n))) {
        Identity::User { name: n.to_string(), role }
    } else {
        return Err(PkiError::BadCert(format!("unknown identity {cn:?} in certificate")));
    };
    let key_fp = sha256_hex(&cert.public_key().subject_public_key.data);
    Ok((identity, key_fp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_pair_is_checked_by_its_public_keys_and_names_cover_hosts_by_labels() {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["shop.lan".to_string(), "*.shop.lan".to_string()]).unwrap();
        let crt = params.self_signed(&key).unwrap().pem();
        let c = check_server_pair(crt.as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        assert_eq!(c.names, ["shop.lan", "*.shop.lan"]);
        let other = KeyPair::generate().unwrap();
        let e = check_server_pair(crt.as_bytes(), other.serialize_pem().as_bytes()).unwrap_err();
        assert!(e.contains("not the key of tls.crt"), "{e}");
        assert!(check_server_pair(b"", key.serialize_pem().as_bytes()).unwrap_err().contains("no PEM certificate"));
        assert!(check_server_pair(crt.as_bytes(), b"junk").unwrap_err().starts_with("tls.key"));
        assert!(name_covers("*.shop.lan", "api.shop.lan") && name_covers("Shop.LAN", "shop.lan"));
        assert!(!name_covers("*.shop.lan", "shop.lan") && !name_covers("*.shop.lan", "a.b.shop.lan"));
        assert!(!name_covers("*.lan", ".lan") && !name_covers("shop.lan", "shop.lan.evil"));
    }

    #[test]
    fn node_certificates_carry_identity_and_key() {
        let ca = Ca::generate("test").unwrap();
        let (csr, _key) = node_csr("pi-1").unwrap();
        let (cert_pem, key_fp) = ca.sign_node_csr(&csr, "pi-1").unwrap();
        let der = cert_der_from_pem(&cert_pem).unwrap();
        let (id, fp) = identity_of(&der).unwrap();
        assert_eq!(id, Identity::Node("pi-1".into()));
        assert_eq!(fp, key_fp);
        let admin = ca.issue_admin("root").unwrap();
        let (id, _) = identity_of(&cert_der_from_pem(&admin.cert_pem).unwrap()).unwrap();
        assert_eq!(id, Identity::admin("root"));
        let (csr, _key) = user_csr("ci").unwrap();
        let (pem, fp) = ca.sign_user_csr(&csr, "ci", Role::Deployer, Duration::from_secs(3600)).unwrap();
        let der = cert_der_from_pem(&pem).unwrap();
        assert_eq!(identity_of(&der).unwrap(), (Identity::User { name: "ci".into(), role: Role::Deployer }, fp));
        let left = not_after_ms(&der).unwrap() as i64 - bramble_proto::time::now_ms() as i64;
        assert!((3_590_000..=3_600_000).contains(&left), "{left}");
        // Renewal two thirds in; a short lifetime is backdated by a quarter of it, not an hour.
        let (nb, na) = validity_ms(&der).unwrap();
        assert_eq!(na - nb, 3_600_000 + 900_000);
        assert_eq!(renew_at_ms(&der).unwrap(), nb + 3_000_000);
        let leader = ca.issue_leader(&["10.0.0.1".into(), "pi-1".into()]).unwrap();
        let names = subject_alt_names(&cert_der_from_pem(&leader.cert_pem).unwrap()).unwrap();
        assert!(names.contains(&"10.0.0.1".to_string()) && names.contains(&"pi-1".to_string()), "{names:?}");
        let key = KeyPair::generate().unwrap().serialize_pem();
        let csr = node_csr_with_key("pi-9", &key).unwrap();
        let (_, fp) = ca.sign_node_csr_for(&csr, "pi-9", Duration::from_secs(60)).unwrap();
        let (_, fp2) = ca.sign_node_csr(&csr, "pi-9").unwrap();
        assert_eq!(fp, fp2, "the same key");
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = Ca::generate("test").unwrap();
        let again = Ca::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);
        assert!(again.issue_leader(&["10.0.0.1".into()]).is_ok());
    }

    #[test]
    fn garbage_csr_is_refused() {
        let ca = Ca::generate("test").unwrap();
        assert!(matches!(ca.sign_node_csr("not a csr", "x"), Err(PkiError::BadCsr(_))));
        let (csr, _) = node_csr("pi-1").unwrap();
        let tampered = csr.replacen("MII", "MIJ", 1);
        assert!(ca.sign_node_csr(&tampered, "pi-1").is_err());
    }
}
