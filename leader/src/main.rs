//! `bramble-leader`: keeps the cluster's desired state and serves the API.

use anyhow::Context;
use bramble_daemon::signals::Shutdown;
use bramble_daemon::{observability, systemd};
use bramble_leader::config::{LeaderConfig, StoreBackend, StoreConfig, DEFAULT_DATA_DIR, DEFAULT_LISTEN};
use bramble_leader::init::{init, init_with, Layout};
use bramble_leader::RunningLeader;
use bramble_proto::network;
use bramble_proto::report::Report;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "bramble-leader",
    version,
    about = "The Bramble leader: desired state, scheduling and the cluster API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new cluster: data dir, CA, certificates, leader.toml and admin.toml.
    Init {
        #[arg(long, env = "BRAMBLE_LEADER_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// UDP address to serve QUIC on.
        #[arg(long, env = "BRAMBLE_LEADER_LISTEN", default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        #[arg(long, default_value = "bramble")]
        cluster_name: String,
        /// Also run an agent inside the leader (a one-board cluster).
        #[arg(long)]
        embedded_agent: bool,
        #[command(flatten)]
        network: NetworkArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Serve the cluster.
    Run {
        /// The config file (default: <data-dir>/leader.toml).
        #[arg(long, short, env = "BRAMBLE_LEADER_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "BRAMBLE_LEADER_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, env = "BRAMBLE_LEADER_LISTEN")]
        listen: Option<SocketAddr>,
    },
    /// The key that seals secrets in the store.
    Secrets {
        #[command(subcommand)]
        what: SecretsCommand,
    },
    /// Make a new leader from a backup (`bramble backup`): the same CA, secrets and objects; boards
    /// reconnect by themselves. Refused where a cluster already is.
    Restore {
        #[arg(long, env = "BRAMBLE_LEADER_DATA_DIR")]
        data_dir: PathBuf,
        /// A file whose first line is the backup's passphrase.
        #[arg(long)]
        passphrase_file: PathBuf,
        /// The address to serve on (default: the backed-up leader's).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Stop at once what boards run that the backup does not know (default: only once the
        /// leader has seen every board).
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        store: StoreArgs,
        /// Add this leader to the cluster already in etcd (the backup gives it the CA and the
        /// secrets key; the objects are there already).
        #[arg(long)]
        join: bool,
        /// The backup file.
        file: PathBuf,
    },
    /// Initialise on first use, then run a leader with an embedded agent: a one-board cluster.
    Up {
        #[arg(long, env = "BRAMBLE_LEADER_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, env = "BRAMBLE_LEADER_LISTEN", default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Re-seal every secret under a new key and drop the old one (stop the leader — every
    /// leader, on etcd — first: the store is opened directly).
    RotateKey {
        #[arg(long, env = "BRAMBLE_LEADER_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

/// Re-seals every secret in the store of `data_dir` under a new key.
fn rotate_key(data_dir: &std::path::Path) -> Result<String, String> {
    let layout = bramble_leader::init::Layout::new(data_dir);
    if !layout.is_initialised() {
        return Err(format!("no cluster in {}", data_dir.display()));
    }
    let config = LeaderConfig::load(&layout.config()).map_err(|e| e.to_string())?;
    let on_etcd = config.store.backend == StoreBackend::Etcd;
    let store: std::sync::Arc<dyn bramble_leader::store::Store> = if on_etcd {
        std::sync::Arc::new(bramble_leader::store::EtcdStore::open(&config.store.etcd()).map_err(|e| e.to_string())?)
    } else {
        std::sync::Arc::new(bramble_leader::store::RedbStore::open(&layout.store()).map_err(|e| {
            format!("cannot open the store {} ({e}); is the leader running? stop it first", layout.store().display())
        })?)
    };
    let objects = bramble_leader::objects::Objects::new(store);
    let mut keyring =
        bramble_leader::trust::secrets::Keyring::load_or_create(&layout.secrets_key()).map_err(|e| e.to_string())?;
    let (id, n) = bramble_leader::trust::secrets::rotate(&objects, &mut keyring)?;
    let mut said =
        format!("re-sealed {n} secrets with key {id}; the old key is gone from {}", layout.secrets_key().display());
    if on_etcd {
        said.push_str(&format!(
            "\ncopy {} (0600) to every other leader before starting them: they share the store",
            layout.secrets_key().display()
        ));
    }
    Ok(said)
}

/// Where the cluster is kept (`[store]` in leader.toml).
#[derive(clap::Args)]
struct StoreArgs {
    /// redb (one leader, a file in the data dir) or etcd (highly available leaders).
    #[arg(long, value_parser = ["redb", "etcd"])]
    store: Option<String>,
    /// etcd's client URLs, comma-separated (http://10.0.0.1:2379,…).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// The key prefix of this cluster in etcd.
    #[arg(long, default_value = "/bramble")]
    etcd_prefix: String,
    /// TLS to etcd: its CA, and this leader's client certificate and key (PEM files).
    #[arg(long)]
    etcd_ca: Option<PathBuf>,
    #[arg(long)]
    etcd_cert: Option<PathBuf>,
    #[arg(long)]
    etcd_key: Option<PathBuf>,
    /// How boards and the CLI reach this leader (default: --listen).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// This leader's name among the leaders (default: the host name).
    #[arg(long)]
    leader_name: Option<String>,
    /// The active leader's lease (1s–60s): failover takes about this long.
    #[arg(long)]
    lease_ttl: Option<bramble_proto::quantity::HumanDuration>,
}

impl StoreArgs {
    /// The settings the flags give; none when no `--store` was given.
    fn settings(self) -> Option<StoreConfig> {
        let backend = match self.store.as_deref()? {
            "etcd" => StoreBackend::Etcd,
            _ => StoreBackend::Redb,
        };
        let mut s = StoreConfig {
            backend,
            endpoints: self.etcd_endpoints,
            prefix: self.etcd_prefix,
            ca_file: self.etcd_ca,
            cert_file: self.etcd_cert,
            key_file: self.etcd_key,
            advertise: self.advertise,
            name: self.leader_name,
            ..StoreConfig::default()
        };
        if let Some(t) = self.lease_ttl {
            s.lease_ttl = t;
        }
        Some(s)
    }
}

/// The cluster's network, chosen once at init.
#[derive(clap::Args)]
struct NetworkArgs {
    /// Pod addresses; each board gets a block of --node-prefix bits.
    #[arg(long, default_value = network::DEFAULT_CLUSTER_CIDR)]
    cluster_cidr: network::Cidr,
    /// Service virtual IPs.
    #[arg(long, default_value = network::DEFAULT_SERVICE_CIDR)]
    service_cidr: network::Cidr,
    /// The prefix length of each board's pod subnet (24: 253 pods a board).
    #[arg(long, default_value_t = network::DEFAULT_NODE_PREFIX)]
    node_prefix: u8,
    /// The DNS domain of services inside containers.
    #[arg(long, default_value = network::DEFAULT_DOMAIN)]
    cluster_domain: String,
    /// How pod traffic crosses boards: direct (one LAN) or vxlan (boards on different subnets).
    #[arg(long, default_value = "direct", value_parser = ["direct", "vxlan"])]
    network_backend: String,
}

impl NetworkArgs {
    fn settings(self) -> network::ClusterNetwork {
        network::ClusterNetwork {
            cluster_cidr: self.cluster_cidr,
            service_cidr: self.service_cidr,
            node_prefix: self.node_prefix,
            domain: self.cluster_domain,
            backend: if self.network_backend == "vxlan" { network::Backend::Vxlan } else { network::Backend::Direct },
            ..Default::default()
        }
    }
}

const EXIT_CONFIG: u8 = 2;
const EXIT_RUNTIME: u8 = 1;

fn main() -> ExitCode {
    bramble_daemon::alloc::limit_arenas();
    bramble_daemon::hardening::harden();
    let cli = Cli::parse();
    let config = match cli.command {
        Command::Init { data_dir, listen, cluster_name, embedded_agent, network, store } => {
            let store = store.settings().unwrap_or_default();
            return match init_with(&data_dir, listen, &cluster_name, embedded_agent, &network.settings(), &store) {
                Ok(out) => {
                    println!("initialised cluster {cluster_name:?} in {}", data_dir.display());
                    println!("  CA fingerprint: {}", out.ca_fingerprint);
                    println!("  leader config:  {}", out.config_path.display());
                    println!("  admin config:   {} (copy to ~/.config/bramble/config.toml)", out.admin_path.display());
                    println!("start it with: bramble-leader run --config {}", out.config_path.display());
                    if data_dir == Path::new("/var/lib/bramble/leader") {
                        println!("  (from the package: systemctl enable --now bramble-leader runs that)");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bramble-leader: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            };
        }
        Command::Secrets { what: SecretsCommand::RotateKey { data_dir } } => {
            return match rotate_key(&data_dir) {
                Ok(said) => {
                    println!("{said}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bramble-leader: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            };
        }
        Command::Restore { data_dir, passphrase_file, listen, prune, store, join, file } => {
            let target = bramble_leader::backup::Target { listen, prune, store: store.settings(), join };
            let restored = (|| -> Result<String, String> {
                let pass = std::fs::read_to_string(&passphrase_file)
                    .map_err(|e| format!("{}: {e}", passphrase_file.display()))?;
                let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
                let snapshot = bramble_transport::backup::open(&bytes, pass.lines().next().unwrap_or("").as_bytes())
                    .map_err(|e| format!("{}: {e}; nothing was written", file.display()))?;
                bramble_leader::backup::restore_with(&snapshot, &data_dir, &target).map_err(|e| e.to_string())
            })();
            return match restored {
                Ok(said) => {
                    println!("{said}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bramble-leader restore: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            };
        }
        Command::Run { config, data_dir, listen } => load(config, data_dir, listen),
        Command::Up { data_dir, listen } => up(data_dir, listen),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bramble-leader: {}", Report(e.as_ref()));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    observability::init(config.log.level.as_deref());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bramble-leader: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    bramble_daemon::alloc::trim_heap_every(Duration::from_secs(10));
    match rt.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", Report(e.as_ref()));
            eprintln!("bramble-leader: {}", Report(e.as_ref()));
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Tells systemd `WATCHDOG=1` every half interval while the leader is alive: its async runtime
/// runs this task, and its store answers a read (of the nodes) on the blocking pool within the
/// half interval. A hung store or a starved runtime stops the pings, and systemd restarts the
/// leader (boards keep their containers meanwhile).
async fn watchdog(interval: Duration, api: std::sync::Arc<bramble_leader::api::Api>) {
    let mut said = false;
    loop {
        tokio::time::sleep(interval / 2).await;
        let a = api.clone();
        let read = tokio::task::spawn_blocking(move || a.objects.list::<bramble_proto::model::Node>().map(|n| n.len()));
        match tokio::time::timeout(interval / 2, read).await {
            Ok(Ok(Ok(_))) => {
                systemd::notify("WATCHDOG=1");
                said = false;
            }
            other if !said => {
                let why = match other {
                    Ok(Ok(Err(e))) => format!("the store refused a read: {e}"),
                    Ok(Err(e)) => format!("the store read failed: {e}"),
                    _ => format!("the store did not answer a read in {} ms", (interval / 2).as_millis()),
                };
                tracing::error!("{why}: not telling systemd's watchdog that the leader is alive");
                said = true;
            }
            _ => {}
        }
    }
}

/// file < environment < flags (clap folds the environment into the flags).
fn load(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
) -> anyhow::Result<LeaderConfig> {
    let path = match (&config, &data_dir) {
        (Some(c), _) => c.clone(),
        (None, Some(d)) => Layout::new(d).config(),
        (None, None) => Layout::new(Path::new(DEFAULT_DATA_DIR)).config(),
    };
    let mut cfg = LeaderConfig::load(&path)?;
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    if let Some(l) = listen {
        cfg.listen = l;
    }
    Ok(cfg)
}

fn default_up_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from(DEFAULT_DATA_DIR);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("bramble/leader")
}

fn up(data_dir: Option<PathBuf>, listen: SocketAddr) -> anyhow::Result<LeaderConfig> {
    let dir = data_dir.unwrap_or_else(default_up_dir);
    let layout = Layout::new(&dir);
    if !layout.is_initialised() {
        init(&dir, listen, "bramble", true, &network::ClusterNetwork::default())
            .context("cannot initialise the cluster")?;
        eprintln!("initialised a one-board cluster in {}", dir.display());
    }
    // Make `bramble` work without flags, unless the user already has a config.
    if let Some(home) = std::env::var_os("HOME") {
        let user_cfg = PathBuf::from(home).join(".config/bramble/config.toml");
        if !user_cfg.exists() {
            std::fs::create_dir_all(user_cfg.parent().expect("parent")).ok();
            if std::fs::copy(layout.admin_config(), &user_cfg).is_ok() {
                eprintln!("wrote the CLI config to {}", user_cfg.display());
            }
        }
    }
    let mut cfg = LeaderConfig::load(&layout.config())?;
    cfg.agent.enabled = true;
    eprintln!(
        "the cluster is starting; in another terminal: bramble --config {} get nodes",
        layout.admin_config().display()
    );
    Ok(cfg)
}

async fn serve(config: LeaderConfig) -> anyhow::Result<()> {
    let mut shutdown = Shutdown::install().context("cannot install signal handlers")?;
    // With etcd a leader may stand by for a long time: it is ready (serving) meanwhile.
    let starting = bramble_leader::start_with(&config, || systemd::notify("READY=1\nSTATUS=standby"));
    let leader = tokio::select! {
        l = starting => l?,
        _ = shutdown.wait() => return Ok(()),
    };
    let agent = if config.agent.enabled { Some(start_embedded_agent(&config, &leader)?) } else { None };
    let discovery = CancellationToken::new();
    if config.discovery.mdns {
        let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        let instance = if host.is_empty() { config.cluster_name.clone() } else { host };
        bramble_leader::discovery::spawn(
            instance,
            leader.local_addr.port(),
            leader.ca_fingerprint.clone(),
            discovery.clone(),
        );
    }
    if let Some(interval) = systemd::watchdog_interval() {
        tracing::info!("feeding systemd's watchdog every {} ms while the store answers", interval.as_millis() / 2);
        tokio::spawn(watchdog(interval, leader.api.clone()));
    }
    systemd::notify("READY=1");
    if config.store.backend == StoreBackend::Etcd {
        systemd::notify("STATUS=active");
    }
    let cancelled = leader.cancelled();
    tokio::select! {
        _ = shutdown.wait() => {}
        _ = cancelled.cancelled() => {}
    }
    systemd::notify("STOPPING=1");
    discovery.cancel();
    if let Some((cancel, task)) = agent {
        cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
    }
    let lost = leader.lost_lease();
    leader.shutdown(Duration::from_secs(5)).await;
    if lost {
        anyhow::bail!("lost the leader lease (etcd unreachable or too slow); stopped so that another leader acts alone")
    }
    Ok(())
}

type AgentTask = (CancellationToken, tokio::task::JoinHandle<()>);

/// Built without the embedded agent: a config that asks for one is refused, saying why.
#[cfg(not(feature = "embedded-agent"))]
fn start_embedded_agent(_: &LeaderConfig, _: &RunningLeader) -> anyhow::Result<AgentTask> {
    anyhow::bail!(
        "[agent] enabled = true, but this bramble-leader was built without the embedded agent \
         (cargo feature `embedded-agent`): run bramble-agent beside it, or set [agent] enabled = false"
    )
}

/// An agent in the leader's process. It joins with a token the leader makes for it.
#[cfg(feature = "embedded-agent")]
fn start_embedded_agent(config: &LeaderConfig, leader: &RunningLeader) -> anyhow::Result<AgentTask> {
    use bramble_agent::AgentConfig;
    let dir = config.agent.data_dir.clone().unwrap_or_else(|| config.data_dir.join("agent"));
    let mut agent = match &config.agent.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
    agent.data_dir = dir.clone();
    agent.name = config.agent.name.clone().or(agent.name);
    let port = leader.local_addr.port();
    // This board runs the leader too: its data dir is never a host volume, its ports never a
    // pod's host port.
    use bramble_proto::manifest::Protocol;
    agent.protected.dirs.push(("the leader's data dir".into(), config.data_dir.clone()));
    agent.protected.ports.push((Protocol::Udp, port, "the leader's QUIC port".into()));
    if let Some(m) = config.metrics.listen.as_deref().and_then(|l| l.parse::<SocketAddr>().ok()) {
        agent.protected.ports.push((Protocol::Tcp, m.port(), "the leader's metrics listener".into()));
    }
    let ip = if leader.local_addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        leader.local_addr.ip().to_string()
    };
    agent.leaders = vec![format!("{ip}:{port}")];
    if !dir.join("node.crt").exists() {
        let (token, _) = bramble_leader::trust::tokens::create(
            &leader.api.objects,
            &leader.ca_fingerprint,
            Duration::from_secs(600),
            bramble_proto::time::now_ms(),
        )
        .map_err(|e| anyhow::anyhow!("cannot make a token for the embedded agent: {e}"))?;
        agent.token = Some(token.to_string());
    }
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = bramble_agent::run(agent, c, || {}).await {
            tracing::error!("embedded agent stopped: {e}");
        }
    });
    Ok((cancel, task))
}
