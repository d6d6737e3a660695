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
    prune: bool,
) -> Result<String, BackupError> {
    restore_with(snapshot, data_dir, &Target { listen, prune, ..Default::default() })
}

/// Where and how a backup is restored (beyond the data dir).
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The address to serve on (default: the backed-up leader's).
    pub listen: Option<std::net::SocketAddr>,
    pub prune: bool,
    /// Another store than the backed-up leader's (redb → etcd and back: a migration).
    pub store: Option<crate::config::StoreConfig>,
    /// Add a leader to the cluster already in etcd (the backup gives it the CA and the secrets
    /// key; the objects are not written: they are there).
    pub join: bool,
}

/// Objects per etcd transaction (etcd's default limit is 128 operations and 1.5 MiB a request).
const ETCD_CHUNK: usize = 100;
const ETCD_CHUNK_BYTES: usize = 1 << 20;

/// Writes the objects into etcd under `config`'s prefix, refusing a prefix that holds a cluster
/// already (or, joining, one that does not hold this backup's cluster). On a failure midway what
/// was written is deleted again.
fn restore_into_etcd(
    config: &crate::config::StoreConfig,
    ops: &[TxnOp],
    snapshot: &Snapshot,
    join: bool,
) -> Result<(), BackupError> {
    use crate::store::EtcdStore;
    let store = EtcdStore::open(&config.etcd()).map_err(|e| BackupError::Other(e.to_string()))?;
    let held = store.list("/").map_err(|e| BackupError::Other(e.to_string()))?;
    let where_ = format!("etcd at {} under {}", config.endpoints.join(", "), config.prefix);
    if join {
        if held.is_empty() {
            return Err(BackupError::Other(format!(
                "{where_} holds no cluster to join; restore without --join to put this backup there"
            )));
        }
        let ca = store.get(crate::objects::keys::CA).map_err(|e| BackupError::Other(e.to_string()))?;
        if let Some(ca) = ca {
            if ca.value != snapshot.ca_fingerprint.as_bytes() {
                return Err(BackupError::Other(format!(
                    "{where_} holds another cluster (CA {}) than this backup (CA {}); nothing was written",
                    String::from_utf8_lossy(&ca.value).chars().take(16).collect::<String>(),
                    &snapshot.ca_fingerprint[..16]
                )));
            }
        }
        return Ok(());
    }
    if !held.is_empty() {
        return Err(BackupError::Other(format!(
            "{where_} already holds a cluster ({} keys); add a leader to it with --join, or pick another prefix",
            held.len()
        )));
    }
    let mut done: Vec<String> = Vec::new();
    let mut chunk: Vec<TxnOp> = Vec::new();
    let mut bytes = 0;
    let flush = |chunk: &mut Vec<TxnOp>, done: &mut Vec<String>| -> Result<(), BackupError> {
        if chunk.is_empty() {
            return Ok(());
        }
        store.txn(chunk).map_err(|e| BackupError::Other(format!("writing the objects into {where_}: {e}")))?;
        done.extend(chunk.drain(..).filter_map(|op| match op {
            TxnOp::Put { key, .. } => Some(key),
            _ => None,
        }));
        Ok(())
    };
    let mut result = Ok(());
    for op in ops {
        let size = match op {
            TxnOp::Put { key, value, .. } => key.len() + value.len(),
            _ => 0,
        };
        if chunk.len() == ETCD_CHUNK || (bytes + size > ETCD_CHUNK_BYTES && !chunk.is_empty()) {
            result = flush(&mut chunk, &mut done);
            bytes = 0;
            if result.is_err() {
                break;
            }
        }
        chunk.push(op.clone());
        bytes += size;
    }
    if result.is_ok() {
        result = flush(&mut chunk, &mut done);
    }
    if result.is_err() {
        for key in done {
            let _ = store.delete(&key, Expect::Any);
        }
    }
    result
}

/// Like [`restore`], with a choice of store (see [`Target`]).
pub fn restore_with(snapshot: &Snapshot, data_dir: &Path, target: &Target) -> Result<String, BackupError> {
    let (listen, prune) = (target.listen, target.prune);
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
    if let Some(store) = &target.store {
        let backed_up = std::mem::replace(&mut config.store, store.clone());
        // Endpoints and TLS not given: those of the backed-up leader, if it used etcd too.
        if config.store.endpoints.is_empty() && backed_up.backend == crate::config::StoreBackend::Etcd {
            config.store.endpoints = backed_up.endpoints;
            config.store.ca_file = config.store.ca_file.take().or(backed_up.ca_file);
            config.store.cert_file = config.store.cert_file.take().or(backed_up.cert_file);
            config.store.key_file = config.store.key_file.take().or(backed_up.key_file);
        }
    }
    // The whole config is checked before anything is written.
    crate::LeaderConfig::parse("leader.toml (restored)", &config.render())
        .map_err(|e| BackupError::Other(format!("{e}; nothing was written")))?;
    // And every object, as an apply would check it.
    let metrics = config.metrics.listen.as_deref().and_then(|l| l.parse::<std::net::SocketAddr>().ok());
    let reserved =
        crate::admission::Reserved::of_leader(config.listen.port(), metrics.map(|m| m.port()), Some(data_dir));
    crate::admission::check_restored(&snapshot.objects, &reserved)
        .map_err(|e| BackupError::Contents(format!("{e}; the backup is refused, nothing was written")))?;
    if target.join && config.store.backend != crate::config::StoreBackend::Etcd {
        return Err(BackupError::Other("--join adds a leader to a cluster in etcd: give --store etcd".into()));
    }
    let ca = bramble_transport::pki::Ca::load(&snapshot.ca_cert, &snapshot.ca_key)
        .map_err(|e| BackupError::Contents(format!("the CA in the backup: {e}")))?;
    let mkdir = |p: &Path, mode: u32| {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(mode).create(p).map_err(io(p.display().to_string()))
    };
    let mut ops: Vec<TxnOp> = snapshot
        .objects
        .iter()
        .filter(|(k, _)| k.as_str() != crate::objects::keys::RESTORED)
        .map(|(k, v)| TxnOp::Put { key: k.clone(), value: v.clone().into_bytes(), expect: Expect::Absent })
        .collect();
    // Without --prune, what boards run that the backup does not know is kept until every board
    // has been seen (a backup may be older than the cluster it replaces).
    if !prune {
        let marker = serde_json::json!({ "at_ms": bramble_proto::time::now_ms() }).to_string();
        ops.push(TxnOp::Put {
            key: crate::objects::keys::RESTORED.into(),
            value: marker.into_bytes(),
            expect: Expect::Any,
        });
    }
    // The store first: if it cannot be made, nothing marks the dir as a cluster (and etcd's
    // refusals come before the data dir is made at all).
    if config.store.backend == crate::config::StoreBackend::Etcd {
        restore_into_etcd(&config.store, &ops, snapshot, target.join)?;
        bramble_proto::fsutil::private_dir(data_dir).map_err(io(data_dir.display().to_string()))?;
        mkdir(&layout.pki(), 0o700)?;
    } else {
        bramble_proto::fsutil::private_dir(data_dir).map_err(io(data_dir.display().to_string()))?;
        mkdir(&layout.pki(), 0o700)?;
        let store = RedbStore::open(&layout.store()).map_err(|e| BackupError::Other(format!("the store: {e}")))?;
        if !ops.is_empty() {
            store.txn(&ops).map_err(|e| BackupError::Other(format!("writing the objects: {e}")))?;
        }
        // Closed before the leader opens it.
        drop(store);
    }
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
        // The CLI config asks this leader first (a restore onto another board has another
        // address), then the ones it knew.
        let text = match bramble_transport::admin::AdminConfig::parse("admin.toml (in the backup)", admin) {
            Ok(mut a) => {
                let me = if config.advertise().ip().is_unspecified() {
                    format!("127.0.0.1:{}", config.advertise().port())
                } else {
                    config.advertise().to_string()
                };
                a.leaders.retain(|l| *l != me);
                a.leaders.insert(0, me);
                a.render()
            }
            Err(_) => admin.clone(),
        };
        write(layout.admin_config(), &text, 0o600)?;
    }
    write(layout.ca_cert(), &snapshot.ca_cert, 0o644)?;
    if target.join {
        return Ok(format!(
            "made leader {} of cluster {} (CA {}, store in etcd at {}) in {}; start it with: bramble-leader run --config {}\n\
             add {} to the leaders in admin.toml and in the boards' agent.toml",
            config.store.name.clone().unwrap_or_else(|| "(the host name)".into()),
            snapshot.cluster_name,
            &snapshot.ca_fingerprint[..16],
            config.store.endpoints.join(", "),
            data_dir.display(),
            layout.config().display(),
            config.advertise(),
        ));
    }
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

    fn app(extra: &str) -> String {
        let text = format!("[[app]]\nname = \"web\"\nimage = \"busybox\"\n{extra}");
        let spec = bramble_proto::manifest::parse_manifest("t.toml", &text).unwrap().apps.remove(0);
        let meta = bramble_proto::model::ObjectMeta {
            name: "web".into(),
            generation: 1,
            revision: 0,
            created_ms: 1,
            changed_by: None,
        };
        serde_json::to_string(&bramble_proto::model::App { meta, spec, cronjob: None }).unwrap()
    }

    fn ingress(name: &str, path: &str) -> String {
        let meta = bramble_proto::model::ObjectMeta {
            name: name.into(),
            generation: 1,
            revision: 0,
            created_ms: 1,
            changed_by: None,
        };
        let text = format!("[[ingress]]\nname = \"{name}\"\nhost = \"shop.lan\"\n[[ingress.paths]]\npath = \"/\"\nservice = \"web\"\nport = 80\n");
        let mut spec = bramble_proto::manifest::parse_manifest("t.toml", &text).unwrap().ingresses.remove(0);
        spec.paths[0].path = path.into();
        serde_json::to_string(&bramble_proto::model::Ingress { meta, spec }).unwrap()
    }

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
            objects: [("/apps/web".to_string(), app("")), ("/nodes/pi-1".into(), "{}".into())].into(),
        }
    }

    #[test]
    fn restore_makes_a_data_dir_once() {
        let t = tempfile::tempdir().unwrap();
        let s = snapshot();
        let said = restore(&s, &t.path().join("l"), Some("127.0.0.1:9443".parse().unwrap()), false).unwrap();
        assert!(said.starts_with("restored cluster t (2 objects"), "{said}");
        let cfg = crate::LeaderConfig::load(&t.path().join("l/leader.toml")).unwrap();
        assert_eq!((cfg.data_dir, cfg.listen.port()), (t.path().join("l"), 9443));
        let store = RedbStore::open(&t.path().join("l/store.redb")).unwrap();
        assert_eq!(store.list("/").unwrap().len(), 3, "the objects and the restore marker");
        drop(store);
        assert!(matches!(restore(&s, &t.path().join("l"), None, true), Err(BackupError::Exists(_))));
    }

    /// A backup edited by hand (or by whoever held it) is no way around apply's checks.
    #[test]
    fn a_backup_with_objects_apply_would_refuse_is_refused_whole() {
        let t = tempfile::tempdir().unwrap();
        for (objects, says) in [
            (
                vec![(
                    "/apps/web".to_string(),
                    app("[[app.volumes]]\ntype = \"host\"\nhost_path = \"/srv\"\nnode_label = \"x\"\npath = \"/m\"\n")
                        .replace("/srv", "/etc"),
                )],
                "app/web: volumes[0].host_path: /etc is the board's system directory /etc",
            ),
            (
                vec![("/apps/web".to_string(), app("ports = [{ container = 1, host = 7443, protocol = \"udp\" }]\n"))],
                "host port 7443/udp is the cluster's own",
            ),
            (vec![("/apps/other".to_string(), app(""))], "stored under /apps/other, which names another object"),
            (vec![("/apps/web".to_string(), "{".to_string())], "stored object /apps/web is corrupt"),
            // An ingress whose service the backup lacks, and one with a Caddy placeholder in its
            // path (hand-edited: apply refuses both).
            (vec![("/ingresses/shop".to_string(), ingress("shop", "/"))], "service web does not exist"),
            (
                vec![("/ingresses/shop".to_string(), ingress("shop", "/{http.request.uri}"))],
                "ingress/shop: paths[0].path",
            ),
            (vec![("/ingresses/other".to_string(), ingress("shop", "/"))], "stored under /ingresses/other"),
        ] {
            let s = Snapshot { objects: objects.into_iter().collect(), ..snapshot() };
            let dir = t.path().join("x");
            let e = restore(&s, &dir, None, false).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("nothing was written"), "{e}");
            assert!(!dir.exists(), "nothing was written");
        }
    }
}

/// Counts of scheduled backups, for `/metrics`.
#[derive(Debug, Default)]
pub struct BackupStats {
    pub failures: std::sync::atomic::AtomicU64,
    /// When the last scheduled backup was written (ms; 0: none yet).
    pub last_success_ms: std::sync::atomic::AtomicU64,
}

/// One scheduled backup into `dir`, sealed with the first line of `passphrase_file`; the oldest
/// beyond `keep` are removed. Returns the file written.
/// What scheduled backups and the restore hold-back use.
#[derive(Debug, Clone)]
pub struct Handles {
    pub objects: crate::objects::Objects,
    pub events: std::sync::Arc<crate::events::Events>,
    /// Which boards have been seen since the leader started.
    pub registry: std::sync::Arc<crate::boards::nodes::NodeRegistry>,
    /// Restored without `--prune` and not every board seen yet (sessions read it).
    pub restored: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub backups: std::sync::Arc<BackupStats>,
    /// The data dir and cluster name (backups read the PKI and configs there; none in tests).
    pub data_dir: Option<(std::path::PathBuf, String)>,
}

pub fn scheduled_once(
    api: &Handles,
    dir: &Path,
    passphrase_file: &Path,
    keep: u32,
) -> Result<std::path::PathBuf, BackupError> {
    let text = std::fs::read_to_string(passphrase_file).map_err(io(passphrase_file.display().to_string()))?;
    let passphrase = text.lines().next().unwrap_or("").as_bytes().to_vec();
    let (data_dir, name) = api.data_dir.as_ref().ok_or_else(|| BackupError::Other("no data dir".into()))?;
    let snapshot = take(api.objects.store().as_ref(), data_dir, name)?;
    let sealed =
        bramble_transport::backup::seal(&snapshot, &passphrase).map_err(|e| BackupError::Other(e.to_string()))?;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir.display().to_string()))?;
    }
    let prefix = format!("bramble-{name}-");
    // Milliseconds, zero-padded: names sort by time.
    let path = dir.join(format!("{prefix}{:015}.bak", snapshot.created_ms));
    bramble_proto::fsutil::write_file_atomic(&path, &sealed, 0o600).map_err(io(path.display().to_string()))?;
    let mut ours: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir.display().to_string()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".bak"))
        })
        .collect();
    ours.sort();
    let extra = ours.len().saturating_sub(keep as usize);
    for old in &ours[..extra] {
        let _ = std::fs::remove_file(old);
    }
    Ok(path)
}

/// Backs the cluster up every `config.every` (the first soon after start) until `cancel`; each
/// result is an event, failures are counted for `/metrics`.
pub async fn schedule(api: Handles, config: crate::config::BackupConfig, cancel: tokio_util::sync::CancellationToken) {
    let (Some(dir), Some(pass)) = (config.dir.clone(), config.passphrase_file.clone()) else { return };
    let mut wait = std::time::Duration::from_secs(5).min(config.every.0);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = config.every.0;
        let (a, d, p) = (api.clone(), dir.clone(), pass.clone());
        let keep = config.keep;
        let result = tokio::task::spawn_blocking(move || scheduled_once(&a, &d, &p, keep))
            .await
            .unwrap_or_else(|e| Err(BackupError::Other(e.to_string())));
        let now = bramble_proto::time::now_ms();
        let leader = bramble_proto::model::ObjectRef::node("leader");
        match result {
            Ok(path) => {
                api.backups.last_success_ms.store(now, std::sync::atomic::Ordering::Relaxed);
                let message = format!("scheduled backup written to {}", path.display());
                tracing::info!("{message}");
                api.events.record(bramble_proto::model::Event::new(
                    now,
                    leader,
                    bramble_proto::model::EventReason::BackupTaken,
                    message,
                ));
            }
            Err(e) => {
                api.backups.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let message = format!("scheduled backup into {} failed: {e}", dir.display());
                tracing::warn!("{message}");
                api.events.record(bramble_proto::model::Event::new(
                    now,
                    leader,
                    bramble_proto::model::EventReason::BackupFailed,
                    message,
                ));
            }
        }
    }
}

/// After a restore without `--prune`: once every board in the store has been seen, the marker
/// goes and sessions send boards their whole sets (which stops what the backup did not know).
pub async fn release_when_all_seen(api: Handles, cancel: tokio_util::sync::CancellationToken) {
    use std::sync::atomic::Ordering;
    match api.objects.store().get(crate::objects::keys::RESTORED) {
        Ok(Some(_)) => api.restored.store(true, Ordering::Relaxed),
        _ => return,
    }
    tracing::info!("restored from a backup: boards keep what it does not know until every board has been seen");
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = bramble_proto::time::now_ms();
        match release_once(&api.objects, &api.registry, &api.restored, &api.events, now) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!("restore: {e}"),
        }
    }
}

/// One look of the restore hold-back: once every board has been seen since this leader started,
/// clears the store's marker and `restored` (sessions then send whole sets again) and says so in an
/// event. True when released (or nothing was held).
pub fn release_once(
    objects: &crate::objects::Objects,
    registry: &crate::boards::nodes::NodeRegistry,
    restored: &std::sync::atomic::AtomicBool,
    events: &crate::events::Events,
    now: u64,
) -> Result<bool, String> {
    use std::sync::atomic::Ordering;
    if !restored.load(Ordering::Relaxed) {
        return Ok(true);
    }
    let nodes = objects.list::<bramble_proto::model::Node>().map_err(|e| format!("cannot list nodes: {e}"))?;
    if nodes.iter().any(|v| registry.view(&v.value.meta.name, now).last_seen_ms == 0) {
        return Ok(false);
    }
    objects
        .store()
        .delete(crate::objects::keys::RESTORED, Expect::Any)
        .map_err(|e| format!("cannot clear the marker: {e}"))?;
    restored.store(false, Ordering::Relaxed);
    let message = format!(
        "every board ({}) has been seen since the restore: boards now run exactly what the leader holds",
        nodes.len()
    );
    tracing::info!("{message}");
    events.record(bramble_proto::model::Event::new(
        now,
        bramble_proto::model::ObjectRef::node("leader"),
        bramble_proto::model::EventReason::Configured,
        message,
    ));
    Ok(true)
}
