//! The validated types a manifest is made of.

use crate::image_ref::ImageRef;
use crate::model::TaintEffect;
use crate::names::{check_env_name, check_label_key, check_label_value, Name};
use crate::quantity::{Cpu, HumanDuration, Memory};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The most replicas one app may ask for.
pub const MAX_REPLICAS: u32 = 1000;

macro_rules! ranged_int {
    ($(#[$m:meta])* $name:ident, $inner:ty, $min:expr, $max:expr, $what:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "{} from {} to {}", $what, $min, $max)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        if v < $min as i64 || v > $max as i64 {
                            return Err(E::custom(format!("expected {} from {} to {}, found {v}", $what, $min, $max)));
                        }
                        Ok($name(v as $inner))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

ranged_int!(
    /// A replica count, 0 to [`MAX_REPLICAS`].
    Replicas, u32, 0, MAX_REPLICAS, "a replica count"
);
ranged_int!(
    /// A TCP or UDP port, 1 to 65535.
    Port, u16, 1, 65535, "a port number"
);
ranged_int!(
    /// A small positive count (probe thresholds).
    Threshold, u32, 1, 100, "a count"
);
ranged_int!(
    /// Replicas a rolling update may add or take away at once.
    #[derive(Default)]
    Step, u32, 0, MAX_REPLICAS, "a replica count"
);

impl Default for Replicas {
    fn default() -> Self {
        Replicas(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// An environment variable name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EnvName(pub String);

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_env_name(&s).map_err(de::Error::custom)?;
        Ok(EnvName(s))
    }
}

/// Labels (for node selectors): keys and values checked as Kubernetes does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Labels(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        for (k, v) in &map {
            check_label_key(k).map_err(de::Error::custom)?;
            check_label_value(v).map_err(de::Error::custom)?;
        }
        Ok(Labels(map))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    #[serde(default)]
    pub name: Option<Name>,
    /// The port the container listens on.
    pub container: Port,
    /// A port on the board forwarded to the container.
    #[serde(default)]
    pub host: Option<Port>,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    #[serde(default)]
    pub cpu: Option<Cpu>,
    #[serde(default)]
    pub memory: Option<Memory>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TolerationOperator {
    #[default]
    Equal,
    Exists,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub operator: TolerationOperator,
    #[serde(default)]
    pub value: Option<String>,
    /// None tolerates every effect.
    #[serde(default)]
    pub effect: Option<TaintEffect>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(default)]
    pub node_selector: Labels,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// At most this many replicas of the app on one node.
    #[serde(default)]
    pub max_per_node: Option<Replicas>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    #[serde(default = "root_path")]
    pub path: String,
    pub port: Port,
}

fn root_path() -> String {
    "/".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    pub port: Port,
}

/// A health check. Exactly one of `exec`, `http` and `tcp` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    #[serde(default)]
    pub http: Option<HttpProbe>,
    #[serde(default)]
    pub tcp: Option<TcpProbe>,
    #[serde(default)]
    pub initial_delay: Option<HumanDuration>,
    #[serde(default)]
    pub period: Option<HumanDuration>,
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub failure_threshold: Option<Threshold>,
    #[serde(default)]
    pub success_threshold: Option<Threshold>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probes {
    #[serde(default)]
    pub liveness: Option<Probe>,
    #[serde(default)]
    pub readiness: Option<Probe>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateStrategy {
    #[serde(default = "one_step")]
    pub max_surge: Step,
    #[serde(default)]
    pub max_unavailable: Step,
}

fn one_step() -> Step {
    Step(1)
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        UpdateStrategy { max_surge: Step(1), max_unavailable: Step(0) }
    }
}

/// A long-running workload as the user declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub name: Name,
    pub image: ImageRef,
    /// Replaces the image's entrypoint.
    #[serde(default)]
    pub command: Vec<String>,
    /// Replaces the image's cmd.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<EnvName, String>,
    /// Names of secrets whose keys become files and environment variables.
    #[serde(default)]
    pub secrets: Vec<Name>,
    #[serde(default)]
    pub replicas: Replicas,
    #[serde(default)]
    pub resources: ResourceSpec,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default)]
    pub probes: Probes,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub update: UpdateStrategy,
    #[serde(default)]
    pub workdir: Option<String>,
    /// `uid[:gid]` or a user name from the image.
    #[serde(default)]
    pub user: Option<String>,
    /// How long a lost node's replicas wait before they are replaced elsewhere (default: at once).
    #[serde(default)]
    pub replace_after: Option<HumanDuration>,
}

/// A problem that spans several fields, found after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Vec<PathPart>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    Key(&'static str),
    Index(usize),
}

impl Problem {
    fn new(path: Vec<PathPart>, message: impl Into<String>) -> Self {
        Problem { path, message: message.into() }
    }

    /// The dotted field path, as `ports[1].container`.
    pub fn field(&self) -> String {
        let mut s = String::new();
        for p in &self.path {
            match p {
                PathPart::Key(k) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                PathPart::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        s
    }
}

use PathPart::{Index, Key};

impl AppSpec {
    /// Checks that span fields; each problem names the field it is about.
    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        let mut container_ports = BTreeSet::new();
        let mut host_ports = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if let Some(n) = &p.name {
                if !names.insert(n.as_str()) {
                    out.push(Problem::new(
                        vec![Key("ports"), Index(i), Key("name")],
                        format!("duplicate port name {:?}", n.as_str()),
                    ));
                }
            }
            if !container_ports.insert((p.container, p.protocol)) {
                out.push(Problem::new(
                    vec![Key("ports"), Index(i), Key("container")],
                    format!("container port {} is listed twice", p.container.0),
                ));
            }
            if let Some(h) = p.host {
                if !host_ports.insert((h, p.protocol)) {
                    out.push(Problem::new(
                        vec![Key("ports"), Index(i), Key("host")],
                        format!("host port {} is listed twice", h.0),
                    ));
                }
            }
        }
        for (which, probe) in [("liveness", &self.probes.liveness), ("readiness", &self.probes.readiness)] {
            let Some(probe) = probe else { continue };
            let handlers = [probe.exec.is_some(), probe.http.is_some(), probe.tcp.is_some()];
            if handlers.iter().filter(|h| **h).count() != 1 {
                out.push(Problem::new(
                    vec![Key("probes"), Key(which)],
                    "expected exactly one of `exec`, `http` or `tcp`",
                ));
            }
            if probe.exec.as_ref().is_some_and(|c| c.is_empty()) {
                out.push(Problem::new(
                    vec![Key("probes"), Key(which), Key("exec")],
                    "expected a command, found an empty list",
                ));
            }
        }
        for (i, t) in self.placement.tolerations.iter().enumerate() {
            if t.operator == TolerationOperator::Exists && t.value.is_some() {
                out.push(Problem::new(
                    vec![Key("placement"), Key("tolerations"), Index(i), Key("value")],
                    "expected no value with operator \"Exists\"",
                ));
            }
            if t.key.is_none() && t.operator == TolerationOperator::Equal {
                out.push(Problem::new(
                    vec![Key("placement"), Key("tolerations"), Index(i)],
                    "expected a key (only operator \"Exists\" may leave it out to tolerate every taint)",
                ));
            }
        }
        if self.update.max_surge.0 == 0 && self.update.max_unavailable.0 == 0 {
            out.push(Problem::new(
                vec![Key("update")],
                "expected max_surge or max_unavailable above zero, or a rolling update could never make progress",
            ));
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                out.push(Problem::new(vec![Key("workdir")], format!("expected an absolute path, found {w:?}")));
            }
        }
        out
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Where a service sends traffic: a container port number or a port name of the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortTarget {
    Number(Port),
    Name(Name),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<Name>,
    /// The port on the service's virtual IP.
    pub port: Port,
    /// The app's port; the same number as `port` when left out.
    #[serde(default)]
    pub target: Option<PortTarget>,
    #[serde(default)]
    pub protocol: Protocol,
}

/// A stable name and virtual IP in front of the ready replicas of one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: Name,
    /// The app whose ready replicas receive the traffic.
    pub app: Name,
    pub ports: Vec<ServicePort>,
}

impl ServiceSpec {
    /// The app's container port each service port sends to, if the app has it: a number is
    /// taken as it is; a name must be one of the app's ports with the same protocol.
    pub fn target_port(&self, port: &ServicePort, app: &AppSpec) -> Result<u16, String> {
        match &port.target {
            None => Ok(port.port.0),
            Some(PortTarget::Number(n)) => Ok(n.0),
            Some(PortTarget::Name(n)) => {
                let found = app.ports.iter().find(|p| p.name.as_ref() == Some(n));
                match found {
                    None => {
                        let named: Vec<&str> =
                            app.ports.iter().filter_map(|p| p.name.as_ref()).map(Name::as_str).collect();
                        let have = if named.is_empty() {
                            "no named ports".to_string()
                        } else {
                            format!("ports {}", named.join(", "))
                        };
                        Err(format!("app {} has no port named {:?} (it has {have})", app.name.as_str(), n.as_str()))
                    }
                    Some(p) if p.protocol != port.protocol => Err(format!(
                        "port {:?} of app {} is {}, this service port is {}",
                        n.as_str(),
                        app.name.as_str(),
                        protocol_name(p.protocol),
                        protocol_name(port.protocol)
                    )),
                    Some(p) => Ok(p.container.0),
                }
            }
        }
    }

    /// Problems with the service's ports against its app.
    pub fn check_against(&self, app: &AppSpec) -> Vec<Problem> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let e = self.target_port(p, app).err()?;
                Some(Problem::new(vec![Key("ports"), Index(i), Key("target")], e))
            })
            .collect()
    }

    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.ports.is_empty() {
            out.push(Problem::new(vec![Key("ports")], "expected at least one port"));
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if !seen.insert((p.port, p.protocol)) {
                out.push(Problem::new(
                    vec![Key("ports"), Index(i), Key("port")],
                    format!("port {} is listed twice", p.port.0),
                ));
            }
        }
        out
    }
}
