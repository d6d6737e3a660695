//! The OCI runtime spec for a container: Docker's defaults (capabilities, masked and read-only
//! paths, mounts), our resources, no new privileges. A pure function of the config.

use super::config::ContainerConfig;
use libcontainer::oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use std::collections::HashSet;

/// The capabilities Docker gives a container by default, but CAP_MKNOD: no container makes
/// device nodes (on cgroup v2 a node it could make would be checked only by the device program).
pub const DOCKER_CAPS: [Capability; 13] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Docker's default set, with `add` and without `drop` (`ALL` drops every one first).
pub fn capabilities(add: &[String], drop: &[String]) -> Result<HashSet<Capability>, String> {
    let parse = |n: &String| n.parse::<Capability>().map_err(|_| format!("unknown capability {n:?}"));
    let mut caps: HashSet<Capability> =
        if drop.iter().any(|d| d == "ALL") { HashSet::new() } else { DOCKER_CAPS.into_iter().collect() };
    for d in drop.iter().filter(|d| *d != "ALL") {
        caps.remove(&parse(d)?);
    }
    for a in add {
        caps.insert(parse(a)?);
    }
    Ok(caps)
}

/// The CFS period used for CPU limits (100 ms, as Docker and Kubernetes use).
pub const CPU_PERIOD_US: u64 = 100_000;

/// cgroup v1 `cpu.shares` from millicores, as Kubernetes computes it (min 2).
pub fn cpu_shares(millis: u64) -> u64 {
    (millis * 1024 / 1000).max(2)
}

pub fn build(c: &ContainerConfig) -> Result<Spec, String> {
    let e = |x: libcontainer::oci_spec::OciSpecError| x.to_string();
    let caps = capabilities(&c.cap_add, &c.cap_drop)?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps.clone())
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(e)?;
    let user =
        UserBuilder::default().uid(c.uid).gid(c.gid).additional_gids(c.additional_gids.clone()).build().map_err(e)?;
    // Secret variables come from the replica's secrets tmpfs, read now: they are in no file on
    // disk (the bundle that holds this spec is a tmpfs too, see the shim).
    let mut env = c.env.clone();
    for (name, path) in &c.secret_env {
        let value = std::fs::read(path).map_err(|err| format!("secret variable {name}: {}: {err}", path.display()))?;
        let value = String::from_utf8(value).map_err(|_| format!("secret variable {name}: the value is not UTF-8"))?;
        env.retain(|v| v.split_once('=').map(|(k, _)| k) != Some(name.as_str()));
        env.push(format!("{name}={value}"));
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(c.args.clone())
        .env(env)
        .cwd(c.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()
        .map_err(e)?;
    let root = RootBuilder::default().path(c.rootfs.clone()).readonly(c.readonly_rootfs).build().map_err(e)?;

    let mut resources = LinuxResourcesBuilder::default();
    if let Some(m) = c.cpu_millis {
        let quota = (m * CPU_PERIOD_US / 1000).max(1000) as i64;
        resources = resources.cpu(
            LinuxCpuBuilder::default().quota(quota).period(CPU_PERIOD_US).shares(cpu_shares(m)).build().map_err(e)?,
        );
    }
    if let Some(m) = c.memory_bytes {
        // No swap beyond the limit: memory+swap equal to memory.
        resources = resources.memory(LinuxMemoryBuilder::default().limit(m as i64).swap(m as i64).build().map_err(e)?);
    }
    resources = resources.pids(LinuxPidsBuilder::default().limit(c.pids_limit).build().map_err(e)?);
    // Every device denied first; libcontainer then allows the defaults (super::devices) on
    // cgroup v1; on v2 the shim attaches the same rules as a program.
    let deny_all = LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().map_err(e)?;
    let mut rules = vec![deny_all];
    // The app's devices: each node read and write, nothing else (on v2 the shim adds the same
    // rules to its program: `devices::rules_for`).
    let mut nodes = Vec::new();
    for d in &c.devices {
        let typ = match d.kind {
            bramble_proto::device::DeviceKind::Char => LinuxDeviceType::C,
            bramble_proto::device::DeviceKind::Block => LinuxDeviceType::B,
        };
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(i64::from(d.major))
                .minor(i64::from(d.minor))
                .access("rw")
                .build()
                .map_err(e)?,
        );
        nodes.push(
            LinuxDeviceBuilder::default()
                .path(std::path::PathBuf::from(&d.path))
                .typ(typ)
                .major(i64::from(d.major))
                .minor(i64::from(d.minor))
                .file_mode(d.mode & 0o777)
                .uid(0u32)
                .gid(d.gid)
                .build()
                .map_err(e)?,
        );
    }
    resources = resources.devices(rules);

    // The default Linux section (namespaces, masked and read-only paths, devices) with our
    // resources and cgroup path.
    let defaults = Spec::default().linux().clone().unwrap_or_default();
    let mut namespaces = defaults.namespaces().clone().unwrap_or_default();
    // The pod's network namespace, if it has one: it outlives the container's restarts. On the
    // host network, none: the container shares the board's (as the shim's own).
    if c.host_network {
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
    } else if let Some(path) = &c.netns {
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
        namespaces.push(
            LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path(path.clone()).build().map_err(e)?,
        );
    }
    let mut linux = LinuxBuilder::default();
    if !nodes.is_empty() {
        linux = linux.devices(nodes);
    }
    let linux = linux
        .namespaces(namespaces)
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .resources(resources.build().map_err(e)?)
        .cgroups_path(std::path::PathBuf::from(c.cgroups_path()))
        .build()
        .map_err(e)?;
    let mut spec = Spec::default();
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    // Nothing runs from /dev (Docker mounts it noexec too).
    for m in mounts.iter_mut().filter(|m| m.destination() == std::path::Path::new("/dev")) {
        let mut options = m.options().clone().unwrap_or_default();
        options.push("noexec".into());
        m.set_options(Some(options));
    }
    for f in &c.files {
        let options = ["rbind", "ro", "nosuid", "nodev", "noexec"].map(String::from).to_vec();
        let m = MountBuilder::default()
            .destination(std::path::PathBuf::from(&f.destination))
            .typ("bind")
            .source(f.source.clone())
            .options(options)
            .build()
            .map_err(e)?;
        mounts.push(m);
    }
    for b in &c.binds {
        let mut options = vec!["rbind".to_string(), "nosuid".into(), "nodev".into()];
        if b.read_only {
            options.push("ro".into());
        }
        let m = MountBuilder::default()
            .destination(std::path::PathBuf::from(&b.destination))
            .typ("bind")
            .source(b.source.clone())
            .options(options)
            .build()
            .map_err(e)?;
        mounts.push(m);
    }
    for (destination, size) in &c.tmpfs {
        let options = ["nosuid", "nodev", "mode=1777"].map(String::from).into_iter().chain([format!("size={size}")]);
        let m = MountBuilder::default()
            .destination(std::path::PathBuf::from(destination))
            .typ("tmpfs")
            .source("tmpfs")
            .options(options.collect::<Vec<_>>())
            .build()
            .map_err(e)?;
        mounts.push(m);
    }
    spec.set_process(Some(process))
        .set_root(Some(root))
        .set_hostname(Some(c.hostname.clone()))
        .set_linux(Some(linux))
        .set_mounts(Some(mounts));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::config::{LogConfig, RestartPolicy};

    pub fn config() -> ContainerConfig {
        ContainerConfig {
            id: "web-1".into(),
            rootfs: "/r".into(),
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![],
            hostname: "web-1".into(),
            readonly_rootfs: true,
            cpu_millis: Some(250),
            memory_bytes: Some(64 << 20),
            pids_limit: 100,
            restart: RestartPolicy::Always,
            stop_grace_ms: 1000,
            backoff_base_ms: None,
            log: LogConfig { path: "/l".into(), max_bytes: 1 << 20, max_files: 2 },
            netns: Some("/run/pods/web-1/netns".into()),
            host_network: false,
            files: vec![crate::runtime::config::FileMount {
                source: "/run/pods/web-1/resolv.conf".into(),
                destination: "/etc/resolv.conf".into(),
            }],
            ip: None,
            stop_signal: 15,
            probes: Vec::new(),
            tmpfs: Vec::new(),
            binds: Vec::new(),
            secret_env: Vec::new(),
            unconfined: false,
            devices: Vec::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            cgroup_parent: crate::runtime::config::DEFAULT_CGROUP_PARENT.into(),
        }
    }

    #[test]
    fn capabilities_added_and_dropped() {
        let names = |add: &[&str], drop: &[&str]| {
            let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
            let mut v: Vec<String> = capabilities(&s(add), &s(drop)).unwrap().iter().map(|c| c.to_string()).collect();
            v.sort();
            v
        };
        let default = names(&[], &[]);
        assert_eq!(default.len(), 13);
        assert!(!default.contains(&"NET_ADMIN".to_string()) && !default.contains(&"MKNOD".to_string()));
        assert!(names(&["NET_ADMIN"], &[]).contains(&"NET_ADMIN".to_string()));
        assert!(!names(&[], &["NET_RAW"]).contains(&"NET_RAW".to_string()));
        assert_eq!(names(&["NET_BIND_SERVICE"], &["ALL"]), ["NET_BIND_SERVICE"]);
        assert!(capabilities(&["NOPE".into()], &[]).is_err());
        let mut c = config();
        c.cap_add = vec!["SYS_TIME".into()];
        let spec = build(&c).unwrap();
        let caps = spec.process().as_ref().unwrap().capabilities().as_ref().unwrap();
        assert!(caps.bounding().as_ref().unwrap().contains(&Capability::SysTime));
        assert!(caps.effective().as_ref().unwrap().contains(&Capability::SysTime));
    }

    #[test]
    fn resources_and_hardening() {
        let s = build(&config()).unwrap();
        let linux = s.linux().as_ref().unwrap();
        let r = linux.resources().as_ref().unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period(), cpu.shares()), (Some(25_000), Some(100_000), Some(256)));
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 100);
        assert_eq!(linux.cgroups_path().as_ref().unwrap().to_str(), Some("/bramble/web-1"));
        assert!(linux.masked_paths().as_ref().unwrap().iter().any(|p| p == "/proc/kcore"));
        assert!(linux.readonly_paths().as_ref().unwrap().iter().any(|p| p == "/proc/sys"));
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap().bounding().as_ref().unwrap();
        assert_eq!(caps.len(), 13);
        assert!(!caps.contains(&Capability::SysAdmin));
        assert!(!caps.contains(&Capability::Mknod));
        let devices = r.devices().as_ref().unwrap();
        assert_eq!((devices[0].allow(), devices[0].access().as_deref()), (false, Some("rwm")), "deny all first");
        let dev = s.mounts().as_ref().unwrap().iter().find(|m| m.destination().to_str() == Some("/dev")).unwrap();
        let options = dev.options().as_ref().unwrap();
        assert!(["nosuid", "noexec"].iter().all(|o| options.iter().any(|x| x == o)), "{options:?}");
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        let mounts: Vec<_> =
            s.mounts().as_ref().unwrap().iter().map(|m| m.destination().display().to_string()).collect();
        for m in ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/etc/resolv.conf"] {
            assert!(mounts.contains(&m.to_string()), "{m} in {mounts:?}");
        }
        let net = linux.namespaces().as_ref().unwrap().iter().filter(|n| n.typ() == LinuxNamespaceType::Network);
        let paths: Vec<_> = net.map(|n| n.path().clone()).collect();
        assert_eq!(paths, [Some("/run/pods/web-1/netns".into())], "the pod's namespace, once");
        assert_eq!(cpu_shares(1), 2);
    }

    #[test]
    fn a_host_network_container_has_no_network_namespace_but_keeps_the_others() {
        let c = ContainerConfig { netns: None, host_network: true, ..config() };
        let s = build(&c).unwrap();
        let kinds: Vec<_> =
            s.linux().as_ref().unwrap().namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
        assert!(!kinds.contains(&LinuxNamespaceType::Network), "{kinds:?}");
        for k in [LinuxNamespaceType::Mount, LinuxNamespaceType::Pid, LinuxNamespaceType::Uts, LinuxNamespaceType::Ipc]
        {
            assert!(kinds.contains(&k), "{k:?} in {kinds:?}");
        }
        // Without host_network and without a pod, a new empty namespace (never the board's).
        let s = build(&ContainerConfig { netns: None, ..config() }).unwrap();
        let net = s
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network);
        assert_eq!(net.map(|n| n.path().clone()), Some(None), "a new one");
    }
}
