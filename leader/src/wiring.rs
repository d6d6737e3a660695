//! The leader's wiring, and the only place that starts its tasks: opens the store and the PKI,
//! waits to be elected (etcd), builds the shared handles once and gives each task the few it uses
//! — the QUIC edge (API calls, relays, sessions), the readiness monitor, the replica controller,
//! the autoscaler, the cron controller, scheduled backups and the restore hold-back, `/metrics`
//! with the dashboard, the serving certificate's renewal — and owns their shutdown order ([`RunningLeader::shutdown`]).

use crate::api::Api;
use crate::boards::nodes::NodeRegistry;
use crate::config::{LeaderConfig, StoreBackend};
use crate::edge::{accept_loop, renew_own_certificate, standby_loop, Edge, OwnCert};
use crate::events::Events;
use crate::ha::Ha;
use crate::init::Layout;
use crate::objects::Objects;
use crate::store::{EtcdStore, RedbStore, Store, StoreError};
use bramble_transport::pki::{Ca, PkiError};
use bramble_transport::quic::server_endpoint;
use bramble_transport::tls::{server_config, TlsError};
use bramble_transport::TransportError;
use quinn::Endpoint;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("{path} is not an initialised leader data dir (no pki/ca.crt); run `bramble-leader init` first")]
    NotInitialised { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Config(String),
}

/// A leader that is serving.
#[derive(Debug)]
pub struct RunningLeader {
    pub local_addr: SocketAddr,
    pub ca_fingerprint: String,
    pub api: Arc<Api>,
    endpoint: Endpoint,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Fires when the leader lost its etcd lease (it must stop: another may be active).
    lost: CancellationToken,
}

impl RunningLeader {
    /// Whether it stopped because it lost its lease.
    pub fn lost_lease(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Stops accepting, closes every connection and waits (at most `deadline`) for tasks to end.
    pub async fn shutdown(self, deadline: Duration) {
        info!("leader shutting down");
        self.cancel.cancel();
        // A clean stop hands over at once instead of after the lease's TTL.
        if let Some(ha) = &self.api.ha {
            if !self.lost.is_cancelled() {
                ha.resign();
            }
        }
        self.endpoint.close(quinn::VarInt::from_u32(0), b"leader shutting down");
        self.tasks.close();
        let drain = async {
            self.tasks.wait().await;
            self.endpoint.wait_idle().await;
        };
        if tokio::time::timeout(deadline, drain).await.is_err() {
            warn!("shutdown deadline of {deadline:?} passed; exiting with work still open");
        }
    }

    pub fn cancelled(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

fn read(path: PathBuf) -> Result<String, LeaderError> {
    std::fs::read_to_string(&path).map_err(|source| LeaderError::Read { path, source })
}

/// Opens the store and PKI of `config.data_dir` and starts serving on `config.listen`.
pub async fn start(config: &LeaderConfig) -> Result<RunningLeader, LeaderError> {
    start_with(config, || {}).await
}

/// Opens the etcd store, retrying (with a word in the log) until etcd answers.
async fn open_etcd(config: &LeaderConfig) -> Arc<EtcdStore> {
    let options = config.store.etcd();
    let mut delay = Duration::from_millis(500);
    loop {
        let o = options.clone();
        match tokio::task::spawn_blocking(move || EtcdStore::open(&o)).await {
            Ok(Ok(s)) => return Arc::new(s),
            Ok(Err(e)) => warn!("{e}; retrying in {:.1}s (boards keep running their containers)", delay.as_secs_f64()),
            Err(e) => warn!("opening the etcd store: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Like [`start`]; with the etcd store, `on_standby` is called once this leader is serving as a
/// standby, and this returns when it has been elected.
pub async fn start_with(config: &LeaderConfig, on_standby: impl FnOnce()) -> Result<RunningLeader, LeaderError> {
    let layout = Layout::new(&config.data_dir);
    if !layout.is_initialised() {
        return Err(LeaderError::NotInitialised { path: config.data_dir.clone() });
    }
    let ca_pem = read(layout.ca_cert())?;
    let ca = Ca::load(&ca_pem, &read(layout.ca_key())?)?;
    // A renewal of the serving certificate a crash interrupted is finished (or forgotten).
    bramble_proto::fsutil::finish_pair(&layout.leader_key(), &layout.leader_cert())
        .map_err(|source| LeaderError::Read { path: layout.leader_cert(), source })?;
    let tls = server_config(&ca_pem, &read(layout.leader_cert())?, &read(layout.leader_key())?)?;
    let endpoint = server_endpoint(config.listen, tls)?;
    let local_addr = endpoint.local_addr().map_err(|source| TransportError::Bind { addr: config.listen, source })?;
    let name = config.store.name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "leader".into())
    });
    let lost = CancellationToken::new();
    let (store, ha): (Arc<dyn Store>, _) = match config.store.backend {
        StoreBackend::Redb => (Arc::new(RedbStore::open(&layout.store())?), None),
        StoreBackend::Etcd => {
            let etcd = open_etcd(config).await;
            // Before standing for election (and without writing): a leader of another cluster
            // must not win it.
            refuse_another_ca(etcd.as_ref(), &ca.fingerprint())?;
            let advertise = config.advertise().to_string();
            let ha = loop {
                match Ha::join(
                    etcd.client(),
                    etcd.runtime(),
                    &config.store.etcd(),
                    &name,
                    &advertise,
                    config.store.lease_ttl.0,
                )
                .await
                {
                    Ok(ha) => break ha,
                    Err(e) => {
                        warn!("{e}; retrying in 1s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            // Until elected: answer `get leaders`, send everyone else to the active leader.
            let standby = CancellationToken::new();
            let standby_tasks = TaskTracker::new();
            standby_tasks.spawn(standby_loop(endpoint.clone(), ha.clone(), standby.clone(), standby_tasks.clone()));
            info!(%local_addr, leader = %name, "standing by: waiting to be elected");
            on_standby();
            let fence = ha.campaign().await?;
            etcd.set_fence(Some(fence));
            standby.cancel();
            standby_tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(2), standby_tasks.wait()).await;
            let l = ha.lost();
            let mine = lost.clone();
            tokio::spawn(async move {
                l.cancelled().await;
                mine.cancel();
            });
            let store: Arc<dyn Store> = etcd;
            (store, Some(ha))
        }
    };
    let events = Arc::new(Events::new());
    let registry = Arc::new(
        NodeRegistry::new(config.nodes.not_ready_after.0, events.clone()).with_heartbeat(config.nodes.heartbeat.0),
    );
    let ca_fingerprint = ca.fingerprint();
    let objects = Objects::new(store);
    check_ca(&objects, &ca_fingerprint)?;
    crate::network::ensure_settings(&objects, &config.network).map_err(|e| LeaderError::Config(e.to_string()))?;
    let keyring = crate::trust::secrets::Keyring::load_or_create(&layout.secrets_key())
        .map_err(|e| LeaderError::Config(e.to_string()))?;
    // The first admin (init's admin.toml) is a user like the others: listed, revocable.
    if let Ok(text) = std::fs::read_to_string(layout.admin_config()) {
        if let Err(e) = crate::trust::users::record_init_admin(&objects, &text, bramble_proto::time::now_ms()) {
            warn!("cannot record the first admin as a user: {e}");
        }
    }
    let mut api = Api::new(objects, ca, registry, events, config.network.clone()).with_keyring(keyring);
    api.node_cert_lifetime = config.pki.node_cert_lifetime.0;
    api.me.name = name;
    api.me.addr = config.advertise().to_string();
    if let Some(ha) = &ha {
        api.me = ha.me();
    } else {
        api.store_path = Some(layout.store());
    }
    api.ha = ha;
    api.data_dir = Some((config.data_dir.clone(), config.cluster_name.clone()));
    let metrics_port = config.metrics.listen.as_deref().and_then(|l| l.parse::<std::net::SocketAddr>().ok());
    api.reserved = Arc::new(crate::admission::Reserved::of_leader(
        local_addr.port(),
        metrics_port.map(|m| m.port()),
        Some(&config.data_dir),
    ));
    // Before any session: a restored leader holds back whole sets from the first board on.
    if api.objects.store().get(crate::objects::keys::RESTORED).ok().flatten().is_some() {
        api.restored.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let acme_root = config.ingress.acme_ca_root.as_ref().and_then(|f| match std::fs::read_to_string(f) {
        Ok(pem) => Some(pem),
        Err(e) => {
            warn!("ingress: cannot read acme_ca_root {}: {e}; the proxy trusts only the usual CAs", f.display());
            None
        }
    });
    api.ingress = Arc::new(crate::ingress::ProxyState::new(config.ingress.clone(), acme_root));
    let api = Arc::new(api);
    let cancel = CancellationToken::new();
    {
        // Lost the lease: stop acting at once (fenced writes already fail); systemd starts this
        // leader again as a standby.
        let (lost, cancel) = (lost.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = lost.cancelled() => {
                    tracing::error!("lost the leader lease: stopping, so that another leader acts alone");
                    cancel.cancel();
                }
                _ = cancel.cancelled() => {}
            }
        });
    }
    // Each task gets the handles it uses, and nothing else.
    let tasks = TaskTracker::new();
    let heartbeat = config.nodes.heartbeat.0;
    let mirror = match &config.mirror {
        Some(m) => match crate::mirror::Mirror::open(m.clone(), &config.data_dir) {
            Ok(m) => {
                info!(upstreams = ?config.mirror.as_ref().map(|c| c.upstreams.clone()), cached = m.cached_bytes(), "mirror ready");
                Some(Arc::new(m))
            }
            Err(e) => {
                warn!("the mirror is off: {e}");
                None
            }
        },
        None => None,
    };
    let edge = Arc::new(Edge {
        api: api.clone(),
        relay: relay_handles(&api, mirror),
        sessions: Arc::new(session_handles(&api)),
        heartbeat,
    });
    tasks.spawn(accept_loop(endpoint.clone(), edge, cancel.clone(), tasks.clone()));
    // A board marked NotReady wakes the replica controller at once (its replicas are Lost).
    let published = api.published.clone();
    let not_ready = move || published.kick.notify_one();
    tasks.spawn(crate::boards::nodes::monitor(api.objects.clone(), api.registry.clone(), not_ready, cancel.clone()));
    tasks.spawn(crate::controllers::autoscaler::run(autoscaler_handles(&api), cancel.clone()));
    let cron = crate::controllers::cron::Handles {
        objects: api.objects.clone(),
        events: api.events.clone(),
        cron: Default::default(),
        published: api.published.clone(),
    };
    tasks.spawn(crate::controllers::cron::run(cron, cancel.clone()));
    let ingress = crate::ingress_controller::Handles::of(&api);
    tasks.spawn(crate::ingress_controller::run(ingress, cancel.clone()));
    tasks.spawn(crate::backup::schedule(backup_handles(&api), config.backup.clone(), cancel.clone()));
    tasks.spawn(crate::backup::release_when_all_seen(backup_handles(&api), cancel.clone()));
    if let Some(listen) = config.metrics.listen.clone() {
        let token = config.metrics.token_file.as_ref().and_then(|f| match std::fs::read_to_string(f) {
            Ok(t) => t.lines().next().map(|l| l.trim().to_string()).filter(|t| !t.is_empty()),
            Err(e) => {
                warn!("metrics: cannot read the token file {}: {e}; the dashboard shows no details", f.display());
                None
            }
        });
        let serve = crate::observability::metrics::serve(
            metrics_handles(&api),
            listen,
            config.cluster_name.clone(),
            token,
            cancel.clone(),
        );
        tasks.spawn(serve);
    }
    let renewal =
        OwnCert { layout: layout.clone(), ca_pem: ca_pem.clone(), lifetime: config.pki.leader_cert_lifetime.0 };
    tasks.spawn(renew_own_certificate(endpoint.clone(), api.clone(), renewal, cancel.clone()));
    tasks.spawn(crate::controllers::run::run(Arc::new(api.context()), api.published.clone(), cancel.clone()));
    info!(%local_addr, ca = %ca_fingerprint, "leader serving");
    Ok(RunningLeader { local_addr, ca_fingerprint, api, endpoint, cancel, tasks, lost })
}

/// Refuses a store that holds a cluster of another CA (boards would not trust this leader; a
/// second leader on the wrong etcd prefix). Reads only.
fn refuse_another_ca(store: &dyn Store, fingerprint: &str) -> Result<(), LeaderError> {
    match store.get(crate::objects::keys::CA)? {
        Some(kv) if kv.value != fingerprint.as_bytes() => Err(LeaderError::Config(format!(
            "the store holds the cluster of another CA ({}…) than this leader's ({}…); is this the right store (etcd prefix)?",
            String::from_utf8_lossy(&kv.value).chars().take(16).collect::<String>(),
            &fingerprint[..16]
        ))),
        _ => Ok(()),
    }
}

/// [`refuse_another_ca`], then records the fingerprint in a store that has none yet.
fn check_ca(objects: &Objects, fingerprint: &str) -> Result<(), LeaderError> {
    let store = objects.store();
    refuse_another_ca(store.as_ref(), fingerprint)?;
    if store.get(crate::objects::keys::CA)?.is_some() {
        return Ok(());
    }
    match store.put(crate::objects::keys::CA, fingerprint.as_bytes(), crate::store::Expect::Absent) {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What the autoscaler's loop uses of the shared handles.
fn autoscaler_handles(api: &Api) -> crate::controllers::autoscaler::Handles {
    crate::controllers::autoscaler::Handles {
        objects: api.objects.clone(),
        usage: api.usage.clone(),
        events: api.events.clone(),
        autoscaler: api.autoscaler.clone(),
        published: api.published.clone(),
    }
}

/// What scheduled backups and the restore hold-back use.
fn backup_handles(api: &Api) -> crate::backup::Handles {
    crate::backup::Handles {
        objects: api.objects.clone(),
        events: api.events.clone(),
        registry: api.registry.clone(),
        restored: api.restored.clone(),
        backups: api.backups.clone(),
        data_dir: api.data_dir.clone(),
    }
}

/// What `/metrics` and the dashboard read.
pub fn metrics_handles(api: &Api) -> crate::observability::metrics::Handles {
    crate::observability::metrics::Handles {
        dashboard: crate::observability::dashboard::Handles {
            objects: api.objects.clone(),
            registry: api.registry.clone(),
            usage: api.usage.clone(),
            events: api.events.clone(),
        },
        store_path: api.store_path.clone(),
        backups: api.backups.clone(),
        published: api.published.clone(),
        ingress: api.ingress.clone(),
    }
}

/// What relaying logs, exec, images and volumes to boards uses.
fn relay_handles(api: &Api, mirror: Option<Arc<crate::mirror::Mirror>>) -> crate::edge::relay::Handles {
    crate::edge::relay::Handles {
        objects: api.objects.clone(),
        registry: api.registry.clone(),
        published: api.published.clone(),
        keyring: api.keyring.clone(),
        observed: api.observed.clone(),
        fetching: Default::default(),
        mirror,
    }
}

/// What boards' sessions use.
pub fn session_handles(api: &Api) -> crate::sessions::Handles {
    crate::sessions::Handles {
        ctx: api.context(),
        published: api.published.clone(),
        restored: api.restored.clone(),
        keyring: api.keyring.clone(),
        usage: api.usage.clone(),
        ca: api.ca.clone(),
        node_cert_lifetime: api.node_cert_lifetime,
    }
}
