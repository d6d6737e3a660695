//! A whole cluster of real processes: a leader and N agents, each in its own network namespace.

use crate::netlab::NetLab;
use crate::process::{bin_dir, Proc};
use crate::wait_for;
use bramble_proto::model::{ConditionStatus, NodeView};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub const LEADER_PORT: u16 = 7443;

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub agents: usize,
    /// The leader's `nodes.not_ready_after`.
    pub not_ready_after: &'static str,
    /// The leader's `nodes.heartbeat`.
    pub heartbeat: &'static str,
    /// More TOML for every agent's config file (e.g. `[[images.registry]]` tables).
    pub agent_toml: String,
    /// More `bramble-leader init` flags (e.g. `--network-backend vxlan`).
    pub init_args: Vec<String>,
    /// Boards from this index on are on a second LAN behind a router (none: one LAN).
    pub second_lan_from: Option<usize>,
    /// The leader's `pki.node_cert_lifetime` and `pki.leader_cert_lifetime` (none: the defaults).
    pub cert_lifetime: Option<&'static str>,
    /// The leader's `metrics.listen` (none: off).
    pub metrics_listen: Option<String>,
    /// More edits of the rendered leader.toml: (text, replacement; `@LEADER_ADDR@` in it is the
    /// leader's address).
    pub leader_toml_edits: Vec<(String, String)>,
    /// Members of an etcd cluster in the leader's namespace that the leader keeps the cluster
    /// in (0: redb). Agents then also know the second leader's address ([`Cluster::add_leader`]).
    pub etcd: usize,
    /// Boards whose address agents also know as a leader's (`<addr>:7443`): where a leader may be
    /// restored.
    pub leaders_also_on: Vec<usize>,
    /// The agent binary the boards run (none: this build's).
    pub agent_bin: Option<PathBuf>,
    /// The leader binary (none: this build's).
    pub leader_bin: Option<PathBuf>,
    /// The PATH agents run with (none: this process's): where they find `nft`.
    pub agent_path: Option<String>,
    /// Agents get no leader address: they find the leader on the lab's LAN (mDNS).
    pub discover: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            agents: 3,
            not_ready_after: "3s",
            heartbeat: "1s",
            agent_toml: String::new(),
            init_args: Vec::new(),
            second_lan_from: None,
            cert_lifetime: None,
            metrics_listen: None,
            leader_toml_edits: Vec::new(),
            etcd: 0,
            leaders_also_on: Vec::new(),
            agent_bin: None,
            leader_bin: None,
            agent_path: None,
            discover: false,
        }
    }
}

/// The port of the second leader (highly available leaders on etcd).
pub const SECOND_LEADER_PORT: u16 = 7444;
/// The first etcd member's client port in the leader's namespace (then peer, client, …).
pub const ETCD_PORT: u16 = 2379;

#[derive(Debug)]
pub struct Cluster {
    pub agents: Vec<Option<Proc>>,
    pub leader: Option<Proc>,
    pub token: String,
    pub dir: tempfile::TempDir,
    pub bins: PathBuf,
    /// The agent binary boards start (default: `bins/bramble-agent`; another build for upgrades).
    pub agent_bin: PathBuf,
    /// The leader binary [`Cluster::start_leader`] starts (default: `bins/bramble-leader`).
    pub leader_bin: PathBuf,
    agent_toml: String,
    agent_path: Option<String>,
    discover: bool,
    /// Leaders added by [`Cluster::add_leader`] (name, process).
    pub more_leaders: Vec<(String, Option<Proc>)>,
    /// Where agents look for leaders.
    leader_addrs: Vec<String>,
    pub etcd: Option<bramble_leader::store::local_etcd::LocalEtcd>,
    // Dropped last: processes die before their namespaces go.
    pub lab: NetLab,
}

impl Cluster {
    pub fn start(opts: ClusterOptions) -> Cluster {
        Self::start_with(opts, |_| String::new())
    }

    /// Like [`Cluster::start`], with more agent config made from the lab (e.g. its addresses).
    pub fn start_with(mut opts: ClusterOptions, agent_toml: impl Fn(&NetLab) -> String) -> Cluster {
        let lab = match opts.second_lan_from {
            Some(from) => NetLab::routed(opts.agents, from),
            None => NetLab::new(opts.agents),
        };
        opts.agent_toml.push_str(&agent_toml(&lab));
        let bins = bin_dir();
        let dir = tempfile::Builder::new().prefix("bramble-e2e-").tempdir().expect("temp dir");
        let leader_dir = dir.path().join("leader");
        let listen = format!("{}:{LEADER_PORT}", lab.addr(0));
        let mut leader_addrs = vec![listen.clone()];
        leader_addrs.extend(opts.leaders_also_on.iter().map(|i| format!("{}:{LEADER_PORT}", lab.addr(*i))));
        let etcd = (opts.etcd > 0).then(|| {
            let e = bramble_leader::store::local_etcd::LocalEtcd::start(
                opts.etcd,
                &lab.addr(0),
                Some(&lab.ns(0)),
                Some(ETCD_PORT),
            );
            opts.init_args.extend(
                ["--store", "etcd", "--etcd-endpoints", &e.endpoints().join(","), "--leader-name", "leader-a"]
                    .map(String::from),
            );
            leader_addrs.push(format!("{}:{SECOND_LEADER_PORT}", lab.addr(0)));
            e
        });
        // Made by the leader that runs it (an older version in the upgrade tests: the config a
        // cluster of that version has, which the new one must read).
        let init_bin = opts.leader_bin.clone().unwrap_or_else(|| bins.join("bramble-leader"));
        let out = Command::new(init_bin)
            .args(["init", "--data-dir", leader_dir.to_str().expect("utf-8"), "--listen", &listen])
            .args(&opts.init_args)
            .output()
            .expect("run bramble-leader init");
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        let cfg_path = leader_dir.join("leader.toml");
        let cfg = std::fs::read_to_string(&cfg_path)
            .expect("leader.toml")
            .replace("not_ready_after = \"5s\"", &format!("not_ready_after = \"{}\"", opts.not_ready_after))
            .replace("heartbeat = \"2s\"", &format!("heartbeat = \"{}\"", opts.heartbeat));
        // `@LEADER_ADDR@` in an edit: the leader's address on the lab's LAN.
        let cfg = opts.leader_toml_edits.iter().fold(cfg, |cfg, (from, to)| {
            assert!(cfg.contains(from.as_str()), "leader.toml has no {from:?} to replace");
            cfg.replace(from.as_str(), &to.replace("@LEADER_ADDR@", &lab.addr(0)))
        });
        let cfg = match &opts.metrics_listen {
            Some(l) => cfg.replace("# listen = \"127.0.0.1:7449\"", &format!("listen = \"{l}\"")),
            None => cfg,
        };
        let cfg = match opts.cert_lifetime {
            None => cfg,
            Some(l) => cfg
                .lines()
                .map(|line| match line.split_once(" = ") {
                    Some((k @ ("node_cert_lifetime" | "leader_cert_lifetime"), _)) => format!("{k} = \"{l}\""),
                    _ => line.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n"),
        };
        std::fs::write(&cfg_path, cfg).expect("write leader.toml");
        let mut c = Cluster {
            agents: (0..opts.agents).map(|_| None).collect(),
            leader: None,
            token: String::new(),
            dir,
            agent_bin: opts.agent_bin.clone().unwrap_or_else(|| bins.join("bramble-agent")),
            leader_bin: opts.leader_bin.clone().unwrap_or_else(|| bins.join("bramble-leader")),
            bins,
            agent_toml: opts.agent_toml.clone(),
            agent_path: opts.agent_path.clone(),
            discover: opts.discover,
            more_leaders: Vec::new(),
            leader_addrs,
            etcd,
            lab,
        };
        c.start_leader();
        let out = c.cli(&["token", "create", "--ttl", "1h"]);
        assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
        c.token = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
        for i in 1..=opts.agents {
            c.start_agent(i);
        }
        for i in 1..=opts.agents {
            c.wait_status(i, ConditionStatus::True, Duration::from_secs(30));
        }
        c
    }

    pub fn leader_dir(&self) -> PathBuf {
        self.dir.path().join("leader")
    }

    /// Starts (or restarts) the leader and waits until it answers.
    pub fn start_leader(&mut self) {
        let cfg = self.leader_dir().join("leader.toml");
        let args = vec!["run".to_string(), "--config".into(), cfg.display().to_string()];
        let log = self.dir.path().join("leader.log");
        self.leader = Some(Proc::spawn("leader", &self.lab.ns(0), &self.leader_bin, &args, &log));
        wait_for("the leader to answer", Duration::from_secs(20), || {
            self.cli(&["get", "nodes"]).status.success().then_some(())
        });
    }

    pub fn leader(&self) -> &Proc {
        self.leader.as_ref().expect("leader running")
    }

    /// Adds a second leader (`leader-b`, on [`SECOND_LEADER_PORT`]) sharing the cluster's etcd: a
    /// backup gives it the CA and the secrets key, `restore --join` makes its data dir; both
    /// addresses go into admin.toml. Returns its index in `more_leaders`.
    pub fn add_leader(&mut self) -> usize {
        let dir = self.dir.path().join("leader-b");
        let pass = self.dir.path().join("ha.pass");
        std::fs::write(&pass, "a passphrase for the second leader\n").expect("write the passphrase");
        let file = self.dir.path().join("ha.bak");
        crate::ok(
            self.cli(&[
                "backup",
                "--out",
                file.to_str().expect("utf-8"),
                "--passphrase-file",
                pass.to_str().expect("utf-8"),
            ]),
            "backup for the second leader",
        );
        let endpoints = self.etcd.as_ref().expect("a cluster on etcd").endpoints().join(",");
        let listen = format!("{}:{SECOND_LEADER_PORT}", self.lab.addr(0));
        // In the leader's namespace, where etcd is.
        let out = Command::new("ip")
            .args(["netns", "exec", &self.lab.ns(0)])
            .arg(self.bins.join("bramble-leader"))
            .args(["restore", "--join", "--store", "etcd", "--etcd-endpoints", &endpoints, "--leader-name", "leader-b"])
            .args(["--listen", &listen, "--data-dir", dir.to_str().expect("utf-8"), "--passphrase-file"])
            .arg(&pass)
            .arg(&file)
            .output()
            .expect("run bramble-leader restore --join");
        assert!(out.status.success(), "restore --join: {}", String::from_utf8_lossy(&out.stderr));
        let admin = self.leader_dir().join("admin.toml");
        let text = std::fs::read_to_string(&admin).expect("admin.toml");
        let first = format!("\"{}:{LEADER_PORT}\"", self.lab.addr(0));
        assert!(text.contains(&first), "admin.toml names the first leader");
        std::fs::write(&admin, text.replacen(&first, &format!("{first}, \"{listen}\""), 1)).expect("write admin.toml");
        self.more_leaders.push(("leader-b".into(), None));
        let i = self.more_leaders.len() - 1;
        self.start_more_leader(i);
        i
    }

    /// Starts (again) leader `more_leaders[i]`.
    pub fn start_more_leader(&mut self, i: usize) {
        let name = self.more_leaders[i].0.clone();
        let cfg = self.dir.path().join(&name).join("leader.toml");
        let args = vec!["run".to_string(), "--config".into(), cfg.display().to_string()];
        let log = self.dir.path().join(format!("{name}.log"));
        let p = Proc::spawn(&name, &self.lab.ns(0), &self.bins.join("bramble-leader"), &args, &log);
        self.more_leaders[i].1 = Some(p);
    }

    /// `bramble get leaders -o json`.
    pub fn leaders(&self) -> Vec<bramble_proto::wire::LeaderInfo> {
        serde_json::from_str(&crate::ok(self.cli(&["get", "leaders", "-o", "json"]), "get leaders"))
            .expect("leaders as JSON")
    }

    pub fn node_name(i: usize) -> String {
        format!("board-{i}")
    }

    /// Agent `i`'s data dir.
    pub fn agent_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("agent-{i}"))
    }

    /// Starts agent `i` (1-based) in its namespace; it joins with the token on its first start.
    pub fn start_agent(&mut self, i: usize) {
        let data = self.agent_dir(i);
        let leader = self.leader_addrs.join(",");
        let config = self.dir.path().join(format!("agent-{i}.toml"));
        // `@BOARD@` in the agent config: the board's number (a directory of its own, say).
        let mut toml = self.agent_toml.replace("@BOARD@", &i.to_string());
        // Containers' cgroups under a parent of the board's own (this build's agents: an older
        // one does not know the setting): agents sweep their parent of containers without shims,
        // and tests run side by side.
        if self.agent_bin == self.bins.join("bramble-agent") {
            let line = format!("cgroup_parent = \"{}\"\n", self.cgroup_parent(i));
            toml = if toml.contains("[resources]\n") {
                toml.replacen("[resources]\n", &format!("[resources]\n{line}"), 1)
            } else {
                format!("{toml}\n[resources]\n{line}")
            };
        }
        std::fs::write(&config, format!("version = 1\n{toml}")).expect("write the agent config");
        let mut args: Vec<String> = vec!["run".into(), "--config".into(), config.to_str().expect("utf-8").into()];
        if !self.discover {
            args.extend(["--leader".to_string(), leader]);
        }
        args.extend(
            ["--token", &self.token, "--name", &Self::node_name(i), "--data-dir", data.to_str().expect("utf-8")]
                .map(String::from),
        );
        let log = self.dir.path().join(format!("agent-{i}.log"));
        let env: Vec<(&str, &str)> = self.agent_path.iter().map(|p| ("PATH", p.as_str())).collect();
        self.agents[i - 1] =
            Some(Proc::spawn_env(&Self::node_name(i), &self.lab.ns(i), &self.agent_bin, &args, &log, &env));
    }

    /// The cgroup agent `i`'s containers go under (`/sys/fs/cgroup/[<controller>/]<it>/<id>`).
    pub fn cgroup_parent(&self, i: usize) -> String {
        format!("bramble-{}", self.lab.ns(i))
    }

    /// Where agent `i` keeps its shims (under `/run/bramble`: they last one boot).
    pub fn shims_dir(&self, i: usize) -> PathBuf {
        bramble_agent::reconcile::Paths::new(&self.agent_dir(i)).shims
    }

    pub fn agent(&self, i: usize) -> &Proc {
        self.agents[i - 1].as_ref().expect("agent running")
    }

    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut p) = self.agents[i - 1].take() {
            p.stop(Signal::SIGKILL);
        }
    }

    /// The replicas of `app` (`bramble get replicas --app`).
    pub fn replicas_of(&self, app: &str) -> Vec<bramble_proto::model::Replica> {
        serde_json::from_str(&crate::ok(self.cli(&["get", "replicas", "--app", app, "-o", "json"]), "get replicas"))
            .expect("replicas as JSON")
    }

    /// Runs the CLI in the leader's namespace with the admin config.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(&self.leader_dir().join("admin.toml"), args)
    }

    /// Writes a manifest (or any file) `name` into the cluster's directory; its path.
    pub fn write(&self, name: &str, body: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, body).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p.to_str().expect("a UTF-8 path").to_string()
    }

    /// `bramble ARGS` as the admin, which must succeed; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "bramble {}: {}", args.join(" "), crate::text(&out.stderr));
        crate::text(&out.stdout)
    }

    /// Runs the CLI in the leader's namespace with the CLI config `config` (another user's).
    pub fn cli_as(&self, config: &Path, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.lab.ns(0)])
            .arg(self.bins.join("bramble"))
            .arg("--config")
            .arg(config)
            .args(args)
            .output()
            .expect("run bramble")
    }

    /// Runs the CLI with `input` on its standard input.
    pub fn cli_input(&self, args: &[&str], input: &[u8]) -> Output {
        let admin = self.leader_dir().join("admin.toml");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.lab.ns(0)])
            .arg(self.bins.join("bramble"))
            .arg("--config")
            .arg(admin)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run bramble");
        let mut stdin = child.stdin.take().expect("piped");
        std::io::Write::write_all(&mut stdin, input).expect("write the input");
        drop(stdin);
        child.wait_with_output().expect("bramble ends")
    }

    pub fn nodes(&self) -> Vec<NodeView> {
        let out = self.cli(&["get", "nodes", "-o", "json"]);
        assert!(out.status.success(), "get nodes: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("get nodes -o json parses")
    }

    pub fn node(&self, i: usize) -> NodeView {
        let name = Self::node_name(i);
        self.nodes().into_iter().find(|n| n.node.meta.name == name).unwrap_or_else(|| panic!("node {name} is listed"))
    }

    /// Waits until node `i`'s Ready condition has `status`.
    pub fn wait_status(&self, i: usize, status: ConditionStatus, timeout: Duration) -> NodeView {
        wait_for(&format!("node {} to be {status:?}", Self::node_name(i)), timeout, || {
            self.nodes().into_iter().find(|n| n.node.meta.name == Self::node_name(i) && n.ready.status == status)
        })
    }
}

impl Cluster {
    /// Stops every container the agents left (they outlive agents by design), their shims,
    /// cgroups and mounts.
    pub fn remove_containers(&self) {
        // The agents (and leaders, which may run one) first: an agent still running would start
        // the replicas again while they are removed, in run directories removed next — containers
        // nothing could find again.
        for p in self
            .agents
            .iter()
            .flatten()
            .chain(self.leader.iter())
            .chain(self.more_leaders.iter().filter_map(|l| l.1.as_ref()))
        {
            p.halt();
        }
        let runtime_bin = self.bins.join("bramble-shim");
        // Every board's data dir, and the leader's embedded agent's (a one-board cluster).
        let mut data_dirs: Vec<PathBuf> = (1..=self.agents.len()).map(|i| self.agent_dir(i)).collect();
        data_dirs.push(self.leader_dir().join("agent"));
        for data in data_dirs {
            let run = bramble_agent::reconcile::run_dir(&data);
            // Both places shims live: this build's (under /run) and an older build's (an upgrade).
            for shims in [run.join("shims"), data.join("shims")] {
                if !shims.is_dir() {
                    continue;
                }
                let runtime = bramble_agent::runtime::Runtime::new(&shims, &runtime_bin);
                for id in runtime.ids() {
                    let _ = runtime.remove(&id, Duration::from_secs(5));
                }
            }
            let _ = std::fs::remove_dir_all(run);
        }
        // What no shim knew of any more: said, killed and removed, with the boards' parents.
        let cgroups = bramble_agent::runtime::cgroups::CgroupFs::host();
        for i in 1..=self.agents.len() {
            let parent = format!("/{}", self.cgroup_parent(i));
            for id in cgroups.children(&parent) {
                let killed = cgroups.kill_and_remove(&format!("{parent}/{id}"));
                eprintln!("left behind by board {i}: cgroup {parent}/{id} (killed: {killed:?})");
            }
            let _ = cgroups.remove_empty(&parent);
            let _ = std::fs::remove_file(format!("/run/bramble/cgroup-{}.lock", self.cgroup_parent(i)));
        }
        let base = self.dir.path().to_string_lossy().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&base)) {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in self.agents.iter_mut() {
            a.take();
        }
        self.leader.take();
        for l in self.more_leaders.iter_mut() {
            l.1.take();
        }
        self.remove_containers();
        // Keep the logs of a failed run where a human can read them (of every run, under
        // `BRAMBLE_TEST_KEEP_LOGS`, e.g. to read the agent's debug timings after a bench).
        let kept = std::env::var_os("BRAMBLE_TEST_KEEP_LOGS").map(PathBuf::from);
        if std::thread::panicking() || kept.is_some() {
            let keep = match kept {
                Some(dir) if !std::thread::panicking() => dir.join(&self.lab.prefix),
                _ => std::env::temp_dir().join(format!("bramble-e2e-failed-{}", self.lab.prefix)),
            };
            let _ = std::fs::create_dir_all(&keep);
            for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
                if entry.path().extension().is_some_and(|e| e == "log") {
                    let _ = std::fs::copy(entry.path(), keep.join(entry.file_name()));
                }
            }
            eprintln!("logs of the failed run are in {}", keep.display());
        }
    }
}

/// A cluster of `agents` boards (and `agent_toml` more in each agent's config) whose agents pull
/// from Debian's registry in the leader's namespace, which holds the busybox test image as
/// `bramble/busybox:1` (its OCI layout in `<dir>/layout`). Returns the cluster, the registry (keep
/// it alive) and the image reference.
pub fn with_busybox(agents: usize, agent_toml: &str) -> (Cluster, crate::registry::Registry, String) {
    with_busybox_opts(ClusterOptions { agents, ..Default::default() }, agent_toml)
}

/// One board sampled every second, the leader's metrics listener on `listen` (in its namespace)
/// and app `web` with `replicas` idle replicas of the busybox image, applied.
pub fn with_metrics_and_web(listen: &str, replicas: u32) -> (Cluster, crate::registry::Registry) {
    let opts = ClusterOptions { agents: 1, metrics_listen: Some(listen.to_string()), ..Default::default() };
    let (c, registry, image) = with_busybox_opts(opts, "[monitoring]\ninterval = \"1s\"\n");
    let manifest = idle_app(c.dir.path(), "web", &image, replicas as usize);
    crate::ok(c.cli(&["apply", "-f", manifest.to_str().expect("utf-8")]), "apply");
    (c, registry)
}

/// Writes `<dir>/<name>.toml`: app `name` with `replicas` idle replicas of `image` (a shell that
/// sleeps and exits on SIGTERM). Returns the path.
pub fn idle_app(dir: &Path, name: &str, image: &str, replicas: usize) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[[app]]\nname = \"{name}\"\nimage = \"{image}\"\nreplicas = {replicas}\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
        ),
    )
    .expect("write the manifest");
    path
}

/// [`with_busybox`] with more options.
pub fn with_busybox_opts(opts: ClusterOptions, agent_toml: &str) -> (Cluster, crate::registry::Registry, String) {
    let extra = agent_toml.to_string();
    let c = Cluster::start_with(opts, move |lab| {
        format!("{extra}[[images.registry]]\nhost = \"{}:5000\"\ninsecure = true\n", lab.addr(0))
    });
    let registry = crate::registry::Registry::start_in_netns(&c.lab.ns(0), &c.lab.addr(0));
    let layout = c.dir.path().join("layout");
    crate::testimages::busybox_layout(&layout, "1");
    let image = format!("{}/bramble/busybox:1", registry.addr);
    crate::testimages::push_from(Some(&c.lab.ns(0)), &layout, "1", &image);
    (c, registry, image)
}
