//! `leader.toml`: versioned, every key checked, precedence file < environment < flags.

use bramble_proto::network::ClusterNetwork;
use bramble_proto::quantity::HumanDuration;
use bramble_proto::source::{parse_toml, SourceError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CONFIG_VERSION: u32 = 1;
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/bramble/leader";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Parse(#[from] SourceError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderConfig {
    pub version: u32,
    /// Name shown in the CA and in `bramble` output.
    #[serde(default = "default_cluster")]
    pub cluster_name: String,
    /// UDP address the QUIC API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the store and the PKI live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub nodes: NodesConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// An agent inside the leader process, so that one board is a whole cluster.
    #[serde(default)]
    pub agent: EmbeddedAgent,
    /// The cluster's network, chosen at `init`: pod and service addresses, the DNS domain, how
    /// boards reach each other. Kept for the cluster's life (the leader refuses a change).
    #[serde(default)]
    pub network: ClusterNetwork,
    #[serde(default)]
    pub pki: PkiConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// The ingress proxy the leader runs on boards labelled for it (off unless `image` is set).
    #[serde(default)]
    pub ingress: IngressConfig,
    /// A pull-through mirror of these registries for the boards (off unless given).
    #[serde(default)]
    pub mirror: Option<crate::mirror::MirrorConfig>,
}

pub use crate::ingress::IngressConfig;

/// How boards find this leader without an address: mDNS / DNS-SD `_bramble._udp` on the LAN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Answer boards' `_bramble._udp.local` queries (UDP 5353 on every interface; the answer
    /// names the QUIC port and the CA fingerprint, nothing secret). Default on.
    #[serde(default = "default_true")]
    pub mdns: bool,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig { mdns: true }
    }
}

fn default_true() -> bool {
    true
}

/// Where the cluster is kept: `redb` (one file in the data dir, one leader) or `etcd` (shared by
/// two or more leaders, one of them active).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_backend")]
    pub backend: StoreBackend,
    /// etcd's client URLs (`http://10.0.0.1:2379`; `https://` needs `ca_file`).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Keys live under this prefix (several clusters may share one etcd).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// TLS to etcd: the CA that signed etcd's certificates, and this leader's client pair.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The active leader's lease: when it stops renewing (crash, power cut, lost network) another
    /// leader takes over after this long. 1s to 60s.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: HumanDuration,
    /// How boards and the CLI reach this leader (`ip:port`), told to them by the other leaders
    /// (default: `listen`, which must then name an address).
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// This leader's name among the leaders (default: the host name).
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    Redb,
    Etcd,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: default_backend(),
            endpoints: Vec::new(),
            prefix: default_prefix(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            lease_ttl: default_lease_ttl(),
            advertise: None,
            name: None,
        }
    }
}

fn default_backend() -> StoreBackend {
    StoreBackend::Redb
}
fn default_prefix() -> String {
    "/bramble".into()
}
fn default_lease_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

impl StoreConfig {
    /// What the etcd store needs.
    pub fn etcd(&self) -> crate::store::EtcdOptions {
        crate::store::EtcdOptions {
            endpoints: self.endpoints.clone(),
            prefix: self.prefix.clone(),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }

    /// The first problem: (field, what is wrong).
    fn check(&self, listen: SocketAddr) -> Option<(&'static str, String)> {
        if self.backend == StoreBackend::Redb {
            return None;
        }
        if self.endpoints.is_empty() {
            return Some(("endpoints", "the etcd backend needs at least one endpoint (\"http://host:2379\")".into()));
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Some(("endpoints", format!("expected http://host:port or https://host:port, found {e:?}")));
            }
            if e.starts_with("https://") && self.ca_file.is_none() {
                return Some((
                    "ca_file",
                    format!("{e} is https: set ca_file to the CA that signed etcd's certificate"),
                ));
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Some(("cert_file", "set both cert_file and key_file, or neither".into()));
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 {
            return Some(("prefix", format!("expected a key prefix such as \"/bramble\", found {:?}", self.prefix)));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.lease_ttl.0)
            || self.lease_ttl.0.subsec_nanos() != 0
        {
            return Some((
                "lease_ttl",
                format!("expected whole seconds from 1s to 60s (etcd leases are), found {}", self.lease_ttl),
            ));
        }
        if self.advertise.is_none() && listen.ip().is_unspecified() {
            return Some((
                "advertise",
                format!("listen is {listen}: set advertise to the address boards reach this leader at"),
            ));
        }
        None
    }
}

/// Scheduled backups, off unless `dir` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Where backups go (a USB stick, a network mount): `bramble-<cluster>-<time>.bak`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// A file whose first line is the passphrase that seals them (0600, on the leader).
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    /// How often (10s to 30d).
    #[serde(default = "default_backup_every")]
    pub every: HumanDuration,
    /// How many to keep (the oldest go).
    #[serde(default = "default_backup_keep")]
    pub keep: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig { dir: None, passphrase_file: None, every: default_backup_every(), keep: default_backup_keep() }
    }
}

fn default_backup_every() -> HumanDuration {
    HumanDuration(Duration::from_secs(6 * 3600))
}
fn default_backup_keep() -> u32 {
    7
}

/// `/metrics` for Prometheus, off unless `listen` is set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` to serve plain HTTP on (e.g. "127.0.0.1:7449": 9100 is node_exporter's, which boards often run). A taken or invalid address is
    /// logged and the leader runs without it.
    #[serde(default)]
    pub listen: Option<String>,
    /// A file whose first line is a token: `/api/cluster` shows events in full (messages name
    /// users, secrets and keys, and quote probe output) only to a request bearing it
    /// (`Authorization: Bearer TOKEN`; the page: `…/#token=TOKEN`). Without one, never.
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
}

/// How long the certificates the leader issues live; each is renewed two thirds in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkiConfig {
    /// Boards' certificates (renewed by their agents over the session).
    #[serde(default = "default_node_cert")]
    pub node_cert_lifetime: HumanDuration,
    /// The leader's own serving certificate (renewed by the leader, without a restart).
    #[serde(default = "default_leader_cert")]
    pub leader_cert_lifetime: HumanDuration,
}

impl Default for PkiConfig {
    fn default() -> Self {
        PkiConfig { node_cert_lifetime: default_node_cert(), leader_cert_lifetime: default_leader_cert() }
    }
}

fn default_node_cert() -> HumanDuration {
    HumanDuration(bramble_transport::pki::NODE_VALIDITY)
}
fn default_leader_cert() -> HumanDuration {
    HumanDuration(bramble_transport::pki::LEAF_VALIDITY)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesConfig {
    /// A node with no contact for this long becomes NotReady.
    #[serde(default = "default_grace")]
    pub not_ready_after: HumanDuration,
    /// How often agents send a heartbeat.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: HumanDuration,
}

impl Default for NodesConfig {
    fn default() -> Self {
        NodesConfig { not_ready_after: default_grace(), heartbeat: default_heartbeat() }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a tracing filter like `bramble_leader=debug`.
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedAgent {
    #[serde(default)]
    pub enabled: bool,
    /// The node name of the embedded agent (default: the host name).
    #[serde(default)]
    pub name: Option<String>,
    /// The embedded agent's data dir (default: `<data_dir>/agent`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// An agent.toml for the rest of the embedded agent's settings (registries, labels,
    /// resources, images); its `leaders`, `token`, `name` and `data_dir` are the leader's.
    #[serde(default)]
    pub config: Option<PathBuf>,
}

fn default_cluster() -> String {
    "bramble".into()
}
fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("default listen address")
}
fn default_data_dir() -> PathBuf {
    DEFAULT_DATA_DIR.into()
}
/// Link silent → its session times out (2 s) → this → the board is NotReady and its replicas
/// are replaced: about 8 s from the link going down. Damping lengthens it for a board that keeps
/// losing its link (`boards::nodes`).
fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_heartbeat() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

impl LeaderConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        LeaderConfig {
            version: CONFIG_VERSION,
            cluster_name: default_cluster(),
            listen,
            data_dir,
            nodes: NodesConfig::default(),
            log: LogConfig::default(),
            agent: EmbeddedAgent::default(),
            network: ClusterNetwork::default(),
            pki: PkiConfig::default(),
            metrics: MetricsConfig::default(),
            discovery: DiscoveryConfig::default(),
            backup: BackupConfig::default(),
            store: StoreConfig::default(),
            ingress: IngressConfig::default(),
            mirror: None,
        }
    }

    /// The address other leaders tell boards and the CLI to use for this one.
    pub fn advertise(&self) -> SocketAddr {
        self.store.advertise.unwrap_or(self.listen)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let cfg: LeaderConfig = parse_toml(file, text)?;
        if cfg.version != CONFIG_VERSION {
            let at = text.find("version").unwrap_or(0);
            let message = format!("unsupported config version {}: expected {CONFIG_VERSION}", cfg.version);
            return Err(SourceError::at(file, text, at, "version", message).into());
        }
        if cfg.nodes.heartbeat.0 >= cfg.nodes.not_ready_after.0 {
            let offset = text.find("heartbeat").unwrap_or(0);
            return Err(SourceError::at(
                file,
                text,
                offset,
                "nodes.heartbeat",
                format!(
                    "expected a heartbeat shorter than not_ready_after ({}), found {}",
                    cfg.nodes.not_ready_after, cfg.nodes.heartbeat
                ),
            )
            .into());
        }
        if let Some(m) = &cfg.mirror {
            let bad = if m.upstreams.is_empty() {
                Some("expected at least one registry to mirror (such as \"docker.io\"), found none".to_string())
            } else {
                m.upstreams.iter().find(|u| !crate::mirror::is_registry_host(u)).map(|u| {
                    format!("expected registry hosts as image references write them (host[:port]), found {u:?}")
                })
            };
            if let Some(message) = bad {
                let offset = text.find("upstreams").unwrap_or(0);
                return Err(SourceError::at(file, text, offset, "mirror.upstreams", message).into());
            }
        }
        for (field, d) in [
            ("node_cert_lifetime", cfg.pki.node_cert_lifetime.0),
            ("leader_cert_lifetime", cfg.pki.leader_cert_lifetime.0),
        ] {
            if !(Duration::from_secs(60)..=Duration::from_secs(10 * 365 * 86400)).contains(&d) {
                let offset = text.find(field).unwrap_or(0);
                let message = format!("expected a lifetime from 1m to 3650d, found {}", HumanDuration(d));
                return Err(SourceError::at(file, text, offset, &format!("pki.{field}"), message).into());
            }
        }
        let b = &cfg.backup;
        let backup_problem = if b.dir.is_some() && b.passphrase_file.is_none() {
            Some(("passphrase_file", "scheduled backups need a passphrase_file to seal them".to_string()))
        } else if !(Duration::from_secs(10)..=Duration::from_secs(30 * 86400)).contains(&b.every.0) {
            Some(("every", format!("expected from 10s to 30d, found {}", b.every)))
        } else if b.keep == 0 {
            Some(("keep", "expected at least 1".to_string()))
        } else {
            None
        };
        if let Some((field, message)) = backup_problem {
            let offset = text.find(field).or_else(|| text.find("[backup]")).unwrap_or(0);
            return Err(SourceError::at(file, text, offset, &format!("backup.{field}"), message).into());
        }
        if let Some((field, message)) = cfg.store.check(cfg.listen) {
            let offset = text.find(&format!("\n{field}")).map(|o| o + 1).or_else(|| text.find("[store]")).unwrap_or(0);
            return Err(SourceError::at(file, text, offset, &format!("store.{field}"), message).into());
        }
        if let Some(level) = &cfg.log.level {
            if let Err(message) = bramble_daemon::observability::parse_filter(level) {
                let offset = text.find("level").unwrap_or(0);
                return Err(SourceError::at(file, text, offset, "log.level", message).into());
            }
        }
        if let Some((field, message)) = cfg.network.check().into_iter().next() {
            let offset = text.find(field).or_else(|| text.find("[network]")).unwrap_or(0);
            return Err(SourceError::at(file, text, offset, &format!("network.{field}"), message).into());
        }
        if let Some((field, message)) = crate::ingress::proxy::check(&cfg.ingress) {
            let at = text.find("[ingress]").unwrap_or(0);
            let offset = text[at..].find(field).map_or(at, |o| at + o);
            return Err(SourceError::at(file, text, offset, &format!("ingress.{field}"), message).into());
        }
        Ok(cfg)
    }

    /// The commented file `bramble-leader init` writes.
    pub fn render(&self) -> String {
        format!(
            r#"# Bramble leader configuration. Written by `bramble-leader init`; edit freely.
# Precedence: this file < environment (BRAMBLE_LEADER_*) < command-line flags.
version = {CONFIG_VERSION}

# Shown in the CA's name and by the CLI.
cluster_name = "{cluster}"

# UDP address the QUIC API (agents and CLI) listens on.
listen = "{listen}"

# The store (store.redb) and the cluster PKI (pki/) live here.
data_dir = "{data_dir}"

[nodes]
# A node with no contact for this long becomes NotReady and its replicas move: contact lasts as
# long as its session, which ends 2 s after the link goes silent. A board that keeps losing its
# link gets up to six times as long while it flaps (`bramble describe node` shows it).
not_ready_after = "{grace}"
# How often agents send a heartbeat (kept in memory, never written to disk).
heartbeat = "{heartbeat}"

[log]
# error | warn | info | debug | trace, or a filter such as "bramble_leader=debug".
# level = "info"

[agent]
# Run an agent inside the leader process so that one board is a whole cluster.
enabled = {agent}
# Registries, labels, resources for it: an agent.toml (see dist/agent.toml).
# config = "/etc/bramble/agent.toml"

[network]
# Chosen at init and kept for the cluster's life: the leader refuses to start if these change.
# Pod addresses; each board gets a /{node_prefix} of them.
cluster_cidr = "{cluster_cidr}"
node_prefix = {node_prefix}
# Service virtual IPs.
service_cidr = "{service_cidr}"
# Services answer as <service> and <service>.{domain} inside containers.
domain = "{domain}"
# "direct": routes to other boards' pod subnets via their addresses (boards on one LAN);
# "vxlan": a kernel vxlan device, for boards on different subnets (UDP port vxlan_port).
backend = "{backend}"
vxlan_port = {vxlan_port}
vxlan_vni = {vxlan_vni}

[pki]
# Boards' certificates: each agent renews its own over its session two thirds in.
node_cert_lifetime = "{node_cert}"
# The leader's serving certificate: renewed two thirds in (or at once when this is shortened).
leader_cert_lifetime = "{leader_cert}"

[discovery]
# Boards with no leader configured find this one on the LAN (mDNS, _bramble._udp on UDP 5353;
# the answer names the QUIC port and the CA fingerprint, nothing secret).
mdns = true

[metrics]
# Prometheus metrics (plain HTTP): off unless set. Keep it on loopback or a management network.
# listen = "127.0.0.1:7449"
# The dashboard's data names no secret, key or user and quotes no probe output unless a request
# bears this file's token (Authorization: Bearer …; the page: http://…/#token=…).
# token_file = "/etc/bramble/dashboard.token"

[backup]
# Scheduled backups, sealed with the passphrase in passphrase_file: off unless dir is set.
# dir = "/media/usb/bramble-backups"
# passphrase_file = "/etc/bramble/backup.pass"
every = "{backup_every}"
keep = {backup_keep}

[ingress]
# Web apps by host name and path from the LAN, with TLS ([[ingress]] objects): the leader runs
# Caddy as the every-board app bramble-ingress on the boards labelled below (their agent.toml must
# let apps take the ports: [network] host_ports = "80-65535"). Off unless image is set.
# image = "registry.lan:5000/caddy:2"
# nodes = {{ ingress = "true" }}
# memory = "128Mi"
# http_port = 80
# https_port = 443
# ACME (HTTP-01) for tls = {{ acme = true }}: the directory, an address, and for a lab CA its root.
# acme_ca = "https://acme-v02.api.letsencrypt.org/directory"
# acme_email = "ops@example.com"
# acme_ca_root = "/etc/bramble/acme-root.pem"

# A pull-through mirror for the boards: for these registries the leader fetches each blob once
# (credentials from [[registry]] objects), keeps it (least recently used out first beyond
# max_size) and serves it to boards, which ask before any registry. Off unless given.
# [mirror]
# upstreams = ["docker.io"]
# max_size = "10Gi"

[store]
# "redb": the cluster in one file in data_dir, one leader. "etcd": in an etcd cluster shared by
# two or more leaders; one is active, the others take over when its lease runs out (see
# docs/ARCHITECTURE.md, "Highly available leaders", and dist/etcd/).
backend = "{store_backend}"
{store_etcd}"#,
            cluster = self.cluster_name,
            listen = self.listen,
            data_dir = self.data_dir.display(),
            grace = self.nodes.not_ready_after,
            heartbeat = self.nodes.heartbeat,
            agent = self.agent.enabled,
            cluster_cidr = self.network.cluster_cidr,
            node_prefix = self.network.node_prefix,
            service_cidr = self.network.service_cidr,
            domain = self.network.domain,
            backend = self.network.backend,
            vxlan_port = self.network.vxlan_port,
            vxlan_vni = self.network.vxlan_vni,
            node_cert = self.pki.node_cert_lifetime,
            leader_cert = self.pki.leader_cert_lifetime,
            backup_every = self.backup.every,
            backup_keep = self.backup.keep,
            store_backend = match self.store.backend {
                StoreBackend::Redb => "redb",
                StoreBackend::Etcd => "etcd",
            },
            store_etcd = self.render_etcd(),
        )
    }

    fn render_etcd(&self) -> String {
        let s = &self.store;
        let list = |v: &[String]| v.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ");
        let opt = |k: &str, v: &Option<PathBuf>| match v {
            Some(p) => format!("{k} = {:?}\n", p.display().to_string()),
            None => format!("# {k} = \"/etc/bramble/etcd-{}.pem\"\n", k.trim_end_matches("_file")),
        };
        format!(
            "# etcd's client URLs, and TLS to them (https:// needs ca_file).\nendpoints = [{}]\nprefix = {:?}\n{}{}{}\
             # After the active leader stops renewing its lease this long, another takes over.\n\
             lease_ttl = \"{}\"\n\
             # How boards and the CLI reach this leader (default: listen).\n{}\
             # This leader's name among the leaders (default: the host name).\n{}",
            list(&s.endpoints),
            s.prefix,
            opt("ca_file", &s.ca_file),
            opt("cert_file", &s.cert_file),
            opt("key_file", &s.key_file),
            s.lease_ttl,
            match s.advertise {
                Some(a) => format!("advertise = \"{a}\"\n"),
                None => "# advertise = \"10.0.0.1:7443\"\n".into(),
            },
            match &s.name {
                Some(n) => format!("name = {n:?}\n"),
                None => "# name = \"leader-1\"\n".into(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_config_parses_back() {
        let mut cfg = LeaderConfig::new("/tmp/x".into(), "127.0.0.1:7443".parse().unwrap());
        assert_eq!(LeaderConfig::parse("leader.toml", &cfg.render()).unwrap(), cfg);
        cfg.store.backend = StoreBackend::Etcd;
        cfg.store.endpoints = vec!["http://10.0.0.1:2379".into(), "http://10.0.0.2:2379".into()];
        cfg.store.name = Some("leader-a".into());
        cfg.store.advertise = Some("10.0.0.1:7443".parse().unwrap());
        assert_eq!(LeaderConfig::parse("leader.toml", &cfg.render()).unwrap(), cfg);
    }

    #[test]
    fn a_mirror_of_nothing_or_of_a_url_is_refused_where_it_is_written() {
        let e = LeaderConfig::parse("l.toml", "version = 1\n[mirror]\nupstreams = []\n").unwrap_err().to_string();
        assert!(e.starts_with("l.toml:3:1: mirror.upstreams: expected at least one registry"), "{e}");
        let e = LeaderConfig::parse("l.toml", "version = 1\n[mirror]\nupstreams = [\"https://docker.io/\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mirror.upstreams: expected registry hosts") && e.contains("https://docker.io/"), "{e}");
        let ok =
            LeaderConfig::parse("l.toml", "version = 1\n[mirror]\nupstreams = [\"docker.io\", \"reg.lan:5000\"]\n");
        assert_eq!(ok.unwrap().mirror.unwrap().upstreams.len(), 2);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = LeaderConfig::parse("l.toml", "version = 1\nlisten = \"nowhere\"\n").unwrap_err().to_string();
        assert!(e.starts_with("l.toml:2:10: listen: invalid socket address"), "{e}");
        let e = LeaderConfig::parse("l.toml", "version = 1\n[nodes]\ngrace = \"10s\"\n").unwrap_err().to_string();
        assert!(e.starts_with("l.toml:3:1: nodes.grace: unknown field `grace`"), "{e}");
        let e = LeaderConfig::parse("l.toml", "version = 2\n").unwrap_err().to_string();
        assert!(e.contains("unsupported config version 2"), "{e}");
        let e = LeaderConfig::parse("l.toml", "").unwrap_err().to_string();
        assert!(e.contains("missing field `version`"), "{e}");
        let e = LeaderConfig::parse("l.toml", "version = 1\n[nodes]\nheartbeat = \"20s\"\n").unwrap_err().to_string();
        assert!(e.contains("l.toml:3:1: nodes.heartbeat: expected a heartbeat shorter"), "{e}");
        let e = LeaderConfig::parse("l.toml", "version = 1\n[network]\nservice_cidr = \"10.42.0.0/24\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("l.toml:3:1: network.service_cidr: 10.42.0.0/24 overlaps the cluster CIDR"), "{e}");
        let e = LeaderConfig::parse("l.toml", "version = 1\n[network]\ncluster_cidr = \"10.42.1.0/16\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("network.cluster_cidr: invalid address block \"10.42.1.0/16\": host bits are set"), "{e}");
        let e = LeaderConfig::parse("l.toml", "version = 1\n[store]\nbackend = \"etcd\"\n").unwrap_err().to_string();
        assert!(e.contains("l.toml:2:1: store.endpoints: the etcd backend needs at least one endpoint"), "{e}");
        let text = "version = 1\n[store]\nbackend = \"etcd\"\nendpoints = [\"10.0.0.1:2379\"]\n";
        let e = LeaderConfig::parse("l.toml", text).unwrap_err().to_string();
        assert!(e.contains("l.toml:4:1: store.endpoints: expected http://host:port"), "{e}");
        let text = "version = 1\n[store]\nbackend = \"etcd\"\nendpoints = [\"http://a:2379\"]\n";
        let e = LeaderConfig::parse("l.toml", text).unwrap_err().to_string();
        assert!(e.contains("store.advertise: listen is 0.0.0.0:7443: set advertise"), "{e}");
        let text = "version = 1\nlisten = \"10.0.0.1:7443\"\n[store]\nbackend = \"etcd\"\nendpoints = [\"http://a:2379\"]\nlease_ttl = \"1500ms\"\n";
        let e = LeaderConfig::parse("l.toml", text).unwrap_err().to_string();
        assert!(e.contains("l.toml:6:1: store.lease_ttl: expected whole seconds"), "{e}");
        let text = "version = 1\n[ingress]\nimage = \"reg/caddy:2\"\nhttp_port = 443\n";
        let e = LeaderConfig::parse("l.toml", text).unwrap_err().to_string();
        assert!(e.contains("l.toml:4:1: ingress.http_port: expected two different ports"), "{e}");
        let text = "version = 1\n[ingress]\nimage = \"reg/caddy:2\"\nnodes = { \"bad key!\" = \"x\" }\n";
        let e = LeaderConfig::parse("l.toml", text).unwrap_err().to_string();
        assert!(e.contains("l.toml:4:9: ingress.nodes: "), "{e}");
        let text = "version = 1\n[ingress]\nimage = \"reg/caddy:2\"\nmemory = \"16Mi\"\n";
        let e = LeaderConfig::parse("l.toml", text).unwrap_err().to_string();
        assert!(e.contains("l.toml:4:1: ingress.memory: expected at least 32Mi"), "{e}");
        let e = LeaderConfig::parse("l.toml", "version = 1\n[store]\nbackend = \"raft\"\n").unwrap_err().to_string();
        assert!(e.contains("l.toml:3:11: store.backend: unknown variant `raft`"), "{e}");
    }
}

#[cfg(test)]
mod sample_tests {
    #[test]
    fn the_commented_sample_in_dist_parses() {
        let text = include_str!("../../dist/leader.toml");
        let cfg = super::LeaderConfig::parse("dist/leader.toml", text).unwrap();
        assert_eq!(cfg.listen.to_string(), super::DEFAULT_LISTEN);
        assert_eq!(cfg.data_dir.to_str(), Some(super::DEFAULT_DATA_DIR));
        assert!(!cfg.agent.enabled);
        let text = include_str!("../../dist/leader-single.toml");
        let cfg = super::LeaderConfig::parse("dist/leader-single.toml", text).unwrap();
        assert!(cfg.agent.enabled, "the one-board sample runs the embedded agent");
        assert_eq!(cfg.agent.config, None);
        assert_eq!(cfg.network, bramble_proto::network::ClusterNetwork::default(), "the samples show the defaults");
        let cfg = super::LeaderConfig::parse("dist/leader.toml", include_str!("../../dist/leader.toml")).unwrap();
        assert_eq!(cfg.network, bramble_proto::network::ClusterNetwork::default(), "the samples show the defaults");
        assert_eq!(cfg.store, super::StoreConfig::default());
        let cfg = super::LeaderConfig::parse("dist/leader-ha.toml", include_str!("../../dist/leader-ha.toml")).unwrap();
        assert_eq!(cfg.store.backend, super::StoreBackend::Etcd);
        assert_eq!(cfg.store.endpoints.len(), 3);
        assert_eq!(cfg.advertise().to_string(), "10.0.0.1:7443");
    }
}
