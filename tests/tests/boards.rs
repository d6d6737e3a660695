//! Virtual boards: the static aarch64 agent on an emulated arm64 machine (Debian's arm64 kernel under
//! `qemu-system-aarch64`, cgroup v2) joins a leader in a network namespace on this machine, pulls
//! the arm64 variant of the multi-arch busybox image and runs it.
//!
//! Slow (minutes under TCG) and it needs the aarch64 build, so it is ignored by `cargo test` and
//! run by `scripts/test-boards` after `cross/build.sh` (CI runs both).

use bramble_proto::model::{Arch, ConditionStatus, NodeView, Replica, ReplicaPhase};
use bramble_tests::cluster::{with_busybox_opts, ClusterOptions, LEADER_PORT};
use bramble_tests::{ok, wait_for};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// A virtual machine started by `scripts/vm` in its own process group, killed with it on drop.
struct Vm {
    child: Child,
    console: PathBuf,
}

impl Vm {
    fn start(ns: &str, args: &[&str], console: &Path) -> Vm {
        let log = std::fs::File::create(console).expect("console file");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(repo().join("scripts/vm"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("console file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start scripts/vm");
        Vm { child, console: console.to_path_buf() }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().expect("wait for scripts/vm") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

#[test]
#[ignore = "slow: an emulated arm64 board (minutes under TCG); scripts/test-boards runs it after cross/build.sh"]
fn an_emulated_arm64_board_joins_pulls_the_arm64_image_and_runs_it() {
    let agent = std::env::var_os("BRAMBLE_ARM64_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/aarch64-unknown-linux-musl/release/bramble-agent"));
    assert!(agent.exists(), "no aarch64 agent at {} (build it with cross/build.sh)", agent.display());
    // An emulated board answers slowly: more room before it counts as lost.
    let opts = ClusterOptions { agents: 0, not_ready_after: "60s", heartbeat: "5s", ..Default::default() };
    let (c, _registry, image) = with_busybox_opts(opts, "");
    let leader_ip = c.lab.addr(0);

    // What the board gets: the agent, its config and a script that runs it until told to stop.
    let share = c.dir.path().join("arm64-board");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::copy(&agent, share.join("bramble-agent")).unwrap();
    std::fs::write(
        share.join("agent.toml"),
        format!("version = 1\n[[images.registry]]\nhost = \"{leader_ip}:5000\"\ninsecure = true\n"),
    )
    .unwrap();
    std::fs::write(
        share.join("board.sh"),
        format!(
            "/mnt/bramble-agent check --data-dir /var/lib/bramble > /mnt/check.txt 2>&1; echo \"exit $?\" >> /mnt/check.txt\n\
             RUST_LOG=info /mnt/bramble-agent run --config /mnt/agent.toml --leader {leader_ip}:{LEADER_PORT} \
             --token {} --name arm64-board --data-dir /var/lib/bramble > /mnt/agent.log 2>&1 &\n\
             agent=$!\n\
             while [ ! -e /mnt/stop ]; do sleep 1; done\n\
             kill $agent; wait $agent; echo \"agent exited with $?\"\n",
            c.token
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut vm = Vm::start(
        &c.lab.ns(0),
        &[
            "run",
            "--arch",
            "arm64",
            "--net",
            "--share",
            share.to_str().unwrap(),
            "--timeout",
            "1200",
            "--",
            "sh",
            "/mnt/board.sh",
        ],
        &c.dir.path().join("arm64-console.log"),
    );
    let agent_log = || std::fs::read_to_string(share.join("agent.log")).unwrap_or_default();

    // The board joins and says it is an arm64 machine.
    let node: NodeView = wait_for("the arm64 board Ready", Duration::from_secs(600), || {
        assert!(vm.child.try_wait().unwrap().is_none(), "the VM stopped:\n{}\nagent:\n{}", vm.console(), agent_log());
        let nodes: Vec<NodeView> =
            serde_json::from_str(&ok(c.cli(&["get", "nodes", "-o", "json"]), "get nodes")).expect("nodes as JSON");
        nodes.into_iter().find(|n| n.node.meta.name == "arm64-board" && n.ready.status == ConditionStatus::True)
    });
    let joined = started.elapsed();

    // The doctor ran first on the board: a cgroup v2 kernel with every controller, overlayfs in
    // the data dir; this busybox board has no nft, which it says with the fix, and exits 2.
    let check = std::fs::read_to_string(share.join("check.txt")).expect("check.txt");
    let line = |what: &str| {
        check.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("{what} in the check:\n{check}")).to_string()
    };
    assert!(
        line(" cgroups ").starts_with("#   ok") && line(" cgroups ").contains("v2: cpuset cpu io memory"),
        "{check}"
    );
    assert!(line(" overlayfs ").starts_with("#   ok"), "{check}");
    assert!(line(" namespaces ").starts_with("#   ok"), "{check}");
    assert!(line(" kernel ").contains("arm64"), "{check}");
    let nft = line("nf_tables with NAT");
    assert!(nft.starts_with("#   MISSING") && nft.contains("apt-get install nftables"), "{check}");
    assert!(check.contains("this board cannot run containers") && check.trim_end().ends_with("exit 2"), "{check}");
    assert_eq!(node.node.info.arch, Arch::Arm64, "the board reports its architecture");
    assert!(node.node.info.kernel.contains("arm64"), "Debian's arm64 kernel: {}", node.node.info.kernel);
    let table = ok(c.cli(&["get", "nodes"]), "get nodes");
    assert!(table.lines().any(|l| l.contains("arm64-board") && l.contains("arm64")), "get nodes shows arm64:\n{table}");

    // An app from the multi-arch image: the board pulls its arm64 variant and runs it.
    let manifest = c.dir.path().join("uname.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[app]]\nname = \"uname\"\nimage = \"{image}\"\nreplicas = 1\n\
             command = [\"/bin/sh\", \"-c\", \"echo machine=$(uname -m); trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
        ),
    )
    .unwrap();
    let applied = Instant::now();
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let replica: Replica = wait_for("the replica Running on the arm64 board", Duration::from_secs(600), || {
        assert!(vm.child.try_wait().unwrap().is_none(), "the VM stopped:\n{}\nagent:\n{}", vm.console(), agent_log());
        c.replicas_of("uname").into_iter().find(|r| r.phase == ReplicaPhase::Running)
    });
    let running = applied.elapsed();
    assert_eq!(replica.node.as_deref(), Some("arm64-board"));
    let logs = wait_for("the container's output", Duration::from_secs(120), || {
        let out = c.cli(&["logs", &replica.meta.name]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("machine=").then_some(text)
    });
    assert!(logs.contains("machine=aarch64"), "the arm64 busybox runs on the arm64 board: {logs}");
    eprintln!(
        "arm64 board (TCG): Ready {:.1}s after boot started; apply -> Running {:.1}s (pull, unpack, start)",
        joined.as_secs_f64(),
        running.as_secs_f64()
    );

    // A clean stop: the agent exits, the machine powers off and says the script's exit code.
    std::fs::write(share.join("stop"), "").unwrap();
    let status = vm.wait(Duration::from_secs(120)).expect("the VM powers off after the stop");
    assert!(status.success(), "the VM's script failed:\n{}", vm.console());
    assert!(vm.console().contains("agent exited with"), "{}", vm.console());
}
