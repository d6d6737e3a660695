//! Virtual boards: the static aarch64 and armv7 agents on emulated arm64 and armhf machines
//! (Debian's kernels under `qemu-system-aarch64` and `qemu-system-arm`, cgroup v2) join a leader
//! in a network namespace on this machine, pull their variant of the multi-arch busybox image and
//! run it; a board cut from power; the packages under systemd; flash writes.
//!
//! Slow (minutes under TCG) and it needs the aarch64 build, so it is ignored by `cargo test` and
//! run by `scripts/test-boards` after `cross/build.sh` (CI runs both).

use bramble_proto::model::{Arch, ConditionStatus, NodeView, Replica, ReplicaPhase};
use bramble_tests::cluster::{with_busybox_opts, ClusterOptions, LEADER_PORT};
use bramble_tests::netlab::{ip, NetLab};
use bramble_tests::registry::Registry;
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
    /// Pulls the plug: QEMU and the script around it are killed at once (the guest gets no
    /// warning), and this returns when the whole process group is gone (its disk unlocked).
    fn drop(&mut self) {
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
        let started = Instant::now();
        while killpg(group, None).is_ok() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A directory shared with a board's VM (its `/mnt`), holding its agent.toml: the registry in the
/// leader's namespace, plain HTTP.
fn board_share(c: &bramble_tests::Cluster, name: &str) -> PathBuf {
    let share = c.dir.path().join(name);
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(
        share.join("agent.toml"),
        format!("version = 1\n[[images.registry]]\nhost = \"{}:5000\"\ninsecure = true\n", c.lab.addr(0)),
    )
    .unwrap();
    share
}

/// Waits (minutes: an emulated board is slow) for node `name` to be Ready, failing at once if the
/// VM stops.
fn wait_board_ready(c: &bramble_tests::Cluster, vm: &mut Vm, name: &str, why: impl Fn() -> String) -> NodeView {
    wait_for(&format!("{name} Ready"), Duration::from_secs(600), || {
        assert!(vm.child.try_wait().unwrap().is_none(), "the VM stopped:\n{}\n{}", vm.console(), why());
        let nodes: Vec<NodeView> =
            serde_json::from_str(&ok(c.cli(&["get", "nodes", "-o", "json"]), "get nodes")).expect("nodes as JSON");
        nodes.into_iter().find(|n| n.node.meta.name == name && n.ready.status == ConditionStatus::True)
    })
}

/// An emulated ARM board: which QEMU machine, which static agent, what it must report.
struct EmulatedBoard {
    /// `scripts/vm --arch` and the board's name prefix.
    vm: &'static str,
    /// Where `cross/build.sh` puts its static agent (and its shim beside it).
    triple: &'static str,
    /// Overrides that path.
    env: &'static str,
    arch: Arch,
    /// In Debian's kernel release of that arch (`6.1.0-57-arm64`, `6.1.0-57-armmp-lpae`).
    kernel: &'static str,
    /// `uname -m` in a container of the image's variant for that arch.
    machine: &'static str,
}

#[test]
#[ignore = "slow: an emulated arm64 board (minutes under TCG); scripts/test-boards runs it after cross/build.sh"]
fn an_emulated_arm64_board_joins_pulls_the_arm64_image_and_runs_it() {
    emulated_board(EmulatedBoard {
        vm: "arm64",
        triple: "aarch64-unknown-linux-musl",
        env: "BRAMBLE_ARM64_AGENT",
        arch: Arch::Arm64,
        kernel: "arm64",
        machine: "aarch64",
    });
}

#[test]
#[ignore = "slow: an emulated armhf board (minutes under TCG); scripts/test-boards runs it after cross/build.sh"]
fn an_emulated_armhf_board_joins_pulls_the_arm_v7_image_and_runs_it() {
    emulated_board(EmulatedBoard {
        vm: "armhf",
        triple: "armv7-unknown-linux-musleabihf",
        env: "BRAMBLE_ARMHF_AGENT",
        arch: Arch::ArmV7,
        kernel: "armmp",
        machine: "armv7l",
    });
}

/// The board joins a leader on this machine, passes the doctor but for nft (a busybox root), says
/// its arch, pulls its variant of the multi-arch image and runs it, then ten replicas on 512 MB.
fn emulated_board(b: EmulatedBoard) {
    let agent = std::env::var_os(b.env)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target").join(b.triple).join("release/bramble-agent"));
    assert!(agent.exists(), "no {} agent at {} (build it with cross/build.sh)", b.triple, agent.display());
    let name = format!("{}-board", b.vm);
    // An emulated board answers slowly: more room before it counts as lost.
    let opts = ClusterOptions { agents: 0, not_ready_after: "60s", heartbeat: "5s", ..Default::default() };
    let (c, _registry, image) = with_busybox_opts(opts, "");
    let leader_ip = c.lab.addr(0);

    // What the board gets: the agent, its config and a script that runs it until told to stop.
    // The script copies the binaries into the board's own (tmpfs) root first: run from the 9p
    // share, which has no page cache, the agent would map only the pages it touches, and its
    // memory would read lower than on a board's SD card.
    let share = board_share(&c, &name);
    // The emulated board is busybox in an initramfs: no nft. Without it the board is
    // NetworkUnavailable and gets no replica (tests/tests/network_repair.rs), so its admin says
    // it runs pods without services and firewall.
    let toml = std::fs::read_to_string(share.join("agent.toml")).unwrap();
    std::fs::write(share.join("agent.toml"), format!("{toml}[network]\nnft = false\n")).unwrap();
    std::fs::copy(&agent, share.join("bramble-agent")).unwrap();
    // Its shim beside it, as the package installs them.
    std::fs::copy(agent.with_file_name("bramble-shim"), share.join("bramble-shim")).unwrap();
    std::fs::write(
        share.join("board.sh"),
        format!(
            "mkdir -p /opt/bramble && cp /mnt/bramble-agent /mnt/bramble-shim /opt/bramble/\n\
             /opt/bramble/bramble-agent check --data-dir /var/lib/bramble > /mnt/check.txt 2>&1; echo \"exit $?\" >> /mnt/check.txt\n\
             RUST_LOG=info /opt/bramble/bramble-agent run --config /mnt/agent.toml --leader {leader_ip}:{LEADER_PORT} \
             --token {} --name {name} --data-dir /var/lib/bramble > /mnt/agent.log 2>&1 &\n\
             agent=$!\n\
             while [ ! -e /mnt/stop ]; do\n\
               {{ echo \"agent $(awk '/^Pss:/{{print $2}}' /proc/$agent/smaps_rollup) $(awk '/^VmRSS:/{{print $2}}' /proc/$agent/status)\"\n\
                 echo \"board $(awk '/^MemAvailable:/{{print $2}}' /proc/meminfo) $(awk '/^MemTotal:/{{print $2}}' /proc/meminfo)\"\n\
                 for d in /proc/[0-9]*; do case \"$(tr '\\0' ' ' < $d/cmdline 2>/dev/null)\" in /opt/bramble/bramble-shim\\ --dir*) \
                   echo \"shim $(awk '/^Pss:/{{print $2}}' $d/smaps_rollup) $(awk '/^VmRSS:/{{print $2}}' $d/status)\";; esac; done\n\
               }} > /mnt/mem.new; mv /mnt/mem.new /mnt/mem.txt\n\
               sleep 1\n\
             done\n\
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
            b.vm,
            "--mem",
            "512",
            "--net",
            "--share",
            share.to_str().unwrap(),
            "--timeout",
            "1200",
            "--",
            "sh",
            "/mnt/board.sh",
        ],
        &c.dir.path().join(format!("{}-console.log", b.vm)),
    );
    let agent_log = || std::fs::read_to_string(share.join("agent.log")).unwrap_or_default();

    // The board joins and says what machine it is.
    let node = wait_board_ready(&c, &mut vm, &name, agent_log);
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
    assert!(line(" kernel ").contains(b.kernel), "{check}");
    let nft = line("nf_tables with NAT");
    assert!(nft.starts_with("#   MISSING") && nft.contains("apt-get install nftables"), "{check}");
    assert!(check.contains("this board cannot run containers") && check.trim_end().ends_with("exit 2"), "{check}");
    assert_eq!(node.node.info.arch, b.arch, "the board reports its architecture");
    assert!(node.node.info.kernel.contains(b.kernel), "Debian's {} kernel: {}", b.vm, node.node.info.kernel);
    let table = ok(c.cli(&["get", "nodes"]), "get nodes");
    let arch = b.arch.to_string();
    assert!(
        table.lines().any(|l| l.contains(&name) && l.split_whitespace().any(|w| w == arch)),
        "get nodes shows {arch}:\n{table}"
    );

    // The agent's memory on the board, idle (PSS and RSS in KiB, read in the guest).
    let board_memory = || -> (u64, u64) {
        let text = std::fs::read_to_string(share.join("mem.txt")).unwrap_or_default();
        text.lines()
            .find_map(|l| {
                let f: Vec<u64> = l.strip_prefix("board ")?.split_whitespace().filter_map(|v| v.parse().ok()).collect();
                Some((*f.first()?, *f.get(1)?))
            })
            .unwrap_or((0, 0))
    };
    let memory = || -> (u64, u64, Vec<u64>) {
        let text = std::fs::read_to_string(share.join("mem.txt")).unwrap_or_default();
        let mut agent = (0, 0);
        let mut shims = Vec::new();
        for l in text.lines() {
            let f: Vec<u64> = l.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
            match (l.split_whitespace().next(), f.as_slice()) {
                (Some("agent"), [pss, rss]) => agent = (*pss, *rss),
                (Some("shim"), [pss, _]) => shims.push(*pss),
                _ => {}
            }
        }
        (agent.0, agent.1, shims)
    };
    std::thread::sleep(Duration::from_secs(5));
    let (idle_pss, idle_rss, _) = memory();
    assert!(idle_pss > 0, "the board reports its agent's memory");

    // An app from the multi-arch image: the board pulls its own variant and runs it.
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
    let replica: Replica = wait_for(&format!("the replica Running on {name}"), Duration::from_secs(600), || {
        assert!(vm.child.try_wait().unwrap().is_none(), "the VM stopped:\n{}\nagent:\n{}", vm.console(), agent_log());
        c.replicas_of("uname").into_iter().find(|r| r.phase == ReplicaPhase::Running)
    });
    let running = applied.elapsed();
    assert_eq!(replica.node.as_deref(), Some(name.as_str()));
    let logs = wait_for("the container's output", Duration::from_secs(120), || {
        let out = c.cli(&["logs", &replica.meta.name]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("machine=").then_some(text)
    });
    assert!(logs.contains(&format!("machine={}\n", b.machine)), "the {} busybox runs on {name}: {logs}", b.vm);

    // Ten containers: what each costs on the board (the agent's growth and its shim).
    ok(c.cli(&["scale", "app", "uname", "--replicas", "10"]), "scale");
    wait_for(&format!("ten replicas Running on {name}"), Duration::from_secs(600), || {
        let r = c.replicas_of("uname");
        (r.len() == 10 && r.iter().all(|r| r.phase == ReplicaPhase::Running)).then_some(())
    });
    let measured = Instant::now();
    let (busy_pss, busy_rss, shims) = loop {
        std::thread::sleep(Duration::from_secs(3));
        let m = memory();
        if m.2.len() == 10 {
            break m;
        }
        assert!(
            measured.elapsed() < Duration::from_secs(60),
            "ten shims measured on the board:\n{}",
            std::fs::read_to_string(share.join("mem.txt")).unwrap_or_default()
        );
    };
    let shims_pss: u64 = shims.iter().sum();
    let per_container = (busy_pss.saturating_sub(idle_pss) + shims_pss) as f64 / 10.0 / 1024.0;
    eprintln!(
        "{} board memory: agent idle PSS {:.1} MiB / RSS {:.1} MiB; with 10 containers agent PSS {:.1} MiB / RSS {:.1} MiB, \
         shims PSS {:.2} MiB each; per container (agent growth + shim) {per_container:.2} MiB",
        b.vm,
        idle_pss as f64 / 1024.0,
        idle_rss as f64 / 1024.0,
        busy_pss as f64 / 1024.0,
        busy_rss as f64 / 1024.0,
        shims_pss as f64 / 10.0 / 1024.0,
    );
    assert!(shims.iter().all(|p| *p > 0), "every shim measured: {shims:?}");
    // A small board: 512 MB of RAM, the agent and ten containers, with room to spare.
    let (available, total) = board_memory();
    eprintln!(
        "{} board with 512 MB: {} MiB available of {} MiB with the agent and 10 containers",
        b.vm,
        available / 1024,
        total / 1024
    );
    assert!(total > 0 && total < 512 * 1024, "the board has 512 MB: {total} KiB");
    assert!(available > 256 * 1024, "room to spare on a 512 MB board: {available} KiB available");
    eprintln!(
        "{} board (TCG): Ready {:.1}s after boot started; apply -> Running {:.1}s (pull, unpack, start)",
        b.vm,
        joined.as_secs_f64(),
        running.as_secs_f64()
    );

    // A clean stop: the agent exits, the machine powers off and says the script's exit code.
    std::fs::write(share.join("stop"), "").unwrap();
    let status = vm.wait(Duration::from_secs(120)).expect("the VM powers off after the stop");
    assert!(status.success(), "the VM's script failed:\n{}", vm.console());
    assert!(vm.console().contains("agent exited with"), "{}", vm.console());
}

/// What the board script last wrote: the state of each shim on the board.
fn board_states(share: &Path) -> Vec<bramble_agent::runtime::protocol::ShimState> {
    std::fs::read_to_string(share.join("states"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn running_on(states: &[bramble_agent::runtime::protocol::ShimState], boot: &str) -> usize {
    states
        .iter()
        .filter(|s| {
            s.boot_id == boot && matches!(s.lifecycle.phase, bramble_agent::runtime::lifecycle::Phase::Running { .. })
        })
        .count()
}

/// Every JSON file the agent keeps, read from the board's disk image after a power cut (e2fsck
/// replays the journal as a boot would, then it is mounted read-only here): each is whole, the old
/// or the new one.
fn every_state_file_parses(disk: &Path, mnt: &Path) -> usize {
    let fsck = Command::new("e2fsck").args(["-p", "-f"]).arg(disk).output().expect("e2fsck (e2fsprogs)");
    // 0: clean; 1: the journal replayed or something fixed safely. More: the filesystem was hurt.
    assert!(
        fsck.status.code().is_some_and(|c| c <= 1),
        "e2fsck after the power cut: {:?}\n{}{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    std::fs::create_dir_all(mnt).unwrap();
    let out = Command::new("mount").args(["-o", "loop,ro"]).arg(disk).arg(mnt).output().unwrap();
    assert!(out.status.success(), "mount the board's disk: {}", String::from_utf8_lossy(&out.stderr));
    let mut files = Vec::new();
    let mut dirs = vec![mnt.join("agent")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            let skip = ["rootfs", "upper", "work", "blobs", "layers", "lost+found"];
            if ft.is_dir() && !skip.iter().any(|s| p.ends_with(s)) {
                dirs.push(p);
            } else if ft.is_file() && p.extension().is_some_and(|x| x == "json") {
                files.push(p);
            }
        }
    }
    let bad: Vec<String> = files
        .iter()
        .filter(|p| serde_json::from_slice::<serde_json::Value>(&std::fs::read(p).unwrap()).is_err())
        .map(|p| p.display().to_string())
        .collect();
    let _ = Command::new("umount").arg(mnt).status();
    assert!(bad.is_empty(), "state files cut in half by the power cut: {bad:?}");
    files.len()
}

#[test]
#[ignore = "slow: a virtual board cut from power and booted again (minutes under TCG); scripts/test-boards runs it"]
fn a_board_cut_from_power_starts_its_replicas_again_without_the_leader() {
    let opts = ClusterOptions { agents: 0, not_ready_after: "60s", heartbeat: "5s", ..Default::default() };
    let (mut c, _registry, image) = with_busybox_opts(opts, "");
    let leader_ip = c.lab.addr(0);
    let share = board_share(&c, "board");
    // The board's data dir is on a disk of its own (ext4), which outlives the machine.
    let disk = c.dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(512 << 20).unwrap();
    let out = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk).output().expect("mkfs.ext4 (e2fsprogs)");
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    // The guest's root is this machine's (read-only): the agent is the one built here.
    std::fs::write(
        share.join("board.sh"),
        format!(
            "mkdir -p /tmp/data && mount /dev/vda /tmp/data || exit 1\n\
             boot=$(cat /proc/sys/kernel/random/boot_id)\n\
             echo $boot >> /mnt/boots\n\
             RUST_LOG=info {agent} run --config /mnt/agent.toml --leader {leader_ip}:{LEADER_PORT} --token {token} \
             --name vm-board --data-dir /tmp/data/agent > /mnt/agent-$boot.log 2>&1 &\n\
             agent=$!\n\
             while [ ! -e /mnt/stop ]; do\n\
               for s in /run/bramble/tmp-data-agent/shims/*/state.json; do [ -f $s ] && tr -d '\\n' < $s && echo; done > /mnt/states.new\n\
               mv /mnt/states.new /mnt/states\n\
               sleep 1\n\
             done\n\
             kill $agent; wait $agent\n\
             sync\n",
            agent = bramble_tests::process::bin_dir().join("bramble-agent").display(),
            token = c.token,
        ),
    )
    .unwrap();
    let boots = || {
        std::fs::read_to_string(share.join("boots")).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>()
    };
    let args = [
        "run",
        "--net",
        "--mem",
        "1024",
        "--share",
        share.to_str().unwrap(),
        "--disk",
        disk.to_str().unwrap(),
        "--timeout",
        "1200",
        "--",
        "sh",
        "/mnt/board.sh",
    ];

    // 1. The board joins and runs two replicas.
    let mut vm = Vm::start(&c.lab.ns(0), &args, &c.dir.path().join("console-1.log"));
    wait_board_ready(&c, &mut vm, "vm-board", String::new);
    let manifest = bramble_tests::cluster::idle_app(c.dir.path(), "keep", &image, 2);
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let first_boot = boots()[0].clone();
    wait_for("two replicas running on the board", Duration::from_secs(600), || {
        assert!(vm.child.try_wait().unwrap().is_none(), "the VM stopped:\n{}", vm.console());
        (running_on(&board_states(&share), &first_boot) == 2).then_some(())
    });

    // 2. A scale to three, and the power goes while the board acts on it.
    ok(c.cli(&["scale", "app", "keep", "--replicas", "3"]), "scale");
    std::thread::sleep(Duration::from_millis(1500));
    drop(vm);
    let files = every_state_file_parses(&disk, &c.dir.path().join("mnt"));
    assert!(files >= 4, "the agent's state files were read ({files})");

    // 3. The leader is gone; the board comes back by itself and starts what it ran.
    c.leader.take().expect("the leader").stop(nix::sys::signal::Signal::SIGKILL);
    let _ = std::fs::remove_file(share.join("states"));
    let mut vm = Vm::start(&c.lab.ns(0), &args, &c.dir.path().join("console-2.log"));
    let second_boot = wait_for("the second boot", Duration::from_secs(300), || {
        assert!(vm.child.try_wait().unwrap().is_none(), "the VM stopped:\n{}", vm.console());
        boots().get(1).cloned()
    });
    assert_ne!(first_boot, second_boot, "a new boot");
    let agent_log = || std::fs::read_to_string(share.join(format!("agent-{second_boot}.log"))).unwrap_or_default();
    let started = Instant::now();
    let running = wait_for("the board's replicas running again after the reboot", Duration::from_secs(600), || {
        assert!(vm.child.try_wait().unwrap().is_none(), "the VM stopped:\n{}\n{}", vm.console(), agent_log());
        let n = running_on(&board_states(&share), &second_boot);
        (n >= 2).then_some(n)
    });
    eprintln!(
        "after the power cut, with no leader: {running} replicas running {:.1}s after the agent's boot",
        started.elapsed().as_secs_f64()
    );
    // Two, or three if the scale had reached the disk before the power went.
    assert!(running == 2 || running == 3, "{running}");
    assert!(!agent_log().contains("corrupt"), "{}", agent_log());

    std::fs::write(share.join("stop"), "").unwrap();
    let status = vm.wait(Duration::from_secs(180)).expect("the VM powers off after the stop");
    assert!(status.success(), "the board's script failed:\n{}", vm.console());
}

/// Whether `p` is the board package of `deb_arch` (`bramble_<version>_<arch>.deb`), not the CLI's
/// (`bramble-cli_…`, which conflicts with it: installing that one removed the agent).
fn is_board_package(p: &Path, deb_arch: &str) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.strip_prefix("bramble_").is_some_and(|rest| rest.ends_with(&format!("_{deb_arch}.deb"))))
}

/// The amd64 package (`CROSS_PROFILE=dev cross/deb.sh amd64`, which scripts/test-boards runs).
fn amd64_package() -> PathBuf {
    if let Some(p) = std::env::var_os("BRAMBLE_DEB") {
        return PathBuf::from(p);
    }
    let dir = repo().join("target/deb/dev");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| is_board_package(p, "amd64"))
        .unwrap_or_else(|| {
            panic!("no amd64 package in {} (build it: CROSS_PROFILE=dev cross/deb.sh amd64)", dir.display())
        })
}

/// The board script's last status: `unit MAINPID NRESTARTS ACTIVESTATE`, then the shims' states.
fn unit_status(share: &Path) -> Option<(u32, u32, String)> {
    let text = std::fs::read_to_string(share.join("status")).ok()?;
    let mut f = text.lines().next()?.strip_prefix("unit ")?.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.next()?.to_string()))
}

/// The PIDs of the containers the shims on the board say are running.
fn container_pids(share: &Path) -> Vec<i32> {
    let text = std::fs::read_to_string(share.join("status")).unwrap_or_default();
    let mut pids: Vec<i32> = text
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<bramble_agent::runtime::protocol::ShimState>(l).ok())
        .filter_map(|s| match s.lifecycle.phase {
            bramble_agent::runtime::lifecycle::Phase::Running { pid, .. } => Some(pid),
            _ => None,
        })
        .collect();
    pids.sort();
    pids
}

/// A Debian board's script for `scripts/vm run --systemd`: what an admin does on a fresh board —
/// install the package (`dpkg -i`), then `setup` (the README's lines for the board's role), which
/// starts `unit` — then report the unit and its shims every second until /mnt/stop, and meanwhile:
/// SIGSTOP the unit's process once /mnt/hang appears; run /mnt/cmd (a shell script the test
/// writes) and leave its output and exit code in /mnt/cmd.out. Returns the shared directory and the
/// board's data disk (ext4, as on an SD card: the guest's root is an overlay, on which overlayfs
/// cannot be mounted; the doctor says so).
fn systemd_board(dir: &Path, name: &str, deb: &Path, unit: &str, setup: &str) -> (PathBuf, PathBuf) {
    let share = dir.join(name);
    std::fs::create_dir_all(&share).unwrap();
    let disk = dir.join(format!("{name}.img"));
    std::fs::File::create(&disk).unwrap().set_len(1 << 30).unwrap();
    let out = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk).output().expect("mkfs.ext4 (e2fsprogs)");
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(
        share.join("board.sh"),
        format!(
            "exec > /mnt/board.log 2>&1\n\
             mkdir -p /var/lib/bramble && mount /dev/vda /var/lib/bramble || exit 9\n\
             dpkg -i {deb} || exit 10\n\
             {{ echo \"enabled $(systemctl is-enabled {unit} 2>&1)\"\n\
               echo \"active $(systemctl is-active {unit} 2>&1)\"\n\
               echo \"user $(getent passwd bramble)\"\n\
               echo \"config $(stat -c '%U:%G %a' /etc/bramble/agent.toml)\"\n\
               echo \"units $(ls /lib/systemd/system/bramble-*.service | tr '\\n' ' ')\"\n\
               echo \"docs $(ls /usr/share/man/man1/bramble.1.gz /usr/share/man/man1/bramble-get.1.gz /usr/share/bash-completion/completions/bramble /usr/share/doc/bramble/OPERATIONS.md 2>&1 | tr '\\n' ' ')\"\n\
             }} > /mnt/installed.txt\n\
             started() {{ systemctl is-active -q {unit} || {{ journalctl -u {unit} --no-pager > /mnt/journal.txt; exit 11; }}; }}\n\
             {setup}\n\
             started\n\
             hung=\n\
             while [ ! -e /mnt/stop ]; do\n\
               main=$(systemctl show -p MainPID --value {unit})\n\
               {{ echo \"unit $main $(systemctl show -p NRestarts --value {unit}) $(systemctl is-active {unit})\"\n\
                 for s in /run/bramble/var-lib-bramble-agent/shims/*/state.json; do [ -f $s ] && tr -d '\\n' < $s && echo; done\n\
               }} > /mnt/status.new; mv /mnt/status.new /mnt/status\n\
               if [ -e /mnt/hang ] && [ -z \"$hung\" ]; then kill -STOP $main; hung=$main; echo \"stopped {unit} ($main)\"; fi\n\
               if [ -f /mnt/cmd ]; then\n\
                 sh /mnt/cmd > /mnt/cmd.new 2>&1; echo \"exit $?\" >> /mnt/cmd.new; rm -f /mnt/cmd; mv /mnt/cmd.new /mnt/cmd.out\n\
               fi\n\
               sleep 1\n\
             done\n\
             journalctl -u {unit} --no-pager -o short-monotonic > /mnt/journal.txt\n\
             systemctl stop {unit}\n\
             echo \"after stop: $(systemctl is-active {unit})\"\n",
            deb = deb.display(),
        ),
    )
    .unwrap();
    (share, disk)
}

/// Boots a [`systemd_board`] (`scripts/vm run --systemd` with `opts`) in namespace `ns`.
fn start_systemd_board(ns: &str, opts: &[&str], share: &Path, disk: &Path, console: &Path) -> Vm {
    let mut args = vec!["run", "--systemd"];
    args.extend_from_slice(opts);
    let (share, disk) = (share.to_str().unwrap(), disk.to_str().unwrap());
    args.extend_from_slice(&["--share", share, "--disk", disk, "--timeout", "2400", "--", "sh", "/mnt/board.sh"]);
    Vm::start(ns, &args, console)
}

/// An agent board's setup in [`systemd_board`]: the README's lines (check, then the config with
/// `leaders` — none: the agent finds them on the LAN — and the token, then start).
fn agent_setup(name: &str, leaders: &[String], token: &str, registry: &str) -> String {
    let leaders = leaders.iter().map(|l| format!("\"{l}\"")).collect::<Vec<_>>().join(", ");
    let leaders = if leaders.is_empty() { String::new() } else { format!("'leaders = [{leaders}]' ") };
    format!(
        "bramble-agent check > /mnt/check.txt 2>&1; echo \"exit $?\" >> /mnt/check.txt\n\
         printf '%s\\n' 'version = 1' 'name = \"{name}\"' {leaders}'token = \"{token}\"' \
           '[[images.registry]]' 'host = \"{registry}\"' 'insecure = true' > /etc/bramble/agent.toml\n\
         systemctl enable --now bramble-agent"
    )
}

/// Runs `script` on a [`systemd_board`] (as root, with sh) and returns its output and exit code.
fn board_run(vm: &mut Vm, share: &Path, script: &str, timeout: Duration) -> (String, i32) {
    let _ = std::fs::remove_file(share.join("cmd.out"));
    std::fs::write(share.join("cmd"), script).unwrap();
    let text = wait_for(&format!("the board to run: {script}"), timeout, || {
        assert!(vm.child.try_wait().unwrap().is_none(), "the VM stopped:\n{}\n{}", vm.console(), board_report(share));
        std::fs::read_to_string(share.join("cmd.out")).ok()
    });
    let (out, code) = text.trim_end().rsplit_once("exit ").expect("the exit line");
    (out.to_string(), code.trim().parse().expect("an exit code"))
}

/// What a package board's script wrote: its log, the last status and (when the unit failed to
/// start or the board stopped) the unit's journal.
fn board_report(share: &Path) -> String {
    let read = |f: &str| std::fs::read_to_string(share.join(f)).unwrap_or_default();
    format!("board.log:\n{}\nstatus:\n{}\njournal.txt:\n{}", read("board.log"), read("status"), read("journal.txt"))
}

/// What [`systemd_board`]'s script saw after `dpkg -i`: nothing enabled or started, the user made,
/// the config readable by the group only, the units, man pages, completions and docs there.
fn assert_installed(share: &Path) {
    let installed = std::fs::read_to_string(share.join("installed.txt")).expect("installed.txt");
    assert!(installed.contains("enabled disabled"), "the package enables nothing:\n{installed}");
    assert!(installed.contains("active inactive"), "the package starts nothing:\n{installed}");
    assert!(installed.contains("user bramble:"), "the package adds the bramble user:\n{installed}");
    assert!(installed.contains("config root:bramble 640"), "{installed}");
    assert!(installed.contains("bramble-agent.service") && installed.contains("bramble-single.service"), "{installed}");
    for f in ["man1/bramble.1.gz ", "man1/bramble-get.1.gz ", "completions/bramble ", "OPERATIONS.md "] {
        assert!(installed.contains(f), "the package installs {f}(man pages, completions, docs):\n{installed}");
    }
}

/// [`assert_installed`], and `bramble-agent check` passed on the board.
fn assert_installed_and_checked(share: &Path) {
    assert_installed(share);
    let check = std::fs::read_to_string(share.join("check.txt")).expect("check.txt");
    assert!(
        check.trim_end().ends_with("exit 0"),
        "a Debian board with the package's dependencies passes the check:\n{check}"
    );
}

#[test]
#[ignore = "slow: three Debian boards under systemd in VMs (minutes under TCG); scripts/test-boards runs it"]
fn three_package_boards_install_as_the_readme_says_serve_through_a_vip_upgrade_without_restarts_and_the_watchdogs_restart_hung_daemons(
) {
    let deb = amd64_package();
    let lab = NetLab::new(3);
    let dir = KeptOnFailure(Some(tempfile::tempdir().unwrap()));
    let dir = dir.0.as_ref().unwrap();
    let registry = Registry::start_in_netns(&lab.ns(0), &lab.addr(0));
    let layout = dir.path().join("layout");
    bramble_tests::testimages::busybox_layout(&layout, "1");
    let image = format!("{}/bramble/busybox:1", registry.addr);
    bramble_tests::testimages::push_from(Some(&lab.ns(0)), &layout, "1", &image);

    // Board i (1..=3) is a VM bridged onto the lab's LAN at the lab's address of host i: its
    // namespace keeps no address, only a bridge joining its cable (eth0) and the VM's tap.
    for i in 1..=3 {
        let ns = lab.ns(i);
        ip(&["-n", &ns, "addr", "flush", "dev", "eth0"]);
        ip(&["-n", &ns, "link", "add", "vmbr", "type", "bridge"]);
        ip(&["-n", &ns, "link", "set", "eth0", "master", "vmbr"]);
        ip(&["-n", &ns, "tuntap", "add", "dev", "vmtap", "mode", "tap"]);
        ip(&["-n", &ns, "link", "set", "vmtap", "master", "vmbr", "up"]);
        ip(&["-n", &ns, "link", "set", "vmbr", "up"]);
    }

    // The README's lines ("A cluster of several boards"; the Debian package): the leader on
    // board 1, agents on boards 2 and 3 joining with its token and finding it on the LAN (mDNS).
    let leader_setup = format!(
        "bramble-leader init --data-dir /var/lib/bramble/leader --listen 0.0.0.0:7443 || exit 12\n\
         systemctl enable --now bramble-leader; started\n\
         bramble --config /var/lib/bramble/leader/admin.toml token create > /mnt/token.new || exit 13\n\
         mv /mnt/token.new /mnt/token\n\
         sed 's/127.0.0.1:7443/{}:7443/' /var/lib/bramble/leader/admin.toml > /mnt/admin.toml",
        lab.addr(1)
    );
    let (lshare, ldisk) = systemd_board(dir.path(), "pi-1", &deb, "bramble-leader", &leader_setup);
    let boot = |i: usize, share: &Path, disk: &Path| {
        let lan = format!("vmtap:{}/24", lab.addr(i));
        let opts = ["--cpus", "1", "--mem", "1024", "--lan", &lan];
        start_systemd_board(&lab.ns(i), &opts, share, disk, &dir.path().join(format!("pi-{i}-console.log")))
    };
    let started = Instant::now();
    let mut leader_vm = boot(1, &lshare, &ldisk);
    let token = wait_for("the leader board's token", Duration::from_secs(600), || {
        assert!(
            leader_vm.child.try_wait().unwrap().is_none(),
            "the leader's VM stopped:\n{}\n{}",
            leader_vm.console(),
            board_report(&lshare)
        );
        std::fs::read_to_string(lshare.join("token")).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
    });
    let leader_up = started.elapsed();
    assert_installed(&lshare);
    let admin = lshare.join("admin.toml");
    let cli = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &lab.ns(0)])
            .arg(bramble_tests::process::bin_dir().join("bramble"))
            .arg("--config")
            .arg(&admin)
            .args(args)
            .output()
            .expect("run bramble")
    };
    // How many boards the leader says are Ready.
    let ready_boards = || {
        let nodes: Vec<NodeView> =
            serde_json::from_slice(&cli(&["get", "nodes", "-o", "json"]).stdout).unwrap_or_default();
        nodes.iter().filter(|n| n.ready.status == ConditionStatus::True).count()
    };
    let mut boards = Vec::new();
    for i in [2, 3] {
        let name = format!("pi-{i}");
        let setup = agent_setup(&name, &[], &token, &format!("{}:5000", lab.addr(0)));
        let (share, disk) = systemd_board(dir.path(), &name, &deb, "bramble-agent", &setup);
        let vm = boot(i, &share, &disk);
        boards.push((name, share, vm));
    }
    let report = |boards: &[(String, PathBuf, Vm)]| {
        let mut text = format!("pi-1 (leader):\n{}\n", board_report(&lshare));
        for (name, share, vm) in boards {
            text += &format!("{name}:\n{}\nconsole:\n{}\n", board_report(share), vm.console());
        }
        text
    };

    // 1. Both agents join (no address configured: mDNS), the packaged leader under systemd.
    wait_for("both agent boards Ready", Duration::from_secs(900), || {
        let stopped = boards.iter_mut().any(|(_, _, vm)| vm.child.try_wait().unwrap().is_some())
            || leader_vm.child.try_wait().unwrap().is_some();
        assert!(!stopped, "a board's VM stopped:\n{}", report(&boards));
        (ready_boards() == 2).then_some(())
    });
    let joined = started.elapsed();
    for (_, share, _) in &boards {
        assert_installed_and_checked(share);
    }

    // 2. An app of two web servers behind a service, one per board; its page through the VIP
    //    from a board. (`replace_after`: a hung agent is silent for a minute before its watchdog
    //    restarts it, longer than `not_ready_after`; by default the leader would rightly replace
    //    its replica — once, in a CI run, on the same board when it came back — and this test is
    //    about the watchdogs leaving containers alone.)
    let manifest = dir.path().join("web.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[app]]\nname = \"web\"\nimage = \"{image}\"\nreplicas = 2\n\
             command = [\"/bin/sh\", \"-c\", \"hostname > /tmp/index.html && exec httpd -f -p 8080 -h /tmp\"]\n\
             replace_after = \"1h\"\n[app.placement]\nmax_per_node = 1\n\
             [[app.ports]]\nname = \"http\"\ncontainer = 8080\n\
             [app.probes.readiness]\nhttp = {{ port = \"http\", path = \"/\" }}\nperiod = \"2s\"\n\
             [[service]]\nname = \"web\"\napp = \"web\"\nports = [{{ port = 80, target = \"http\" }}]\n"
        ),
    )
    .unwrap();
    ok(cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let replicas = || -> Vec<Replica> {
        serde_json::from_slice(&cli(&["get", "replicas", "--app", "web", "-o", "json"]).stdout).unwrap_or_default()
    };
    wait_for("two web replicas Running, one on each agent board", Duration::from_secs(900), || {
        let r = replicas();
        let on: std::collections::BTreeSet<_> = r.iter().filter_map(|r| r.node.clone()).collect();
        (r.len() == 2 && r.iter().all(|r| r.phase == ReplicaPhase::Running) && on.len() == 2).then_some(())
    });
    let services: Vec<bramble_proto::model::Service> =
        serde_json::from_str(&ok(cli(&["get", "services", "-o", "json"]), "get services")).expect("services");
    let vip = services.iter().find(|s| s.meta.name == "web").and_then(|s| s.vip).expect("the service's VIP");
    let through_vip = |boards: &mut Vec<(String, PathBuf, Vm)>| {
        let (_, share, vm) = &mut boards[0];
        let script = format!("for i in 1 2 3 4 5 6; do curl -fsS --max-time 5 http://{vip}/ || exit 1; done");
        wait_for("the page through the VIP from a board", Duration::from_secs(300), || {
            let (out, code) = board_run(vm, share, &script, Duration::from_secs(120));
            (code == 0).then_some(out)
        })
    };
    let pages = through_vip(&mut boards);
    let names: std::collections::BTreeSet<_> = replicas().iter().map(|r| r.meta.name.clone()).collect();
    let served: std::collections::BTreeSet<_> = pages.lines().map(|l| l.trim().to_string()).collect();
    assert!(
        !served.is_empty() && served.is_subset(&names),
        "the VIP serves the replicas' pages: {served:?} of {names:?}"
    );
    let pids_before: Vec<Vec<i32>> = boards.iter().map(|(_, share, _)| container_pids(share)).collect();
    assert!(pids_before.iter().all(|p| p.len() == 1), "one container per board: {pids_before:?}");

    // 3. An upgrade on every board, as the README says: `dpkg -i` the new package, restart the
    //    daemon. Nothing restarts: the same containers, no replica restarted, the page served.
    let upgrade = dir.path().join("upgrade");
    let new_deb = repack_with_version(&deb, "0.1.0+upgrade1", &upgrade);
    for share in std::iter::once(&lshare).chain(boards.iter().map(|(_, share, _)| share)) {
        std::fs::copy(&new_deb, share.join("upgrade.deb")).unwrap();
    }
    let (out, code) = board_run(
        &mut leader_vm,
        &lshare,
        "dpkg -i /mnt/upgrade.deb && systemctl restart bramble-leader && dpkg-query -W bramble",
        Duration::from_secs(300),
    );
    assert!(code == 0 && out.contains("0.1.0+upgrade1"), "the leader board upgraded:\n{out}");
    for (_, share, vm) in boards.iter_mut() {
        let (out, code) = board_run(
            vm,
            share,
            "dpkg -i /mnt/upgrade.deb && systemctl restart bramble-agent && dpkg-query -W bramble",
            Duration::from_secs(300),
        );
        assert!(code == 0 && out.contains("0.1.0+upgrade1"), "an agent board upgraded:\n{out}");
    }
    wait_for("both boards Ready again after the upgrade", Duration::from_secs(600), || {
        (ready_boards() == 2).then_some(())
    });
    through_vip(&mut boards);
    let pids_after: Vec<Vec<i32>> = boards.iter().map(|(_, share, _)| container_pids(share)).collect();
    assert_eq!(pids_after, pids_before, "the upgrade restarted no container:\n{}", report(&boards));
    let after = replicas();
    assert!(
        after.len() == 2 && after.iter().all(|r| r.restarts == 0 && names.contains(&r.meta.name)),
        "the same replicas, none restarted: {after:?}"
    );

    // 4. The leader and an agent hang (SIGSTOP): systemd's watchdogs (WatchdogSec=60s) kill them
    //    and start them again; the containers keep running, adopted by the new agent.
    let status = |share: &Path| unit_status(share).expect("the unit's status");
    let (leader_before, _, _) = status(&lshare);
    let (agent_before, _, _) = status(&boards[1].1);
    std::fs::write(lshare.join("hang"), "").unwrap();
    std::fs::write(boards[1].1.join("hang"), "").unwrap();
    let hung = Instant::now();
    wait_for("systemd to restart the hung leader and agent", Duration::from_secs(600), || {
        assert!(leader_vm.child.try_wait().unwrap().is_none(), "the leader's VM stopped");
        let (l, ln, ls) = status(&lshare);
        let (a, an, as_) = status(&boards[1].1);
        (l != leader_before && ln >= 1 && ls == "active" && a != agent_before && an >= 1 && as_ == "active")
            .then_some(())
    });
    let restarted = hung.elapsed();
    wait_for("both boards Ready after the watchdogs", Duration::from_secs(600), || (ready_boards() == 2).then_some(()));
    through_vip(&mut boards);
    let pids_now: Vec<Vec<i32>> = boards.iter().map(|(_, share, _)| container_pids(share)).collect();
    assert_eq!(pids_now, pids_before, "the watchdogs restarted no container:\n{}", report(&boards));
    assert!(replicas().iter().all(|r| r.restarts == 0), "{:?}", replicas());
    eprintln!(
        "three package boards under systemd (TCG): leader's token {:.1}s after boot started, both agents Ready {:.1}s; \
         hung leader and agent restarted by their watchdogs {:.1}s after SIGSTOP",
        leader_up.as_secs_f64(),
        joined.as_secs_f64(),
        restarted.as_secs_f64()
    );

    // 5. Stopped cleanly; the journals say the watchdogs fired.
    for share in std::iter::once(&lshare).chain(boards.iter().map(|(_, share, _)| share)) {
        std::fs::write(share.join("stop"), "").unwrap();
    }
    for (i, (share, vm)) in
        std::iter::once((&lshare, &mut leader_vm)).chain(boards.iter_mut().map(|(_, s, vm)| (&*s, vm))).enumerate()
    {
        let status = vm.wait(Duration::from_secs(300)).expect("the VM powers off after the stop");
        assert!(status.success(), "board {}'s script failed:\n{}\n{}", i + 1, vm.console(), board_report(share));
        assert!(board_report(share).contains("after stop: inactive"), "{}", board_report(share));
    }
    for share in [&lshare, &boards[1].1] {
        let journal = std::fs::read_to_string(share.join("journal.txt")).expect("journal.txt");
        assert!(journal.contains("Watchdog timeout"), "systemd's watchdog fired:\n{journal}");
    }
    drop(registry);
}

/// A test's directory, moved to `/tmp/bramble-e2e-failed-<pid>` (disk images aside) when the test
/// fails, for a human to read the boards' logs.
struct KeptOnFailure(Option<tempfile::TempDir>);

impl Drop for KeptOnFailure {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else { return };
        if std::thread::panicking() {
            let keep = std::env::temp_dir().join(format!("bramble-e2e-failed-{}", std::process::id()));
            let path = dir.keep();
            for e in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                if e.path().extension().is_some_and(|x| x == "img") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let _ = std::fs::remove_dir_all(&keep);
            match std::fs::rename(&path, &keep) {
                Ok(()) => eprintln!("the boards' files of the failed run are in {}", keep.display()),
                Err(_) => eprintln!("the boards' files of the failed run are in {}", path.display()),
            }
        }
    }
}

/// `deb` again with version `version` in `dir`: an upgrade for `dpkg -i` (same binaries).
fn repack_with_version(deb: &Path, version: &str, dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("dpkg-deb").arg("-R").arg(deb).arg(&root).output().expect("dpkg-deb -R");
    assert!(out.status.success(), "dpkg-deb -R: {}", String::from_utf8_lossy(&out.stderr));
    let control = root.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let text: String = text
        .lines()
        .map(|l| if l.starts_with("Version:") { format!("Version: {version}\n") } else { format!("{l}\n") })
        .collect();
    std::fs::write(&control, text).unwrap();
    let new = dir.join(format!("bramble_{version}_amd64.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-z1", "--build"])
        .arg(&root)
        .arg(&new)
        .output()
        .expect("dpkg-deb --build");
    assert!(out.status.success(), "dpkg-deb --build: {}", String::from_utf8_lossy(&out.stderr));
    new
}

/// The package of a Debian arch (`arm64`, `armhf`) that `cross/deb.sh` made, or the one named by
/// `env`.
fn arm_package(deb_arch: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let dir = repo().join("target/deb");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| is_board_package(p, deb_arch))
        .unwrap_or_else(|| {
            panic!(
                "no {deb_arch} package in {} (build it: cross/build.sh, then cross/deb.sh {deb_arch})",
                dir.display()
            )
        })
}

#[test]
#[ignore = "slow: an arm64 Debian board under systemd (debootstrap once, then TCG); run by scripts/test-arm-packages (CI runs it last)"]
fn the_arm64_package_installs_on_an_arm64_debian_board_and_its_agent_joins_under_systemd() {
    package_on_arm_board("arm64", Arch::Arm64, "BRAMBLE_ARM64_DEB");
}

#[test]
#[ignore = "slow: an armhf Debian board under systemd (debootstrap once, then TCG); run by scripts/test-arm-packages (CI runs it last)"]
fn the_armhf_package_installs_on_an_armhf_debian_board_and_its_agent_joins_under_systemd() {
    package_on_arm_board("armhf", Arch::ArmV7, "BRAMBLE_ARMHF_DEB");
}

/// A Debian board of `deb_arch` (a debootstrapped root, `scripts/vm fetch-root`) booting systemd:
/// the package installs, starts nothing, passes the doctor; started with systemctl, the agent
/// joins, says `arch` and runs two containers of its variant of the image.
fn package_on_arm_board(deb_arch: &str, arch: Arch, env: &str) {
    let deb = arm_package(deb_arch, env);
    let opts = ClusterOptions { agents: 0, not_ready_after: "120s", heartbeat: "5s", ..Default::default() };
    let (c, _registry, image) = with_busybox_opts(opts, "");
    let name = format!("pi-{deb_arch}");
    let leader = format!("{}:{LEADER_PORT}", c.lab.addr(0));
    let setup = agent_setup(&name, &[leader], &c.token, &format!("{}:5000", c.lab.addr(0)));
    let (share, disk) = systemd_board(c.dir.path(), &name, &deb, "bramble-agent", &setup);
    let started = Instant::now();
    let console = c.dir.path().join(format!("{name}-console.log"));
    let mut vm = start_systemd_board(&c.lab.ns(0), &["--arch", deb_arch, "--net"], &share, &disk, &console);
    let board_log = || board_report(&share);
    let node = wait_board_ready(&c, &mut vm, &name, board_log);
    let joined = started.elapsed();
    assert_installed_and_checked(&share);
    assert_eq!(node.node.info.arch, arch, "the board reports its architecture");

    let manifest = bramble_tests::cluster::idle_app(c.dir.path(), "pi", &image, 2);
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    wait_for(&format!("two replicas Running on the {deb_arch} board"), Duration::from_secs(900), || {
        assert!(vm.child.try_wait().unwrap().is_none(), "the VM stopped:\n{}\n{}", vm.console(), board_log());
        let r = c.replicas_of("pi");
        (r.len() == 2 && r.iter().all(|r| r.phase == ReplicaPhase::Running) && container_pids(&share).len() == 2)
            .then_some(())
    });
    let (agent, restarts, state) = unit_status(&share).expect("the unit's status");
    assert!(agent != 0 && restarts == 0 && state == "active", "{}", board_log());
    eprintln!("{deb_arch} Debian board under systemd (TCG): Ready {:.1}s after boot started", joined.as_secs_f64());

    std::fs::write(share.join("stop"), "").unwrap();
    let status = vm.wait(Duration::from_secs(300)).expect("the VM powers off after the stop");
    assert!(status.success(), "the board's script failed:\n{}\n{}", vm.console(), board_log());
    assert!(board_log().contains("after stop: inactive"), "{}", board_log());
}

/// Sectors (512 bytes) written to a guest disk, from `/sys/block/<dev>/stat`, as the board script
/// logs them: `flash SECONDS LEADER_BYTES AGENT_BYTES LEADER_LOG_BYTES AGENT_LOG_BYTES`.
fn flash_samples(share: &Path) -> Vec<[u64; 5]> {
    std::fs::read_to_string(share.join("flash.txt"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<u64> = l.strip_prefix("flash ")?.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            f.try_into().ok()
        })
        .collect()
}

#[test]
#[ignore = "slow: a steady cluster on a virtual board for minutes (BRAMBLE_FLASH_MINUTES, default 2); scripts/test-boards runs it"]
fn a_steady_cluster_writes_little_to_flash() {
    let minutes: u64 =
        match std::env::var("BRAMBLE_FLASH_MINUTES") {
            Ok(m) => m.trim().parse().ok().filter(|m| *m > 0).unwrap_or_else(|| {
                panic!("BRAMBLE_FLASH_MINUTES={m:?}: expected a whole number of minutes, at least 1")
            }),
            Err(_) => 2,
        };
    let opts = ClusterOptions { agents: 0, ..Default::default() };
    // Only the registry (and its image) is used here: the leader and the agent both run on the
    // board, each with its data dir and its log on a disk of its own (ext4, default options), so
    // the disks' write counters say what each writes.
    let (c, _registry, image) = with_busybox_opts(opts, "");
    let share = board_share(&c, "flash-board");
    let mut disks = Vec::new();
    for name in ["leader.img", "agent.img"] {
        let disk = c.dir.path().join(name);
        std::fs::File::create(&disk).unwrap().set_len(512 << 20).unwrap();
        // Inode tables and journal written now, not by the kernel in the background while measured.
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&disk)
            .output()
            .expect("mkfs.ext4 (e2fsprogs)");
        assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
        disks.push(disk);
    }
    // A steady cluster: three idle replicas, two web servers behind a service with a readiness
    // probe every 2 s (the replicas print nothing: container logs are not what is measured).
    std::fs::write(
        share.join("apps.toml"),
        format!(
            "[[app]]\nname = \"idle\"\nimage = \"{image}\"\nreplicas = 3\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n\
             [[app]]\nname = \"web\"\nimage = \"{image}\"\nreplicas = 2\n\
             command = [\"/bin/sh\", \"-c\", \"echo ok > /tmp/index.html && exec httpd -f -p 8080 -h /tmp\"]\n\
             stop_grace = \"2s\"\n\
             [[app.ports]]\nname = \"http\"\ncontainer = 8080\n\
             [app.probes.readiness]\nhttp = {{ port = \"http\", path = \"/\" }}\nperiod = \"2s\"\n\
             [[service]]\nname = \"web\"\napp = \"web\"\nports = [{{ port = 80, target = \"http\" }}]\n"
        ),
    )
    .unwrap();
    let bins = bramble_tests::process::bin_dir();
    std::fs::write(
        share.join("board.sh"),
        format!(
            "set -e\n\
             B={bins}\n\
             mkdir -p /tmp/l /tmp/a && mount /dev/vda /tmp/l && mount /dev/vdb /tmp/a\n\
             $B/bramble-leader init --data-dir /tmp/l/leader --listen 127.0.0.1:7443 > /dev/null\n\
             $B/bramble-leader run --config /tmp/l/leader/leader.toml >> /tmp/l/leader.log 2>&1 &\n\
             leader=$!\n\
             admin=/tmp/l/leader/admin.toml\n\
             for i in $(seq 120); do $B/bramble --config $admin get nodes > /dev/null 2>&1 && break; sleep 1; done\n\
             token=$($B/bramble --config $admin token create)\n\
             $B/bramble-agent run --config /mnt/agent.toml --leader 127.0.0.1:7443 --token $token --name flash-board \
               --data-dir /tmp/a/agent >> /tmp/a/agent.log 2>&1 &\n\
             agent=$!\n\
             $B/bramble --config $admin apply -f /mnt/apps.toml\n\
             for i in $(seq 600); do\n\
               [ \"$($B/bramble --config $admin get replicas | grep -cE ' 1/1 +Running ')\" -ge 5 ] && break; sleep 1\n\
             done\n\
             $B/bramble --config $admin get replicas > /mnt/replicas-before.txt\n\
             sleep 30\n\
             sync\n\
             w() {{ awk '{{print $7 * 512}}' /sys/block/$1/stat; }}\n\
             s() {{ stat -c %s $1; }}\n\
             l0=$(w vda) a0=$(w vdb) ll0=$(s /tmp/l/leader.log) al0=$(s /tmp/a/agent.log) t0=$(date +%s)\n\
             for m in $(seq {minutes}); do\n\
               sleep 60\n\
                              echo \"flash $(( $(date +%s) - t0 )) $(( $(w vda) - l0 )) $(( $(w vdb) - a0 )) $(( $(s /tmp/l/leader.log) - ll0 )) $(( $(s /tmp/a/agent.log) - al0 ))\" >> /mnt/flash.txt\n\
             done\n\
                          $B/bramble --config $admin get replicas > /mnt/replicas-after.txt\n\
             dd if=/dev/zero of=/tmp/l/ruler bs=1M count=1 conv=fsync 2> /dev/null\n\
             dd if=/dev/zero of=/tmp/a/ruler bs=1M count=1 conv=fsync 2> /dev/null\n\
             echo \"ruler $(( $(w vda) - l0 )) $(( $(w vdb) - a0 ))\" >> /mnt/flash.txt\n\
             kill $agent $leader; wait $agent $leader || true\n\
                          cp /tmp/l/leader.log /tmp/a/agent.log /mnt/\n\
             sync\n",
            bins = bins.display(),
        ),
    )
    .unwrap();
    let mut args: Vec<String> =
        ["run", "--net", "--mem", "1024", "--share", share.to_str().unwrap()].iter().map(|s| s.to_string()).collect();
    for d in &disks {
        args.extend(["--disk".to_string(), d.display().to_string()]);
    }
    let timeout = (minutes * 60 + 900).to_string();
    args.extend(["--timeout", &timeout, "--", "bash", "/mnt/board.sh"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vm = Vm::start(&c.lab.ns(0), &args, &c.dir.path().join("flash-console.log"));
    let status = vm.wait(Duration::from_secs(minutes * 60 + 1000)).expect("the board finishes its minutes");
    let logs = || {
        format!(
            "console:\n{}\nleader.log:\n{}\nagent.log:\n{}",
            vm.console(),
            std::fs::read_to_string(share.join("leader.log")).unwrap_or_default(),
            std::fs::read_to_string(share.join("agent.log")).unwrap_or_default()
        )
    };
    assert!(status.success(), "the board's script failed:\n{}", logs());
    let before = std::fs::read_to_string(share.join("replicas-before.txt")).unwrap_or_default();
    let after = std::fs::read_to_string(share.join("replicas-after.txt")).unwrap_or_default();
    let ready = |table: &str| table.lines().filter(|l| l.contains(" 1/1 ") && l.contains(" Running ")).count();
    assert_eq!(ready(&before), 5, "five replicas Running and ready before:\n{before}\n{}", logs());
    assert_eq!(ready(&after), 5, "and after:\n{after}");
    let samples = flash_samples(&share);
    assert_eq!(samples.len() as u64, minutes, "a sample a minute: {samples:?}");
    let [secs, leader, agent, leader_log, agent_log] = *samples.last().unwrap();
    let per_day = |bytes: u64| bytes as f64 * 86_400.0 / secs as f64 / 1e6;
    eprintln!(
        "flash over {:.1} min of a steady cluster (1 board, 5 replicas, a service, readiness probes every 2 s): \
         leader {:.2} MB/day ({:.2} MB/day of it its log), agent {:.2} MB/day ({:.2} MB/day of it its log); \
         written: leader {} KiB, agent {} KiB",
        secs as f64 / 60.0,
        per_day(leader),
        per_day(leader_log),
        per_day(agent),
        per_day(agent_log),
        leader / 1024,
        agent / 1024
    );
    for s in &samples {
        eprintln!("  after {:>5}s: leader {:>8} KiB, agent {:>8} KiB", s[0], s[1] / 1024, s[2] / 1024);
    }
    // The counters count: a 1 MiB file written (and synced) at the end on each disk moves them.
    let flash = std::fs::read_to_string(share.join("flash.txt")).unwrap_or_default();
    let ruler: Vec<u64> = flash
        .lines()
        .find_map(|l| l.strip_prefix("ruler "))
        .map(|l| l.split_whitespace().filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default();
    assert!(
        ruler.len() == 2 && ruler[0] >= leader + (1 << 20) && ruler[1] >= agent + (1 << 20),
        "1 MiB more on each disk after the ruler file: {flash}"
    );
    let tail = |name: &str| {
        let text = std::fs::read_to_string(share.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    // Within the goals: 5 MB/day for an agent, 20 MB/day for a leader.
    if per_day(agent) > 5.0 || per_day(leader) > 20.0 {
        eprintln!("the leader's log ends:\n{}\nthe agent's log ends:\n{}", tail("leader.log"), tail("agent.log"));
    }
    assert!(per_day(agent) <= 5.0, "the agent writes {:.2} MB/day: {samples:?}", per_day(agent));
    assert!(per_day(leader) <= 20.0, "the leader writes {:.2} MB/day: {samples:?}", per_day(leader));
}
