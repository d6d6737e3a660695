//! Virtual boards: the static aarch64 and armv7 agents on emulated arm64 and armhf machines
//! (Debian's kernels under `qemu-system-aarch64` and `qemu-system-arm`, cgroup v2) join a leader
//! in a network namespace on this machine, pull their variant of the multi-arch busybox image and
//! run it; a board cut from power; the packages under systemd; flash writes.
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

/// The board script's last status: `agent MAINPID NRESTARTS ACTIVESTATE`, then the shims' states.
fn unit_status(share: &Path) -> Option<(u32, u32, String)> {
    let text = std::fs::read_to_string(share.join("status")).ok()?;
    let mut f = text.lines().next()?.strip_prefix("agent ")?.split_whitespace();
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
/// install the package, configure the agent to join `c`, check, start — then report the unit and
/// its shims every second (and SIGSTOP the agent once /mnt/hang appears) until /mnt/stop.
/// Returns the shared directory and the board's data disk (ext4, as on an SD card: the guest's
/// root is an overlay, on which overlayfs cannot be mounted; the doctor says so).
fn package_board(c: &bramble_tests::Cluster, name: &str, deb: &Path) -> (PathBuf, PathBuf) {
    let leader_ip = c.lab.addr(0);
    let share = c.dir.path().join(name);
    std::fs::create_dir_all(&share).unwrap();
    // The board's data on a disk of its own (ext4, as on an SD card): the guest's root is an
    // overlay, on which overlayfs cannot be mounted (the doctor says so).
    let disk = c.dir.path().join(format!("{name}.img"));
    std::fs::File::create(&disk).unwrap().set_len(1 << 30).unwrap();
    let out = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk).output().expect("mkfs.ext4 (e2fsprogs)");
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    // What an admin does on a fresh Debian board: install, configure, check, start.
    std::fs::write(
        share.join("board.sh"),
        format!(
                         "exec > /mnt/board.log 2>&1\n\
             mkdir -p /var/lib/bramble && mount /dev/vda /var/lib/bramble || exit 9\n\
             dpkg -i {deb} || exit 10\n\
             {{ echo \"enabled $(systemctl is-enabled bramble-agent 2>&1)\"\n\
               echo \"active $(systemctl is-active bramble-agent 2>&1)\"\n\
               echo \"user $(getent passwd bramble)\"\n\
               echo \"config $(stat -c '%U:%G %a' /etc/bramble/agent.toml)\"\n\
               echo \"units $(ls /lib/systemd/system/bramble-*.service | tr '\\n' ' ')\"\n\
               echo \"docs $(ls /usr/share/man/man1/bramble.1.gz /usr/share/man/man1/bramble-get.1.gz /usr/share/bash-completion/completions/bramble /usr/share/doc/bramble/OPERATIONS.md 2>&1 | tr '\\n' ' ')\"\n\
             }} > /mnt/installed.txt\n\
             printf '%s\\n' 'version = 1' 'name = \"{name}\"' 'leaders = [\"{leader_ip}:{LEADER_PORT}\"]' \
               'token = \"{token}\"' '[[images.registry]]' 'host = \"{leader_ip}:5000\"' 'insecure = true' \
               > /etc/bramble/agent.toml\n\
             bramble-agent check > /mnt/check.txt 2>&1; echo \"exit $?\" >> /mnt/check.txt\n\
             systemctl start bramble-agent || {{ journalctl -u bramble-agent --no-pager > /mnt/journal.txt; exit 11; }}\n\
             hung=\n\
             while [ ! -e /mnt/stop ]; do\n\
               main=$(systemctl show -p MainPID --value bramble-agent)\n\
               {{ echo \"agent $main $(systemctl show -p NRestarts --value bramble-agent) $(systemctl is-active bramble-agent)\"\n\
                 for s in /run/bramble/var-lib-bramble-agent/shims/*/state.json; do [ -f $s ] && tr -d '\\n' < $s && echo; done\n\
               }} > /mnt/status.new; mv /mnt/status.new /mnt/status\n\
               if [ -e /mnt/hang ] && [ -z \"$hung\" ]; then kill -STOP $main; hung=$main; echo \"stopped the agent ($main)\"; fi\n\
               sleep 1\n\
             done\n\
             journalctl -u bramble-agent --no-pager -o short-monotonic > /mnt/journal.txt\n\
             systemctl stop bramble-agent\n\
             echo \"after stop: $(systemctl is-active bramble-agent)\"\n",
            deb = deb.display(),
            token = c.token,
        ),
    )
    .unwrap();
    (share, disk)
}

/// What a package board's script wrote: its log, the last status and (when the agent failed to
/// start or the board stopped) the agent's journal.
fn board_report(share: &Path) -> String {
    let read = |f: &str| std::fs::read_to_string(share.join(f)).unwrap_or_default();
    format!("board.log:\n{}\nstatus:\n{}\njournal.txt:\n{}", read("board.log"), read("status"), read("journal.txt"))
}

/// What `package_board`'s script saw after `dpkg -i`: nothing enabled or started, the user made,
/// the config readable by the group only, the units there; and `bramble-agent check` passed.
fn assert_installed_and_checked(share: &Path) {
    let installed = std::fs::read_to_string(share.join("installed.txt")).expect("installed.txt");
    assert!(installed.contains("enabled disabled"), "the package enables nothing:\n{installed}");
    assert!(installed.contains("active inactive"), "the package starts nothing:\n{installed}");
    assert!(installed.contains("user bramble:"), "the package adds the bramble user:\n{installed}");
    assert!(installed.contains("config root:bramble 640"), "{installed}");
    assert!(installed.contains("bramble-agent.service") && installed.contains("bramble-single.service"), "{installed}");
    for f in ["man1/bramble.1.gz ", "man1/bramble-get.1.gz ", "completions/bramble ", "OPERATIONS.md "] {
        assert!(installed.contains(f), "the package installs {f}(man pages, completions, docs):\n{installed}");
    }
    let check = std::fs::read_to_string(share.join("check.txt")).expect("check.txt");
    assert!(
        check.trim_end().ends_with("exit 0"),
        "a Debian board with the package's dependencies passes the check:\n{check}"
    );
}

#[test]
#[ignore = "slow: a Debian board under systemd in a VM (minutes under TCG); scripts/test-boards runs it"]
fn the_package_installs_its_agent_joins_under_systemd_and_the_watchdog_restarts_it_hung_without_touching_containers() {
    let deb = amd64_package();
    let opts = ClusterOptions { agents: 0, not_ready_after: "60s", heartbeat: "5s", ..Default::default() };
    let (c, _registry, image) = with_busybox_opts(opts, "");
    let (share, disk) = package_board(&c, "deb-board", &deb);
    let started = Instant::now();
    let mut vm = Vm::start(
        &c.lab.ns(0),
        &[
            "run",
            "--systemd",
            "--net",
            "--share",
            share.to_str().unwrap(),
            "--disk",
            disk.to_str().unwrap(),
            "--timeout",
            "1500",
            "--",
            "sh",
            "/mnt/board.sh",
        ],
        &c.dir.path().join("deb-console.log"),
    );
    let board_log = || board_report(&share);

    // 1. Installed, nothing started; the agent, started by systemd, joins.
    let node = wait_board_ready(&c, &mut vm, "deb-board", board_log);
    let joined = started.elapsed();
    assert_installed_and_checked(&share);
    assert_eq!(node.node.info.arch, Arch::Amd64);

    // 2. Two containers.
    let manifest = bramble_tests::cluster::idle_app(c.dir.path(), "keep", &image, 2);
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    wait_for("two replicas Running on the board", Duration::from_secs(600), || {
        assert!(vm.child.try_wait().unwrap().is_none(), "the VM stopped:\n{}\n{}", vm.console(), board_log());
        let r = c.replicas_of("keep");
        (r.len() == 2 && r.iter().all(|r| r.phase == ReplicaPhase::Running) && container_pids(&share).len() == 2)
            .then_some(())
    });
    let before = container_pids(&share);
    let (agent_before, restarts_before, _) = unit_status(&share).expect("the unit's status");
    assert_eq!(restarts_before, 0, "{}", board_log());

    // 3. The agent hangs (SIGSTOP): systemd's watchdog (WatchdogSec=60s) kills it and starts it
    //    again; its containers keep running, adopted by the new agent.
    std::fs::write(share.join("hang"), "").unwrap();
    let hung = Instant::now();
    let agent_after = wait_for("systemd to restart the hung agent", Duration::from_secs(400), || {
        assert!(vm.child.try_wait().unwrap().is_none(), "the VM stopped:\n{}\n{}", vm.console(), board_log());
        unit_status(&share)
            .and_then(|(pid, n, state)| (n >= 1 && state == "active" && pid != agent_before).then_some(pid))
    });
    let restarted = hung.elapsed();
    assert_ne!(agent_after, 0);
    std::thread::sleep(Duration::from_secs(15));
    wait_for("the replicas Running after the restart", Duration::from_secs(300), || {
        let r = c.replicas_of("keep");
        (r.len() == 2 && r.iter().all(|r| r.phase == ReplicaPhase::Running)).then_some(())
    });
    assert_eq!(container_pids(&share), before, "the same containers, never restarted:\n{}", board_log());
    assert!(c.replicas_of("keep").iter().all(|r| r.restarts == 0), "{:?}", c.replicas_of("keep"));
    eprintln!(
        "deb board under systemd (TCG): Ready {:.1}s after boot started; hung agent restarted by the watchdog {:.1}s after SIGSTOP",
        joined.as_secs_f64(),
        restarted.as_secs_f64()
    );

    std::fs::write(share.join("stop"), "").unwrap();
    let status = vm.wait(Duration::from_secs(180)).expect("the VM powers off after the stop");
    assert!(status.success(), "the board's script failed:\n{}\n{}", vm.console(), board_log());
    let journal = std::fs::read_to_string(share.join("journal.txt")).expect("journal.txt");
    assert!(journal.contains("Watchdog timeout"), "systemd's watchdog fired:\n{journal}");
    assert!(board_log().contains("after stop: inactive"), "{}", board_log());
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
    let (share, disk) = package_board(&c, &name, &deb);
    let started = Instant::now();
    let mut vm = Vm::start(
        &c.lab.ns(0),
        &[
            "run",
            "--arch",
            deb_arch,
            "--systemd",
            "--net",
            "--share",
            share.to_str().unwrap(),
            "--disk",
            disk.to_str().unwrap(),
            "--timeout",
            "2400",
            "--",
            "sh",
            "/mnt/board.sh",
        ],
        &c.dir.path().join(format!("{name}-console.log")),
    );
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
