//! `bramble-leader init`: a new cluster's data dir, CA, certificates and config files.

use crate::config::LeaderConfig;
use bramble_proto::fsutil::write_file_atomic;
use bramble_proto::network::ClusterNetwork;
use bramble_transport::admin::{AdminConfig, ADMIN_CONFIG_VERSION};
use bramble_transport::pki::{Ca, PkiError};
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("a cluster already exists in {0} (found pki/ca.crt); refusing to overwrite it")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("nothing created: {0}")]
    Network(String),
}

/// Paths inside a leader's data dir.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        Layout { dir: dir.to_path_buf() }
    }
    /// The key that seals secrets' values in the store (0600; never in the store).
    pub fn secrets_key(&self) -> PathBuf {
        self.dir.join("secrets.key")
    }
    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.pki().join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.pki().join("ca.key")
    }
    pub fn leader_cert(&self) -> PathBuf {
        self.pki().join("leader.crt")
    }
    pub fn leader_key(&self) -> PathBuf {
        self.pki().join("leader.key")
    }
    pub fn store(&self) -> PathBuf {
        self.dir.join("store.redb")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("leader.toml")
    }
    pub fn admin_config(&self) -> PathBuf {
        self.dir.join("admin.toml")
    }
    pub fn is_initialised(&self) -> bool {
        self.ca_cert().exists()
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), InitError> {
    write_file_atomic(path, contents, mode).map_err(|source| InitError::Io { path: path.to_path_buf(), source })
}

/// What `init` made.
#[derive(Debug)]
pub struct Initialised {
    pub config_path: PathBuf,
    pub admin_path: PathBuf,
    pub ca_fingerprint: String,
}

/// Creates a cluster in `data_dir`, listening on `listen`.
pub fn init(
    data_dir: &Path,
    listen: SocketAddr,
    cluster_name: &str,
    embedded_agent: bool,
    network: &ClusterNetwork,
) -> Result<Initialised, InitError> {
    init_with(data_dir, listen, cluster_name, embedded_agent, network, &crate::config::StoreConfig::default())
}

/// Like [`init`], with the store's settings (`[store]` in leader.toml; etcd for HA leaders).
pub fn init_with(
    data_dir: &Path,
    listen: SocketAddr,
    cluster_name: &str,
    embedded_agent: bool,
    network: &ClusterNetwork,
    store: &crate::config::StoreConfig,
) -> Result<Initialised, InitError> {
    let layout = Layout::new(data_dir);
    if layout.is_initialised() {
        return Err(InitError::Exists(data_dir.to_path_buf()));
    }
    if !network.check().is_empty() {
        let problems: Vec<String> =
            network.check().into_iter().map(|(f, m)| format!("--{}: {m}", f.replace('_', "-"))).collect();
        return Err(InitError::Network(problems.join("; ")));
    }
    // The store's settings are checked before anything is written (e.g. etcd without endpoints).
    let mut check = LeaderConfig::new(data_dir.to_path_buf(), listen);
    check.store = store.clone();
    LeaderConfig::parse("leader.toml", &check.render()).map_err(|e| InitError::Network(e.to_string()))?;
    let mkdir = |p: &Path, mode| {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(p)
            .map_err(|source| InitError::Io { path: p.into(), source })
    };
    bramble_proto::fsutil::private_dir(data_dir).map_err(|source| InitError::Io { path: data_dir.into(), source })?;
    mkdir(&layout.pki(), 0o700)?;

    let ca = Ca::generate(cluster_name)?;
    let mut names = Vec::new();
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    if let Ok(host) = nix::unistd::gethostname() {
        if let Some(h) = host.to_str().filter(|h| !h.is_empty()) {
            names.push(h.to_string());
        }
    }
    let leader = ca.issue_leader(&names)?;
    let admin = ca.issue_admin("admin")?;

    write_file(&layout.ca_key(), ca.key_pem().as_bytes(), 0o600)?;
    write_file(&layout.leader_cert(), leader.cert_pem.as_bytes(), 0o644)?;
    write_file(&layout.leader_key(), leader.key_pem.as_bytes(), 0o600)?;

    let mut config = LeaderConfig::new(data_dir.to_path_buf(), listen);
    config.cluster_name = cluster_name.to_string();
    config.agent.enabled = embedded_agent;
    config.network = network.clone();
    config.store = store.clone();
    write_file(&layout.config(), config.render().as_bytes(), 0o644)?;

    let dial = if listen.ip().is_unspecified() {
        SocketAddr::new(
            if listen.is_ipv6() { "::1".parse().expect("ip") } else { "127.0.0.1".parse().expect("ip") },
            listen.port(),
        )
    } else {
        listen
    };
    let admin_cfg = AdminConfig {
        version: ADMIN_CONFIG_VERSION,
        leaders: vec![dial.to_string()],
        ca: ca.cert_pem().to_string(),
        cert: admin.cert_pem,
        key: admin.key_pem,
    };
    write_file(&layout.admin_config(), admin_cfg.render().as_bytes(), 0o600)?;
    // The CA certificate goes last: its presence marks the cluster as initialised.
    write_file(&layout.ca_cert(), ca.cert_pem().as_bytes(), 0o644)?;
    Ok(Initialised {
        config_path: layout.config(),
        admin_path: layout.admin_config(),
        ca_fingerprint: ca.fingerprint(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_everything_and_refuses_to_run_twice() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("leader");
        let out = init(&d, "127.0.0.1:7443".parse().unwrap(), "test", false, &ClusterNetwork::default()).unwrap();
        let l = Layout::new(&d);
        for p in [l.ca_cert(), l.ca_key(), l.leader_cert(), l.leader_key(), l.config(), l.admin_config()] {
            assert!(p.exists(), "{} exists", p.display());
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(l.ca_key()).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700, "the data dir is private");
        let cfg = LeaderConfig::load(&out.config_path).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:7443");
        let admin = AdminConfig::parse("admin.toml", &fs::read_to_string(&out.admin_path).unwrap()).unwrap();
        assert_eq!(admin.leaders, ["127.0.0.1:7443"]);
        let bad = ClusterNetwork { service_cidr: "10.42.3.0/24".parse().unwrap(), ..Default::default() };
        let e = init(&dir.path().join("other"), "127.0.0.1:7443".parse().unwrap(), "t", false, &bad).unwrap_err();
        assert!(e.to_string().starts_with("nothing created: --service-cidr: 10.42.3.0/24 overlaps"), "{e}");
        assert!(!dir.path().join("other").exists(), "nothing created");
        let before = fs::read(l.ca_key()).unwrap();
        let again = init(&d, "127.0.0.1:7443".parse().unwrap(), "test", false, &ClusterNetwork::default());
        assert!(matches!(again, Err(InitError::Exists(_))));
        assert_eq!(fs::read(l.ca_key()).unwrap(), before, "the existing CA is untouched");
    }
}
