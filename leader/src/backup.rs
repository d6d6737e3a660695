//! Backups of a cluster: one consistent snapshot of every stored object, the CA (certificate and
//! key), the secrets key, leader.toml and admin.toml — sealed with a passphrase, so a stolen backup
//! reveals nothing — and restoring one into a new leader's data dir.
//!
//! The leader hands the snapshot to an admin over the mTLS session; the CLI seals it
//! (`bramble_transport::backup`), so the passphrase never leaves the admin's machine.

use crate::init::Layout;
use crate::store::{Expect, RedbStore, Store, TxnOp};
use bramble_proto::backup::Snapshot;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("the backup's contents do not decode: {0}")]
    Contents(String),
    #[error("{0} already holds a cluster (pki/ca.crt exists); restore into an empty data dir")]
    Exists(std::path::PathBuf),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Other(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// Reads everything a backup needs from a running leader's data dir and store (one listing of
/// the store: one read transaction, so the objects are consistent with each other).
pub fn take(store: &dyn Store, data_dir: &Path, cluster_name: &str) -> Result<Snapshot, BackupError> {
    let layout = Layout::new(data_dir);
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).map_err(io(p.display().to_string()));
    let ca_cert = read(layout.ca_cert())?;
    let revision = store.revision();
    let objects = store
        .list("/")
        .map_err(|e| BackupError::Other(e.to_string()))?
        .into_iter()
        .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
        .collect();
    let der = bramble_transport::pki::cert_der_from_pem(&ca_cert).map_err(|e| BackupError::Other(e.to_string()))?;
    Ok(Snapshot {
        created_ms: bramble_proto::time::now_ms(),
        cluster_name: cluster_name.to_string(),
        ca_fingerprint: bramble_transport::pki::sha256_hex(&der),
        revision,
        ca_key: read(layout.ca_key())?,
        ca_cert,
        secrets_key: read(layout.secrets_key())?,
        leader_toml: read(layout.config())?,
        admin_toml: std::fs::read_to_string(layout.admin_config()).ok(),
        objects,
    })
}

/// Makes a new leader's data dir from `snapshot`: the same CA and secrets key, a new serving
/// certificate for `listen` (and this host's name), every object, leader.toml (its `data_dir`
/// and `listen` made this one's) and admin.toml. Refused where a cluster is; nothing is left
/// half-made (the CA certificate, which marks a data dir as initialised, is written last).
pub fn restore(
    snapshot: &Snapshot,
    data_dir: &Path,
    listen: Option<std::net::SocketAddr>,
) -> Result<String, BackupError> {
    let layout = Layout::new(data_dir);
    if layout.is_initialised() {
        return Err(BackupError::Exists(data_dir.to_path_buf()));
    }
    let mut config = crate::LeaderConfig::parse("leader.toml (in the backup)", &snapshot.leader_toml)
        .map_err(|e| BackupError::Contents(e.to_string()))?;
    config.data_dir = data_dir.to_path_buf();
    if let Some(l) = listen {
        config.listen = l;
    }
    let ca = bramble_transport::pki::Ca::load(&snapshot.ca_cert, &snapshot.ca_key)
        .map_err(|e| BackupError::Contents(format!("the CA in the backup: {e}")))?;
    let mkdir = |p: &Path, mode: u32| {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(mode).create(p).map_err(io(p.display().to_string()))
    };
    mkdir(data_dir, 0o755)?;
    mkdir(&layout.pki(), 0o700)?;
    // The store first: if it cannot be made, nothing marks the dir as a cluster.
    let store = RedbStore::open(&layout.store()).map_err(|e| BackupError::Other(format!("the store: {e}")))?;
    let ops: Vec<TxnOp> = snapshot
        .objects
        .iter()
        .map(|(k, v)| TxnOp::Put { key: k.clone(), value: v.clone().into_bytes(), expect: Expect::Absent })
        .collect();
    if !ops.is_empty() {
        store.txn(&ops).map_err(|e| BackupError::Other(format!("writing the objects: {e}")))?;
    }
    // Closed before the leader opens it.
    drop(store);
    let mut names = Vec::new();
    if !config.listen.ip().is_unspecified() {
        names.push(config.listen.ip().to_string());
    }
    if let Some(h) =
        nix::unistd::gethostname().ok().and_then(|h| h.to_str().map(String::from)).filter(|h| !h.is_empty())
    {
        names.push(h);
    }
    let leader = ca.issue_leader(&names).map_err(|e| BackupError::Other(e.to_string()))?;
    let write = |p: std::path::PathBuf, text: &str, mode: u32| {
        bramble_proto::fsutil::write_file_atomic(&p, text.as_bytes(), mode).map_err(io(p.display().to_string()))
    };
    write(layout.ca_key(), &snapshot.ca_key, 0o600)?;
    write(layout.secrets_key(), &snapshot.secrets_key, 0o600)?;
    write(layout.leader_cert(), &leader.cert_pem, 0o644)?;
    write(layout.leader_key(), &leader.key_pem, 0o600)?;
    write(layout.config(), &config.render(), 0o644)?;
    if let Some(admin) = &snapshot.admin_toml {
        write(layout.admin_config(), admin, 0o600)?;
    }
    write(layout.ca_cert(), &snapshot.ca_cert, 0o644)?;
    Ok(format!(
        "restored cluster {} ({} objects, CA {}) into {}; start it with: bramble-leader run --config {}",
        snapshot.cluster_name,
        snapshot.objects.len(),
        &snapshot.ca_fingerprint[..16],
        data_dir.display(),
        layout.config().display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let ca = bramble_transport::pki::Ca::generate("t").unwrap();
        let config = crate::LeaderConfig::new("/old".into(), "127.0.0.1:7443".parse().unwrap());
        Snapshot {
            created_ms: 1,
            cluster_name: "t".into(),
            ca_fingerprint: ca.fingerprint(),
            revision: 7,
            ca_cert: ca.cert_pem().into(),
            ca_key: ca.key_pem(),
            secrets_key: "1 00\n".into(),
            leader_toml: config.render(),
            admin_toml: None,
            objects: [("/apps/web".to_string(), "{}".to_string()), ("/nodes/pi-1".into(), "{}".into())].into(),
        }
    }

    #[test]
    fn restore_makes_a_data_dir_once() {
        let t = tempfile::tempdir().unwrap();
        let s = snapshot();
        let said = restore(&s, &t.path().join("l"), Some("127.0.0.1:9443".parse().unwrap())).unwrap();
        assert!(said.starts_with("restored cluster t (2 objects"), "{said}");
        let cfg = crate::LeaderConfig::load(&t.path().join("l/leader.toml")).unwrap();
        assert_eq!((cfg.data_dir, cfg.listen.port()), (t.path().join("l"), 9443));
        let store = RedbStore::open(&t.path().join("l/store.redb")).unwrap();
        assert_eq!(store.list("/").unwrap().len(), 2);
        drop(store);
        assert!(matches!(restore(&s, &t.path().join("l"), None), Err(BackupError::Exists(_))));
    }
}
