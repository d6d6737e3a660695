//! `agent.toml`: versioned, every key checked, precedence file < environment < flags.

use bramble_proto::names::{check_dns_subdomain, check_label_key, check_label_value};
use bramble_proto::quantity::{Cpu, Memory};
use bramble_proto::source::{parse_toml, SourceError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_VERSION: u32 = 1;
pub const DEFAULT_DATA_DIR: &str = "/var/lib/bramble/agent";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Parse(#[from] SourceError),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub version: u32,
    /// The node name (default: the host name).
    #[serde(default)]
    pub name: Option<String>,
    /// Leader addresses (`host:port`), tried in turn.
    #[serde(default)]
    pub leaders: Vec<String>,
    /// A join token, needed only until the agent has its certificate.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Labels the node reports (operators can add more with `bramble label node`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: ResourcesConfig,
    #[serde(default)]
    pub images: ImagesConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub monitoring: MonitoringConfig,
    #[serde(default)]
    pub volumes: VolumesConfig,
    #[serde(default)]
    pub devices: DevicesConfig,
    /// Directories and ports of Bramble's own on this board besides the agent's (the embedded
    /// agent's leader sets them; never read from the file).
    #[serde(skip)]
    pub protected: Protected,
}

/// What a board lets apps mount (`[volumes]`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumesConfig {
    /// Directories apps may mount as host volumes, with everything under them (default: none).
    /// System directories, their parents and Bramble's data dirs are refused whatever this says.
    #[serde(default)]
    pub host_paths: Vec<String>,
}

/// The board's devices apps may ask for (`[devices]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    /// The classes this board offers (default: all of gpio, i2c, spi, serial, video, usb); `[]`
    /// offers none.
    #[serde(default = "all_classes")]
    pub classes: Vec<bramble_proto::device::DeviceClass>,
    /// How often the agent looks for devices plugged in or out (1s to 5m, default 5s).
    #[serde(default = "default_scan_every")]
    pub scan_every: bramble_proto::quantity::HumanDuration,
    /// Where the device nodes are (`/dev`) and the kernel's view of them (`/sys`): other
    /// directories only for tests and chroots.
    #[serde(default = "default_dev_dir")]
    pub dev_dir: PathBuf,
    #[serde(default = "default_sys_dir")]
    pub sys_dir: PathBuf,
}

fn all_classes() -> Vec<bramble_proto::device::DeviceClass> {
    bramble_proto::device::DeviceClass::ALL.to_vec()
}
fn default_scan_every() -> bramble_proto::quantity::HumanDuration {
    bramble_proto::quantity::HumanDuration(std::time::Duration::from_secs(5))
}
fn default_dev_dir() -> PathBuf {
    "/dev".into()
}
fn default_sys_dir() -> PathBuf {
    "/sys".into()
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            classes: all_classes(),
            scan_every: default_scan_every(),
            dev_dir: default_dev_dir(),
            sys_dir: default_sys_dir(),
        }
    }
}

impl DevicesConfig {
    /// The devices the board offers now.
    pub fn scan(&self) -> Vec<bramble_proto::device::Device> {
        crate::devscan::scan(&self.dev_dir, &self.sys_dir, &self.classes)
    }
}

/// Bramble's own directories and ports on a board that runs a leader too: never mounted, never
/// forwarded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Protected {
    /// (what it is, directory)
    pub dirs: Vec<(String, PathBuf)>,
    /// (protocol, port, what it is)
    pub ports: Vec<(bramble_proto::manifest::Protocol, u16, String)>,
}

/// Usage sampling (memory only: sent to the leader, never written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringConfig {
    /// How often the board and its replicas are measured (1s to 5m).
    #[serde(default = "default_sample_interval")]
    pub interval: bramble_proto::quantity::HumanDuration,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig { interval: default_sample_interval() }
    }
}

fn default_sample_interval() -> bramble_proto::quantity::HumanDuration {
    bramble_proto::quantity::HumanDuration(std::time::Duration::from_secs(15))
}

/// The board's side of pod networking (the cluster's side is chosen at the leader's init).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The pods' bridge.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// The MTU of the board's LAN (pods get 50 less with the vxlan backend).
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Resolvers for names outside the cluster (default: those of /etc/resolv.conf).
    #[serde(default)]
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// The board's ports apps may take as host ports: `"1024-65535"` (the default); a board that
    /// runs the ingress may widen it to `"80-65535"`.
    #[serde(default)]
    pub host_ports: crate::net::ports::PortRange,
    /// Ports never forwarded to a pod, besides Bramble's own (the leaders' QUIC ports, etcd's
    /// 2379-2380, the vxlan port, DNS) and any a process on the board listens on.
    #[serde(default)]
    pub reserved_ports: Vec<u16>,
    /// How often the agent checks and repairs what it owns of the board's network (the bridge's
    /// address, routes, the nft table, stray veths): from 1s to 5m, default 30s.
    #[serde(default = "default_check_every")]
    pub check_every: bramble_proto::quantity::HumanDuration,
    /// Program services, host ports and the pods' firewall with nft (the default). `false` is for a
    /// board that cannot have nft: its pods then reach no service VIP, take no host port, and
    /// are not kept from Bramble's own ports — the board says so, and is not NetworkUnavailable
    /// for the want of nft.
    #[serde(default = "default_nft")]
    pub nft: bool,
}

fn default_nft() -> bool {
    true
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bridge: default_bridge(),
            mtu: default_mtu(),
            dns_upstreams: Vec::new(),
            host_ports: Default::default(),
            reserved_ports: Vec::new(),
            check_every: default_check_every(),
            nft: true,
        }
    }
}

fn default_check_every() -> bramble_proto::quantity::HumanDuration {
    bramble_proto::quantity::HumanDuration(std::time::Duration::from_secs(30))
}

fn default_bridge() -> String {
    "bramble0".into()
}
fn default_mtu() -> u32 {
    1500
}

impl AgentConfig {
    /// The board network controller's settings.
    pub fn network_settings(&self) -> crate::net::node::Settings {
        let n = &self.network;
        crate::net::node::Settings {
            bridge: n.bridge.clone(),
            mtu: n.mtu,
            dns_upstreams: n.dns_upstreams.clone(),
            state_file: self.data_dir.join("pods").join("network.json"),
            host_ports: self.host_port_policy(),
            control_ports: self.control_ports(),
            check_every: n.check_every.0,
            nft: n.nft,
        }
    }
}

/// Where images live and how they are fetched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// The content store (default: `<data_dir>/images`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// When the disk holding the store is fuller than this (percent), unused images are removed…
    #[serde(default = "default_gc_high")]
    pub gc_high_percent: u8,
    /// …until it is below this.
    #[serde(default = "default_gc_low")]
    pub gc_low_percent: u8,
    /// Device nodes in image layers: "skip" (default), "refuse" or "create".
    #[serde(default)]
    pub devices: DevicePolicyConfig,
    /// Per-registry settings: plain HTTP, credentials, a private CA.
    #[serde(default, rename = "registry")]
    pub registries: Vec<bramble_images::registry::RegistryConfig>,
    /// The most one image may unpack to (all its layers); also never more than the disk has
    /// free beyond 256 MiB (a twentieth of a smaller disk).
    #[serde(default = "default_max_image_size")]
    pub max_image_size: Memory,
    /// Ask the cluster's other boards for an image's content before any registry, and serve
    /// them what this board holds (default true). Off: this board pulls from registries only.
    #[serde(default = "default_true")]
    pub peers: bool,
}

fn default_true() -> bool {
    true
}

fn default_max_image_size() -> Memory {
    Memory(bramble_images::unpack::MAX_IMAGE_BYTES)
}

impl ImagesConfig {
    /// How layers are unpacked on this board.
    pub fn unpack_options(&self) -> bramble_images::unpack::UnpackOptions {
        bramble_images::unpack::UnpackOptions {
            devices: self.devices.into(),
            max_image_bytes: self.max_image_size.0,
            ..Default::default()
        }
    }
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            dir: None,
            gc_high_percent: default_gc_high(),
            gc_low_percent: default_gc_low(),
            devices: DevicePolicyConfig::default(),
            registries: Vec::new(),
            max_image_size: default_max_image_size(),
            peers: true,
        }
    }
}

fn default_gc_high() -> u8 {
    85
}
fn default_gc_low() -> u8 {
    70
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePolicyConfig {
    #[default]
    Skip,
    Refuse,
    Create,
}

impl From<DevicePolicyConfig> for bramble_images::unpack::DevicePolicy {
    fn from(p: DevicePolicyConfig) -> Self {
        match p {
            DevicePolicyConfig::Skip => Self::Skip,
            DevicePolicyConfig::Refuse => Self::Refuse,
            DevicePolicyConfig::Create => Self::Create,
        }
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("name", &self.name)
            .field("leaders", &self.leaders)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("data_dir", &self.data_dir)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesConfig {
    /// CPU kept for the system and Bramble itself.
    #[serde(default = "default_reserved_cpu")]
    pub reserved_cpu: Cpu,
    /// Memory kept for the system and Bramble itself.
    #[serde(default = "default_reserved_memory")]
    pub reserved_memory: Memory,
    /// The most replicas this node runs.
    #[serde(default = "default_max_replicas")]
    pub max_replicas: u32,
    /// The cgroup containers' cgroups are made under (one name: `/sys/fs/cgroup/<it>/<id>`). The
    /// agent kills what it finds there without a shim when it starts, so two agents on one
    /// machine (tests) each need their own.
    #[serde(default = "default_cgroup_parent")]
    pub cgroup_parent: String,
}

fn default_cgroup_parent() -> String {
    crate::runtime::config::DEFAULT_CGROUP_PARENT.into()
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        ResourcesConfig {
            reserved_cpu: default_reserved_cpu(),
            reserved_memory: default_reserved_memory(),
            max_replicas: default_max_replicas(),
            cgroup_parent: default_cgroup_parent(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub level: Option<String>,
}

fn default_data_dir() -> PathBuf {
    DEFAULT_DATA_DIR.into()
}
fn default_reserved_cpu() -> Cpu {
    Cpu(100)
}
fn default_reserved_memory() -> Memory {
    Memory(128 << 20)
}
fn default_max_replicas() -> u32 {
    64
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            version: CONFIG_VERSION,
            name: None,
            leaders: Vec::new(),
            token: None,
            data_dir: default_data_dir(),
            labels: BTreeMap::new(),
            resources: ResourcesConfig::default(),
            images: ImagesConfig::default(),
            log: LogConfig::default(),
            network: NetworkConfig::default(),
            monitoring: MonitoringConfig::default(),
            volumes: VolumesConfig::default(),
            devices: DevicesConfig::default(),
            protected: Protected::default(),
        }
    }
}

/// Values from the environment or the command line; each one set overrides the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub leaders: Vec<String>,
    pub token: Option<String>,
    pub name: Option<String>,
    pub data_dir: Option<PathBuf>,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = parse_toml(file, text)?;
        let at = |key: &str| text.find(key).unwrap_or(0);
        if cfg.version != CONFIG_VERSION {
            return Err(SourceError::at(
                file,
                text,
                at("version"),
                "version",
                format!("expected {CONFIG_VERSION}, found {}", cfg.version),
            )
            .into());
        }
        if let Some(name) = &cfg.name {
            check_dns_subdomain(name).map_err(|e| SourceError::at(file, text, at("name"), "name", e.to_string()))?;
        }
        let gc = &cfg.images;
        if gc.gc_low_percent >= gc.gc_high_percent || gc.gc_high_percent > 100 {
            let message = format!(
                "expected gc_low_percent ({}) below gc_high_percent ({}), both at most 100",
                gc.gc_low_percent, gc.gc_high_percent
            );
            return Err(SourceError::at(file, text, at("gc_"), "images.gc_high_percent", message).into());
        }
        for (i, r) in cfg.images.registries.iter().enumerate() {
            if r.host.is_empty() || r.host.contains('/') || r.username.is_some() != r.password.is_some() {
                let message = "expected host[:port] without a scheme, and username and password together".to_string();
                return Err(SourceError::at(
                    file,
                    text,
                    at("[[images.registry]]"),
                    &format!("images.registry[{i}]"),
                    message,
                )
                .into());
            }
        }
        let every = cfg.network.check_every.0;
        if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(300)).contains(&every) {
            let message = format!("expected a period from 1s to 5m, found {}", cfg.network.check_every);
            return Err(SourceError::at(file, text, at("check_every"), "network.check_every", message).into());
        }
        let interval = cfg.monitoring.interval.0;
        if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(300)).contains(&interval) {
            let message = format!("expected an interval from 1s to 5m, found {}", cfg.monitoring.interval);
            return Err(SourceError::at(file, text, at("interval"), "monitoring.interval", message).into());
        }
        let parent = &cfg.resources.cgroup_parent;
        if crate::runtime::config::check_id(parent).is_err() || parent.len() > 64 {
            let message = format!(
                "expected one cgroup name (letters, digits, '-', '_', '.'; not starting with '.'; 64 at most), found {parent:?}"
            );
            return Err(SourceError::at(file, text, at("cgroup_parent"), "resources.cgroup_parent", message).into());
        }
        let scan = cfg.devices.scan_every.0;
        if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(300)).contains(&scan) {
            let message = format!("expected a period from 1s to 5m, found {}", cfg.devices.scan_every);
            return Err(SourceError::at(file, text, at("scan_every"), "devices.scan_every", message).into());
        }
        if let Some(level) = &cfg.log.level {
            bramble_daemon::observability::parse_filter(level)
                .map_err(|e| SourceError::at(file, text, at("level"), "log.level", e))?;
        }
        for (k, v) in &cfg.labels {
            check_label_key(k)
                .and_then(|_| check_label_value(v))
                .map_err(|e| SourceError::at(file, text, at(k), &format!("labels.{k}"), e.to_string()))?;
        }
        let mut cfg = cfg;
        let data_dir = cfg.data_dir.display().to_string();
        for (i, p) in cfg.volumes.host_paths.iter_mut().enumerate() {
            let protected = [("the agent's data dir", data_dir.as_str())];
            match bramble_proto::hostpath::check(p, &protected) {
                Ok(n) => *p = n,
                Err(e) => {
                    let offset = text.find(p.as_str()).unwrap_or_else(|| at("host_paths"));
                    return Err(SourceError::at(
                        file,
                        text,
                        offset,
                        &format!("volumes.host_paths[{i}]"),
                        e.to_string(),
                    )
                    .into());
                }
            }
        }
        Ok(cfg)
    }

    /// Bramble's own ports this board knows: its leaders' QUIC ports, etcd's, and those of a
    /// leader in this process ([`Protected`]).
    pub fn control_ports(&self) -> std::collections::BTreeSet<(bramble_proto::manifest::Protocol, u16)> {
        use bramble_proto::manifest::Protocol;
        let leaders = self.leaders.iter().filter_map(|l| l.rsplit_once(':')?.1.parse::<u16>().ok());
        let etcd = crate::net::ports::ETCD_PORTS.into_iter().map(|p| (Protocol::Tcp, p));
        leaders
            .map(|p| (Protocol::Udp, p))
            .chain(etcd)
            .chain(self.protected.ports.iter().map(|(p, n, _)| (*p, *n)))
            .collect()
    }

    /// The host ports this board lets apps take: the configured range, never the reserved ports,
    /// the leaders' QUIC ports or those of [`Protected`].
    pub fn host_port_policy(&self) -> crate::net::ports::HostPortPolicy {
        use bramble_proto::manifest::Protocol;
        let mut own: Vec<(Protocol, u16, String)> = self
            .leaders
            .iter()
            .filter_map(|l| l.rsplit_once(':')?.1.parse::<u16>().ok())
            .map(|p| (Protocol::Udp, p, "a leader's QUIC port".to_string()))
            .collect();
        own.extend(self.protected.ports.iter().cloned());
        crate::net::ports::HostPortPolicy::new(self.network.host_ports, &self.network.reserved_ports, &own)
    }

    /// Directories no host volume may be, be inside or hold: the agent's data dir and those in
    /// [`Protected`].
    pub fn protected_dirs(&self) -> Vec<(String, String)> {
        let mut out = vec![("the agent's data dir".to_string(), self.data_dir.display().to_string())];
        out.extend(self.protected.dirs.iter().map(|(w, d)| (w.clone(), d.display().to_string())));
        out.into_iter().filter_map(|(w, d)| Some((w, bramble_proto::hostpath::normalize(&d).ok()?))).collect()
    }

    /// Applies environment and flag values over the file's.
    pub fn apply(&mut self, o: Overrides) {
        if !o.leaders.is_empty() {
            self.leaders = o.leaders;
        }
        if o.token.is_some() {
            self.token = o.token;
        }
        if o.name.is_some() {
            self.name = o.name;
        }
        if let Some(d) = o.data_dir {
            self.data_dir = d;
        }
    }

    /// The image store's directory.
    pub fn images_dir(&self) -> PathBuf {
        self.images.dir.clone().unwrap_or_else(|| self.data_dir.join("images"))
    }

    /// The node name: configured, or the host name.
    pub fn node_name(&self) -> Result<String, ConfigError> {
        let name = match &self.name {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()
                .map_err(|e| ConfigError::Invalid(format!("cannot read the host name: {e}")))?
                .to_string_lossy()
                .to_lowercase(),
        };
        check_dns_subdomain(&name)
            .map_err(|e| ConfigError::Invalid(format!("node {e}; set `name` in the config or --name")))?;
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_file_then_overrides() {
        let mut c =
            AgentConfig::parse("a.toml", "version = 1\nname = \"pi-1\"\nleaders = [\"10.0.0.1:7443\"]\n").unwrap();
        c.apply(Overrides { name: Some("pi-2".into()), ..Default::default() });
        assert_eq!(c.name.as_deref(), Some("pi-2"));
        assert_eq!(c.leaders, ["10.0.0.1:7443"], "unset overrides keep the file's value");
    }

    #[test]
    fn bad_values_name_the_line_and_field() {
        let e = AgentConfig::parse("a.toml", "version = 1\n[resources]\nreserved_memory = \"1GB\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("a.toml:3:19: resources.reserved_memory: invalid memory quantity \"1GB\""), "{e}");
        let e = AgentConfig::parse("a.toml", "version = 1\nlables = {}\n").unwrap_err().to_string();
        assert!(e.starts_with("a.toml:2:1: lables: unknown field `lables`"), "{e}");
        let e = AgentConfig::parse("a.toml", "version = 1\nname = \"Pi_1\"\n").unwrap_err().to_string();
        assert!(e.starts_with("a.toml:2:1: name: invalid name"), "{e}");
        let e =
            AgentConfig::parse("a.toml", "version = 1\nlabels = { \"bad key\" = \"x\" }\n").unwrap_err().to_string();
        assert!(e.contains("labels.bad key: invalid label key"), "{e}");
        // A typo in the log level is refused, not taken as a target that would silence the logs.
        let e = AgentConfig::parse("a.toml", "version = 1\n[log]\nlevel = \"inf\"\n").unwrap_err().to_string();
        assert!(e.starts_with("a.toml:3:1: log.level: invalid log level \"inf\": \"inf\" is not a level"), "{e}");
        assert!(AgentConfig::parse("a.toml", "version = 1\n[log]\nlevel = \"warn,bramble_agent=debug\"\n").is_ok());
    }

    #[test]
    fn host_paths_are_normalised_and_never_the_system() {
        let c = AgentConfig::parse("a.toml", "version = 1\n[volumes]\nhost_paths = [\"//srv/\", \"/media/usb\"]\n")
            .unwrap();
        assert_eq!(c.volumes.host_paths, ["/srv", "/media/usb"]);
        assert!(AgentConfig::default().volumes.host_paths.is_empty(), "nothing by default");
        for (bad, says) in [
            ("/var", "a.toml:3:16: volumes.host_paths[0]: /var holds the board's system directory /var/lib"),
            ("/", "a.toml:3:16: volumes.host_paths[0]: / is the whole board"),
            ("/etc//ssh", "a.toml:3:16: volumes.host_paths[0]: /etc/ssh is inside the board's system directory /etc"),
        ] {
            let e = AgentConfig::parse("a.toml", &format!("version = 1\n[volumes]\nhost_paths = [\"{bad}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(says), "{e}");
        }
        let e = AgentConfig::parse(
            "a.toml",
            "version = 1\ndata_dir = \"/data/bramble\"\n[volumes]\nhost_paths = [\"/data\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/data holds the agent's data dir /data/bramble"), "{e}");
    }

    #[test]
    fn the_cgroup_parent_is_one_name() {
        for bad in ["", "a/b", "..", ".hidden", "../../sys", "x y"] {
            let text = format!("version = 1\n[resources]\ncgroup_parent = {bad:?}\n");
            let e = AgentConfig::parse("a.toml", &text).unwrap_err().to_string();
            assert!(e.starts_with("a.toml:3:1: resources.cgroup_parent: expected one cgroup name"), "{bad:?}: {e}");
        }
        let ok = AgentConfig::parse("a.toml", "version = 1\n[resources]\ncgroup_parent = \"bramble-t1\"\n").unwrap();
        assert_eq!(ok.resources.cgroup_parent, "bramble-t1");
        assert_eq!(AgentConfig::parse("a.toml", "version = 1\n").unwrap().resources.cgroup_parent, "bramble");
    }

    #[test]
    fn debug_hides_the_token() {
        let c = AgentConfig { token: Some("BR1secret".into()), ..Default::default() };
        assert!(!format!("{c:?}").contains("BR1secret"));
    }
}

#[cfg(test)]
mod sample_tests {
    #[test]
    fn the_commented_sample_in_dist_parses() {
        let text = include_str!("../../dist/agent.toml");
        let cfg = super::AgentConfig::parse("dist/agent.toml", text).unwrap();
        assert_eq!(cfg.leaders, ["192.168.1.10:7443"]);
        assert_eq!(cfg.resources.max_replicas, 64);
        assert_eq!((cfg.network.bridge.as_str(), cfg.network.mtu), ("bramble0", 1500), "the sample shows the defaults");
        assert_eq!(cfg.network.check_every, super::NetworkConfig::default().check_every);
    }

    #[test]
    fn the_network_check_period_is_bounded_and_the_error_says_where() {
        let text = "version = 1\n[network]\ncheck_every = \"100ms\"\n";
        let e = super::AgentConfig::parse("a.toml", text).unwrap_err().to_string();
        assert!(e.contains("a.toml:3:1: network.check_every: expected a period from 1s to 5m, found 100ms"), "{e}");
        let ok = super::AgentConfig::parse("a.toml", "version = 1\n[network]\ncheck_every = \"2s\"\n").unwrap();
        assert_eq!(ok.network.check_every.0, std::time::Duration::from_secs(2));
    }
}
