//! From an app and an image to a [`ContainerConfig`]: the image config's entrypoint, cmd, env,
//! working dir and user, overridden by the app's, with the user resolved from the image's own
//! `/etc/passwd` and `/etc/group` (read without following a symlink out of the root filesystem).

use super::config::{ContainerConfig, FileMount, LogConfig, RestartPolicy, DEFAULT_PIDS_LIMIT};
use super::probe::ProbeConfig;
use super::resolve;
use bramble_images::oci::RunConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What an app asks of one container (the parts of `AppSpec` the runtime needs).
#[derive(Debug, Clone)]
pub struct AppOverrides {
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub readonly_rootfs: bool,
    pub restart: RestartPolicy,
    pub stop_grace_ms: u64,
    pub stop_signal: i32,
    pub probes: Vec<ProbeConfig>,
}

impl Default for AppOverrides {
    fn default() -> Self {
        AppOverrides {
            command: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            cpu_millis: None,
            memory_bytes: None,
            readonly_rootfs: false,
            restart: RestartPolicy::default(),
            stop_grace_ms: 10_000,
            stop_signal: libc::SIGTERM,
            probes: Vec::new(),
        }
    }
}

/// Reads a small file inside `rootfs` without following symlinks anywhere on the way.
pub fn read_inside(rootfs: &Path, rel: &str) -> Option<String> {
    let bytes = bramble_images::rootfs::read_file_inside(rootfs, rel, 1 << 20).ok()??;
    String::from_utf8(bytes).ok()
}

pub fn container_config(
    id: &str,
    hostname: &str,
    rootfs: PathBuf,
    image: &RunConfig,
    app: &AppOverrides,
    log_dir: &Path,
) -> Result<ContainerConfig, String> {
    // The pod's network (namespace, resolv.conf, hosts) comes from `with_network`.
    let args = resolve::argv(
        image.entrypoint.as_deref().unwrap_or_default(),
        image.cmd.as_deref().unwrap_or_default(),
        &app.command,
        &app.args,
    )?;
    let env = resolve::env(image.env.as_deref().unwrap_or_default(), &app.env);
    let user = app.user.clone().or_else(|| image.user.clone()).unwrap_or_default();
    let passwd = read_inside(&rootfs, "etc/passwd").unwrap_or_default();
    let group = read_inside(&rootfs, "etc/group").unwrap_or_default();
    let (uid, gid, additional_gids) = resolve::user(&user, &passwd, &group)?;
    let cwd = app
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(ContainerConfig {
        id: id.to_string(),
        rootfs,
        args,
        env,
        cwd,
        uid,
        gid,
        additional_gids,
        hostname: hostname.to_string(),
        readonly_rootfs: app.readonly_rootfs,
        cpu_millis: app.cpu_millis,
        memory_bytes: app.memory_bytes,
        pids_limit: DEFAULT_PIDS_LIMIT,
        restart: app.restart,
        stop_grace_ms: app.stop_grace_ms,
        backoff_base_ms: None,
        log: LogConfig { path: log_dir.join(format!("{id}.log")), max_bytes: 10 << 20, max_files: 2 },
        netns: None,
        host_network: false,
        files: Vec::new(),
        ip: None,
        stop_signal: app.stop_signal,
        probes: app.probes.clone(),
        tmpfs: Vec::new(),
        binds: Vec::new(),
        secret_env: Vec::new(),
        unconfined: false,
        devices: Vec::new(),
        cap_add: Vec::new(),
        cap_drop: Vec::new(),
        cgroup_parent: super::config::DEFAULT_CGROUP_PARENT.into(),
    })
}

/// `config` in a pod network: its namespace (none: the board's own), and its resolv.conf and
/// hosts over the image's.
pub fn with_network(
    mut config: ContainerConfig,
    ip: std::net::Ipv4Addr,
    netns: Option<&Path>,
    resolv_conf: &Path,
    hosts: &Path,
) -> ContainerConfig {
    config.host_network = netns.is_none();
    config.netns = netns.map(Path::to_path_buf);
    config.ip = Some(ip);
    config.files = vec![
        FileMount { source: resolv_conf.to_path_buf(), destination: "/etc/resolv.conf".into() },
        FileMount { source: hosts.to_path_buf(), destination: "/etc/hosts".into() },
    ];
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_and_app_combine() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nweb:x:1000:1000::/:/bin/sh\n")
            .unwrap();
        std::fs::write(root.path().join("etc/group"), "web:x:1000:\nvideo:x:44:web\n").unwrap();
        let image = RunConfig {
            user: Some("web".into()),
            env: Some(vec!["PATH=/bin".into(), "MODE=dev".into()]),
            entrypoint: Some(vec!["/bin/httpd".into()]),
            cmd: Some(vec!["-f".into()]),
            working_dir: Some("/www".into()),
            ..Default::default()
        };
        let mut app = AppOverrides {
            args: vec!["-f".into(), "-p".into(), "8080".into()],
            memory_bytes: Some(1 << 26),
            ..Default::default()
        };
        app.env.insert("MODE".into(), "prod".into());
        let c =
            container_config("web-1", "web-1", root.path().to_path_buf(), &image, &app, Path::new("/logs")).unwrap();
        assert_eq!(c.args, ["/bin/httpd", "-f", "-p", "8080"]);
        assert_eq!(c.env, ["PATH=/bin", "MODE=prod"]);
        assert_eq!((c.uid, c.gid, c.additional_gids.clone()), (1000, 1000, vec![44]));
        assert_eq!(c.cwd, "/www");
        assert_eq!(c.memory_bytes, Some(1 << 26));
        assert_eq!(c.log.path, Path::new("/logs/web-1.log"));
        // /etc/passwd that is a symlink out of the root is not read.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("etc/passwd")).unwrap();
        let e = container_config("w", "w", root.path().to_path_buf(), &image, &app, Path::new("/l")).unwrap_err();
        assert!(e.contains("user \"web\" is not in the image's /etc/passwd"), "{e}");
    }
}
