//! Several containers in one replica: `[[app.containers]]` run beside the app's own container and
//! `[[app.init]]` run in order to completion before them. All share the replica's network
//! namespace (localhost between them), its volumes, secrets and configs; each has its own image,
//! command, environment (over the app's), resources, ports, probes and restart policy.
//!
//! A container's id on the board is `<replica>.<name>` (a replica's name is DNS labels joined by
//! `-`, so the first `.` splits it); the app's own container keeps the replica's name.

use super::PathPart::{Index, Key};
use super::*;
use crate::image_ref::ImageRef;
use crate::names::Name;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A container beside the app's own (or an init container, with fewer fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    pub name: Name,
    pub image: ImageRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Over the app's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<EnvName, String>,
    #[serde(default, skip_serializing_if = "ResourceSpec::is_empty")]
    pub resources: ResourceSpec,
    /// Its ports (the replica's address is shared: no two containers may listen on one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Probes::is_empty")]
    pub probes: Probes,
    /// Default: the app's. Init containers restart on failure, always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// What a container is to its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The `i`th init container: runs to completion after those before it.
    Init(usize),
    /// The app's own container.
    Main,
    Sidecar,
}

/// One container of a replica, as the board runs it: its id, its role, and a spec of its own —
/// the app's with the container's fields in place of the app's own container's.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub id: String,
    /// The container's name (`-c NAME`): the app's name for its own container.
    pub name: String,
    pub role: Role,
    pub spec: AppSpec,
}

/// A container of a replica without its spec (what the agent's plan looks at every pass).
#[derive(Debug, Clone, PartialEq)]
pub struct Slot<'a> {
    pub id: String,
    pub name: &'a str,
    pub role: Role,
    pub image: &'a ImageRef,
}

/// The board's id of container `name` of `replica`.
pub fn container_id(replica: &str, name: &str) -> String {
    format!("{replica}.{name}")
}

/// The replica a container id belongs to.
pub fn replica_of(id: &str) -> &str {
    id.split_once('.').map_or(id, |(r, _)| r)
}

impl ResourceSpec {
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
    }
}

impl Probes {
    pub fn is_empty(&self) -> bool {
        self.liveness.is_none() && self.readiness.is_none() && self.startup.is_none()
    }
}

impl AppSpec {
    /// The ports of every container of a replica (they share its address): its own, then its
    /// other containers'.
    pub fn all_ports(&self) -> impl Iterator<Item = &PortSpec> + '_ {
        self.ports.iter().chain(self.containers.iter().flat_map(|c| &c.ports))
    }

    /// Whether its replicas run more than the app's own container.
    pub fn is_pod(&self) -> bool {
        !self.containers.is_empty() || !self.init.is_empty()
    }

    /// The spec container `c` runs with (a `role` of the app's replica).
    fn spec_of(&self, c: &ContainerSpec, role: Role) -> AppSpec {
        let mut s = self.clone();
        s.containers.clear();
        s.init.clear();
        s.image = c.image.clone();
        s.command = c.command.clone();
        s.args = c.args.clone();
        s.env.extend(c.env.clone());
        s.resources = c.resources.clone();
        s.ports = c.ports.clone();
        s.probes = c.probes.clone();
        s.workdir = c.workdir.clone().or_else(|| self.workdir.clone());
        s.user = c.user.clone().or_else(|| self.user.clone());
        // Devices go to the app's own container.
        s.devices.clear();
        s.restart = match role {
            Role::Init(_) => RestartPolicy::OnFailure,
            _ => c.restart.unwrap_or(self.restart),
        };
        s
    }

    /// [`AppSpec::units`] without their specs: ids, names, roles and images, in start order.
    pub fn slots(&self, replica: &str) -> Vec<Slot<'_>> {
        let mut out = Vec::with_capacity(1 + self.init.len() + self.containers.len());
        for (i, c) in self.init.iter().enumerate() {
            let id = container_id(replica, c.name.as_str());
            out.push(Slot { id, name: c.name.as_str(), role: Role::Init(i), image: &c.image });
        }
        out.push(Slot { id: replica.to_string(), name: self.name.as_str(), role: Role::Main, image: &self.image });
        for c in &self.containers {
            let id = container_id(replica, c.name.as_str());
            out.push(Slot { id, name: c.name.as_str(), role: Role::Sidecar, image: &c.image });
        }
        out
    }

    /// Every container of replica `replica`, in start order: init containers, then the app's own,
    /// then the others.
    pub fn units(&self, replica: &str) -> Vec<Unit> {
        let mut out = Vec::with_capacity(1 + self.init.len() + self.containers.len());
        for (i, c) in self.init.iter().enumerate() {
            let (id, name) = (container_id(replica, c.name.as_str()), c.name.as_str().to_string());
            out.push(Unit { id, name, role: Role::Init(i), spec: self.spec_of(c, Role::Init(i)) });
        }
        let mut main = self.clone();
        main.containers.clear();
        main.init.clear();
        out.push(Unit { id: replica.to_string(), name: self.name.as_str().to_string(), role: Role::Main, spec: main });
        for c in &self.containers {
            let (id, name) = (container_id(replica, c.name.as_str()), c.name.as_str().to_string());
            out.push(Unit { id, name, role: Role::Sidecar, spec: self.spec_of(c, Role::Sidecar) });
        }
        out
    }

    /// What a replica asks of a board: its running containers together, or its largest init
    /// container if that is more (they run before, one at a time).
    pub fn requests(&self) -> (u64, u64) {
        let cpu = |r: &ResourceSpec| r.cpu.map_or(0, |c| c.0);
        let mem = |r: &ResourceSpec| r.memory.map_or(0, |m| m.0);
        let running = std::iter::once(&self.resources).chain(self.containers.iter().map(|c| &c.resources));
        let (c, m) = running.fold((0u64, 0u64), |(c, m), r| (c.saturating_add(cpu(r)), m.saturating_add(mem(r))));
        let init_c = self.init.iter().map(|i| cpu(&i.resources)).max().unwrap_or(0);
        let init_m = self.init.iter().map(|i| mem(&i.resources)).max().unwrap_or(0);
        (c.max(init_c), m.max(init_m))
    }

    /// The checks of `[[app.containers]]` and `[[app.init]]`.
    pub(crate) fn check_pod(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut names: BTreeSet<&str> = BTreeSet::from([self.name.as_str()]);
        let mut ports: BTreeMap<(u16, Protocol), String> =
            self.ports.iter().map(|p| ((p.container.0, p.protocol), "the app's own container".to_string())).collect();
        let mut host_ports: BTreeSet<(u16, Protocol)> =
            self.ports.iter().filter_map(|p| Some((p.host?.0, p.protocol))).collect();
        let groups = [("init", &self.init), ("containers", &self.containers)];
        for (key, list) in groups {
            for (i, c) in list.iter().enumerate() {
                let at = |rest: &[PathPart]| {
                    let mut p = vec![Key(key), Index(i)];
                    p.extend_from_slice(rest);
                    p
                };
                if !names.insert(c.name.as_str()) {
                    let what = if c.name == self.name { "the app's own container" } else { "another container" };
                    out.push(Problem::new(
                        at(&[Key("name")]),
                        format!("{:?} is {what}'s name: expected each container to have its own", c.name.as_str()),
                    ));
                }
                if key == "init" {
                    for (field, set) in [
                        ("ports", !c.ports.is_empty()),
                        ("probes", !c.probes.is_empty()),
                        ("restart", c.restart.is_some()),
                    ] {
                        if set {
                            out.push(Problem::new(
                                at(&[Key(field)]),
                                format!("an init container runs to completion: it has no {field}"),
                            ));
                        }
                    }
                    continue;
                }
                if self.is_job() && c.restart.is_some() {
                    out.push(Problem::new(
                        at(&[Key("restart")]),
                        "a job's containers are not restarted in place: a failed run is retried as a new run",
                    ));
                }
                for (j, p) in c.ports.iter().enumerate() {
                    let owner = format!("container {}", c.name.as_str());
                    if let Some(other) = ports.insert((p.container.0, p.protocol), owner) {
                        out.push(Problem::new(
                            at(&[Key("ports"), Index(j), Key("container")]),
                            format!(
                                "port {} is {other}'s: the containers of a replica share its address",
                                p.container.0
                            ),
                        ));
                    }
                    if let Some(h) = p.host {
                        if !host_ports.insert((h.0, p.protocol)) {
                            out.push(Problem::new(
                                at(&[Key("ports"), Index(j), Key("host")]),
                                format!("host port {} is listed twice", h.0),
                            ));
                        }
                    }
                }
                // Its own fields, checked as an app's are (probes against its own ports).
                let own = self.spec_of(c, Role::Sidecar);
                for mut p in own.check() {
                    let head = match p.path.first() {
                        Some(Key(k)) => *k,
                        _ => continue,
                    };
                    if matches!(head, "ports" | "probes" | "resources" | "env" | "workdir" | "user") {
                        let mut path = at(&[]);
                        path.append(&mut p.path);
                        out.push(Problem { path, message: p.message });
                    }
                }
            }
        }
        out
    }
}
