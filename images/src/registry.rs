//! A registry client for the OCI distribution API (Docker registry v2): manifests and blobs, with
//! anonymous, Bearer-token and basic auth; HTTPS unless a registry is listed as insecure.
//!
//! Blocking on purpose: it streams a blob straight into a file (never into memory) and is called
//! from a blocking thread. Every byte it returns has been checked against its digest.

use crate::digest::{Digest, HashingWriter};
use crate::oci::{MANIFEST_ACCEPT, MAX_DOCUMENT};
use base64::Engine;
use bramble_proto::image_ref::{ImageRef, DEFAULT_REGISTRY};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// How to reach one registry (from the agent's config).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `host[:port]` as written in image references.
    pub host: String,
    /// Plain HTTP instead of HTTPS.
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// A CA certificate (PEM) to trust for this registry instead of the public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Token services on other hosts that may receive the credentials (the registry's own
    /// domain is always allowed, over HTTPS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_hosts: Vec<String>,
    /// A token sent as `Authorization: Bearer` when the registry asks (instead of a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Registries serving the same images, tried in order first (digests checked as always).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
}

impl RegistryConfig {
    /// Whether it carries credentials.
    pub fn has_credentials(&self) -> bool {
        self.username.is_some() || self.password.is_some() || self.token.is_some()
    }
}

/// The host of `url` (`scheme://host[:port]/…`), and whether it is HTTPS.
fn url_host(url: &str) -> Option<(bool, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    Some((scheme.eq_ignore_ascii_case("https"), host))
}

/// The last two labels of a DNS name (`auth.docker.io` → `docker.io`); an address as it is.
fn domain_of(host: &str) -> &str {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return host;
    }
    let mut dots = host.rmatch_indices('.');
    match (dots.next(), dots.next()) {
        (Some(_), Some((i, _))) => &host[i + 1..],
        _ => host,
    }
}

/// Whether a token service at `realm` may be sent the credentials of registry `cfg` (reached at
/// `api_host`): over HTTPS, on the registry's domain or a host listed in `token_hosts` — or
/// anywhere when the registry is `insecure` (a trusted LAN, said so in the config).
pub fn may_send_credentials(cfg: &RegistryConfig, api_host: &str, realm: &str) -> Result<(), String> {
    if cfg.insecure {
        return Ok(());
    }
    let Some((https, host)) = url_host(realm) else { return Err("its address is not a URL".into()) };
    if !https {
        return Err("it is not HTTPS".into());
    }
    let registry = api_host.rsplit_once(':').map_or(api_host, |(h, _)| h);
    let listed = cfg.token_hosts.iter().any(|t| t.eq_ignore_ascii_case(host));
    if listed || domain_of(host).eq_ignore_ascii_case(domain_of(registry)) {
        Ok(())
    } else {
        Err(format!(
            "{host} is not on the registry's domain ({}); list it in token_hosts to allow it",
            domain_of(registry)
        ))
    }
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("host", &self.host)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("token_hosts", &self.token_hosts)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("mirrors", &self.mirrors)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {host}: {message}")]
    Unreachable { host: String, message: String },
    #[error("{what} not found in registry {host}")]
    NotFound { host: String, what: String },
    #[error("registry {host} refused access to {repository}: {message}")]
    Denied { host: String, repository: String, message: String },
    #[error("registry {host} answered {status} for {what}: {message}")]
    Status { host: String, status: u16, what: String, message: String },
    #[error("{what} from registry {host} is corrupt: expected {expected}, got {actual}")]
    DigestMismatch { host: String, what: String, expected: String, actual: String },
    #[error("{what} from registry {host} is {size} bytes, more than the {limit} allowed")]
    TooLarge { host: String, what: String, size: u64, limit: u64 },
    #[error("cannot read the CA file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("writing {what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn drop_tokens(tokens: &mut HashMap<(String, String), String>, hosts: &[String]) {
    tokens.retain(|(h, _), _| !hosts.contains(h));
}

use std::collections::BTreeMap;

fn payload_text(values: &BTreeMap<String, Vec<u8>>, key: &str) -> Option<String> {
    values.get(key).and_then(|v| String::from_utf8(v.clone()).ok()).filter(|s| !s.is_empty())
}

/// One host's settings from a payload's values under `prefix` (`""` or `mirror/<host>/`).
fn payload_config(host: &str, values: &BTreeMap<String, Vec<u8>>, prefix: &str) -> RegistryConfig {
    let get = |k: &str| payload_text(values, &format!("{prefix}{k}"));
    RegistryConfig {
        host: host.to_string(),
        insecure: get("insecure").as_deref() == Some("true"),
        username: get("username"),
        password: get("password"),
        token: get("token"),
        mirrors: if prefix.is_empty() {
            get("mirrors").map(|m| m.split(',').map(str::to_string).collect()).unwrap_or_default()
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// Every host's settings that the leader's registry payloads give (by host: `insecure`, `mirrors`,
/// `username`, `password`, `token`, and a mirror's own under `mirror/<host>/`): each registry's,
/// and its mirrors'.
pub fn configs_from_payloads(held: &BTreeMap<String, BTreeMap<String, Vec<u8>>>) -> Vec<RegistryConfig> {
    let mut out: BTreeMap<String, RegistryConfig> = BTreeMap::new();
    for (host, values) in held {
        let main = payload_config(host, values, "");
        for m in &main.mirrors {
            let prefix = format!("mirror/{m}/");
            if values.keys().any(|k| k.starts_with(&prefix)) {
                out.entry(m.clone()).or_insert_with(|| payload_config(m, values, &prefix));
            }
        }
        out.insert(host.clone(), main);
    }
    out.into_values().collect()
}

/// A fetched manifest document.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: Option<String>,
    pub digest: Digest,
}

/// The registry client; cheap to share between threads.
pub struct RegistryClient {
    registries: Vec<RegistryConfig>,
    /// From the cluster's `[[registry]]` objects, by host (they win over the agent config's
    /// credentials, `insecure` and mirrors; its CA file and token hosts stay).
    cluster: std::sync::RwLock<HashMap<String, RegistryConfig>>,
    agents: Mutex<HashMap<String, ureq::Agent>>,
    tokens: Mutex<HashMap<(String, String), String>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").field("registries", &self.registries).finish_non_exhaustive()
    }
}

/// Docker Hub's API host differs from the name in references.
fn api_host(host: &str) -> &str {
    if host == DEFAULT_REGISTRY {
        "registry-1.docker.io"
    } else {
        host
    }
}

/// A challenge from `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        params.insert(key, value.to_string());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn error_text(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        // The registry chose these words: a few hundred bytes of them at most.
        Ok(b) if !b.errors.is_empty() => {
            let all = b.errors.iter().take(4).map(|e| format!("{} ({})", e.message, e.code)).collect::<Vec<_>>();
            all.join("; ").chars().take(300).collect()
        }
        _ => String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string(),
    }
}

impl RegistryClient {
    pub fn new(registries: Vec<RegistryConfig>) -> Self {
        RegistryClient {
            registries,
            cluster: Default::default(),
            agents: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Puts (new or changed) and drops the cluster's settings for some hosts; `full`: exactly
    /// these. Cached tokens of a host whose settings changed are forgotten.
    pub fn set_cluster(&self, put: Vec<RegistryConfig>, drop: &[String], full: bool) {
        let mut cluster = self.cluster.write().expect("cluster lock");
        let mut changed: Vec<String> = drop.to_vec();
        if full {
            changed.extend(cluster.keys().cloned());
            cluster.clear();
        }
        for d in drop {
            cluster.remove(d);
        }
        for c in put {
            changed.push(c.host.clone());
            cluster.insert(c.host.clone(), c);
        }
        drop_tokens(&mut self.tokens.lock().expect("tokens lock"), &changed);
    }

    /// A client with these settings and `extra` on top (for one pull: a prefetch's registry);
    /// tokens are not shared.
    pub fn with_extra(&self, extra: Vec<RegistryConfig>) -> RegistryClient {
        let mut cluster = self.cluster.read().expect("cluster lock").clone();
        cluster.extend(extra.into_iter().map(|c| (c.host.clone(), c)));
        RegistryClient {
            registries: self.registries.clone(),
            cluster: std::sync::RwLock::new(cluster),
            agents: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The hosts the cluster's settings name now.
    pub fn cluster_hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.cluster.read().expect("cluster lock").keys().cloned().collect();
        v.sort();
        v
    }

    fn config(&self, host: &str) -> RegistryConfig {
        let local = self.registries.iter().find(|r| r.host == host).cloned();
        match (self.cluster.read().expect("cluster lock").get(host), local) {
            (Some(c), Some(l)) => RegistryConfig { ca_file: l.ca_file, token_hosts: l.token_hosts, ..c.clone() },
            (Some(c), None) => c.clone(),
            (None, Some(l)) => l,
            (None, None) => RegistryConfig { host: host.to_string(), ..Default::default() },
        }
    }

    /// `image` on each of its registry's mirrors, in order (the same repository path on each).
    pub fn mirrors(&self, image: &ImageRef) -> Vec<ImageRef> {
        self.config(&image.registry)
            .mirrors
            .iter()
            .map(|m| {
                let mut i = image.clone();
                i.registry = m.clone();
                i
            })
            .collect()
    }

    fn agent(&self, host: &str) -> Result<ureq::Agent, RegistryError> {
        let mut agents = self.agents.lock().expect("agents lock");
        if let Some(a) = agents.get(host) {
            return Ok(a.clone());
        }
        let cfg = self.config(host);
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| RegistryError::CaFile { path: path.clone(), message: e.to_string() })?;
            let cert = ureq::tls::Certificate::from_pem(&pem)
                .map_err(|e| RegistryError::CaFile { path: path.clone(), message: e.to_string() })?;
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&[cert.to_owned()]));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .max_redirects(5)
            .user_agent(concat!("bramble/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .into();
        agents.insert(host.to_string(), agent.clone());
        Ok(agent)
    }

    fn url(&self, image: &ImageRef, path: &str) -> String {
        let cfg = self.config(&image.registry);
        let scheme = if cfg.insecure { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}/{path}", api_host(&image.registry), image.repository)
    }

    /// GET with auth: on 401, answers the challenge and retries once.
    fn get(
        &self,
        image: &ImageRef,
        path: &str,
        accept: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let host = &image.registry;
        let agent = self.agent(host)?;
        let url = self.url(image, path);
        let key = (host.clone(), image.repository.clone());
        let unreachable = |e: ureq::Error| RegistryError::Unreachable { host: host.clone(), message: e.to_string() };
        let send = |auth: Option<String>| {
            let mut req = agent.get(&url).header("Accept", accept);
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            req.call()
        };
        let cached = self.tokens.lock().expect("tokens lock").get(&key).cloned();
        let resp = send(cached).map_err(unreachable)?;
        if resp.status() != 401 {
            return Ok(resp);
        }
        let challenge = resp.headers().get("www-authenticate").and_then(|h| h.to_str().ok()).and_then(parse_challenge);
        let cfg = self.config(host);
        let denied = |message: String| RegistryError::Denied {
            host: host.clone(),
            repository: image.repository.clone(),
            message,
        };
        let auth = match challenge {
            // A registry token goes as it is, whatever the challenge.
            Some(_) if cfg.token.is_some() => format!("Bearer {}", cfg.token.as_deref().unwrap_or_default()),
            Some(Challenge::Basic) => {
                let (Some(u), Some(p)) = (&cfg.username, &cfg.password) else {
                    return Err(denied(
                        "it asks for a user name and password; give them in a [[registry]] with a secret (or the agent config)"
                            .into(),
                    ));
                };
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
            }
            Some(Challenge::Bearer { realm, service, scope }) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", image.repository));
                let mut req = agent.get(&realm).query("scope", &scope);
                if let Some(s) = &service {
                    req = req.query("service", s);
                }
                if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
                    // The registry names the token service: its credentials go only where they
                    // belong.
                    let shown: String = realm.chars().take(200).collect();
                    may_send_credentials(&cfg, api_host(host), &realm).map_err(|why| {
                        denied(format!("its token service {shown} was not sent the credentials: {why}"))
                    })?;
                    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                    req = req.header("Authorization", format!("Basic {basic}"));
                }
                let mut tr = req.call().map_err(unreachable)?;
                let body = tr.body_mut().with_config().limit(MAX_DOCUMENT).read_to_vec().map_err(unreachable)?;
                if tr.status() != 200 {
                    return Err(denied(format!(
                        "the token service {realm} answered {}: {}",
                        tr.status(),
                        error_text(&body)
                    )));
                }
                let t: TokenResponse = serde_json::from_slice(&body)
                    .map_err(|e| denied(format!("bad answer from the token service: {e}")))?;
                let token =
                    t.token.or(t.access_token).ok_or_else(|| denied("the token service sent no token".into()))?;
                format!("Bearer {token}")
            }
            None => return Err(denied("it answered 401 without a usable challenge".into())),
        };
        let resp = send(Some(auth.clone())).map_err(unreachable)?;
        if resp.status() == 401 || resp.status() == 403 {
            return Err(denied("the credentials were not accepted".into()));
        }
        self.tokens.lock().expect("tokens lock").insert(key, auth);
        Ok(resp)
    }

    fn check_status(
        &self,
        image: &ImageRef,
        resp: &mut ureq::http::Response<ureq::Body>,
        what: &str,
    ) -> Result<(), RegistryError> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body = resp.body_mut().with_config().limit(64 << 10).read_to_vec().unwrap_or_default();
        let host = image.registry.clone();
        Err(match status {
            404 => RegistryError::NotFound { host, what: what.to_string() },
            401 | 403 => {
                RegistryError::Denied { host, repository: image.repository.clone(), message: error_text(&body) }
            }
            _ => RegistryError::Status { host, status, what: what.to_string(), message: error_text(&body) },
        })
    }

    /// Fetches a manifest or index by tag or digest; checks it against the digest when given one.
    pub fn manifest(&self, image: &ImageRef, reference: &str) -> Result<Fetched, RegistryError> {
        let what = format!("manifest {}:{reference}", image.repository);
        let mut resp = self.get(image, &format!("manifests/{reference}"), MANIFEST_ACCEPT)?;
        self.check_status(image, &mut resp, &what)?;
        let media_type = resp.headers().get("content-type").and_then(|h| h.to_str().ok()).map(str::to_string);
        let bytes = resp.body_mut().with_config().limit(MAX_DOCUMENT).read_to_vec().map_err(|e| {
            RegistryError::Unreachable { host: image.registry.clone(), message: format!("reading {what}: {e}") }
        })?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    host: image.registry.clone(),
                    what,
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        Ok(Fetched { bytes, media_type, digest })
    }

    /// Streams blob `digest` (of `size` bytes) into `sink`, calling `progress` with bytes so far.
    /// Fails, having written at most `size` bytes, if the content does not match.
    pub fn blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        size: u64,
        sink: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), RegistryError> {
        let what = format!("blob {digest}");
        let mut resp = self.get(image, &format!("blobs/{digest}"), "*/*")?;
        self.check_status(image, &mut resp, &what)?;
        let host = image.registry.clone();
        let mut reader = resp.body_mut().with_config().limit(size + 1).reader();
        let mut writer = HashingWriter::new(sink);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = reader.read(&mut buf).map_err(|e| RegistryError::Unreachable {
                host: host.clone(),
                message: format!("reading {what}: {e}"),
            })?;
            if n == 0 {
                break;
            }
            if writer.count() + n as u64 > size {
                return Err(RegistryError::TooLarge { host, what, size: writer.count() + n as u64, limit: size });
            }
            writer.write_all(&buf[..n]).map_err(|source| RegistryError::Io { what: what.clone(), source })?;
            progress(writer.count());
        }
        let (_, actual, count) = writer.finish();
        if count != size || &actual != digest {
            return Err(RegistryError::DigestMismatch {
                host,
                what,
                expected: format!("{digest} ({size} bytes)"),
                actual: format!("{actual} ({count} bytes)"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        assert_eq!(
            parse_challenge(h),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(parse_challenge("Basic realm=\"Registry Realm\""), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge("bearer realm=x"),
            Some(Challenge::Bearer { realm: "x".into(), service: None, scope: None })
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=\"x\""), None, "a realm is required");
    }

    #[test]
    fn urls_and_errors() {
        let c = RegistryClient::new(vec![RegistryConfig {
            host: "127.0.0.1:5000".into(),
            insecure: true,
            ..Default::default()
        }]);
        let i: ImageRef = "127.0.0.1:5000/team/web:1".parse().unwrap();
        assert_eq!(c.url(&i, "manifests/1"), "http://127.0.0.1:5000/v2/team/web/manifests/1");
        let i: ImageRef = "busybox".parse().unwrap();
        assert_eq!(c.url(&i, "manifests/latest"), "https://registry-1.docker.io/v2/library/busybox/manifests/latest");
        assert_eq!(
            error_text(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#),
            "manifest unknown (MANIFEST_UNKNOWN)"
        );
        let cfg = RegistryConfig { password: Some("hunter2".into()), ..Default::default() };
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn credentials_go_only_to_token_services_of_the_registrys_domain_over_https() {
        let cfg = RegistryConfig { host: "registry.lan".into(), ..Default::default() };
        let ok = |realm: &str| may_send_credentials(&cfg, "registry.lan", realm);
        assert!(ok("https://registry.lan/token").is_ok());
        assert!(ok("https://auth.registry.lan:8443/token?x=1").is_ok(), "a host of its domain");
        assert!(ok("http://registry.lan/token").unwrap_err().contains("not HTTPS"));
        assert!(ok("https://evil.example/token").unwrap_err().contains("not on the registry's domain"));
        assert!(ok("https://registry.lan@evil.example/token").is_err(), "user info is not the host");
        // Docker Hub: the registry and its token service share docker.io.
        let hub = RegistryConfig::default();
        assert!(may_send_credentials(&hub, "registry-1.docker.io", "https://auth.docker.io/token").is_ok());
        assert!(may_send_credentials(&hub, "registry-1.docker.io", "https://docker.io.evil.example/t").is_err());
        let listed = RegistryConfig { token_hosts: vec!["sso.example.com".into()], ..Default::default() };
        assert!(may_send_credentials(&listed, "reg.lan:5000", "https://sso.example.com/token").is_ok());
        let lan = RegistryConfig { insecure: true, ..Default::default() };
        assert!(
            may_send_credentials(&lan, "10.0.0.5:5000", "http://10.0.0.9/token").is_ok(),
            "insecure: the operator said so"
        );
        assert!(
            may_send_credentials(&cfg, "10.0.0.5:5000", "https://10.0.0.9/token").is_err(),
            "addresses match exactly"
        );
    }
}
