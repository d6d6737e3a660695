//! Devices, end to end (issue 30): boards report the device nodes they have; an app that asks
//! for a USB serial adapter runs only on the board that has it, opens it as a user other than
//! root through the node's group and a devices-cgroup rule for exactly that node, and follows the
//! adapter when it is unplugged and plugged into another board. No privileged mode.
//!
//! The "adapter" is a loop device (a real block device whose writes land in a file the test
//! reads) made as `ttyUSB0` in the board's device directory, with a sysfs-shaped tree that says
//! it belongs to USB device 10c4:ea60 (a CP2102). Each board's agent looks in its own directory
//! (`[devices] dev_dir`, `sys_dir`).

use bramble_proto::model::{Replica, ReplicaPhase};
use bramble_tests::{text, wait_for, Cluster, ClusterOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A loop device over a file of 64 KiB; detached when dropped.
struct Loop {
    dev: PathBuf,
    backing: PathBuf,
}

impl Loop {
    fn new(dir: &Path) -> Loop {
        let backing = dir.join("adapter.img");
        std::fs::write(&backing, vec![0u8; 64 << 10]).unwrap();
        let out = Command::new("losetup").args(["-f", "--show"]).arg(&backing).output().expect("run losetup");
        assert!(
            out.status.success(),
            "this test needs a loop device (root, /dev/loop-control): losetup: {}",
            text(&out.stderr)
        );
        Loop { dev: PathBuf::from(text(&out.stdout).trim()), backing }
    }

    fn numbers(&self) -> (u64, u64) {
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        (u64::from(libc::major(rdev)), u64::from(libc::minor(rdev)))
    }

    fn zero(&self) {
        let st = Command::new("dd")
            .arg(format!("of={}", self.dev.display()))
            .args(["if=/dev/zero", "bs=512", "count=1", "oflag=direct", "status=none"])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// What was written at its start, read through the host's own node of it.
    fn head(&self, n: usize) -> Vec<u8> {
        let out = Command::new("dd")
            .arg(format!("if={}", self.dev.display()))
            .args(["bs=512", "count=1", "iflag=direct", "status=none"])
            .output()
            .unwrap();
        out.stdout.into_iter().take(n).collect()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.backing);
    }
}

/// Plugs the adapter into a board's fixture: the node (group 20, mode 0660: as udev makes
/// `dialout` ports) and the sysfs tree that names its USB device.
fn plug(root: &Path, board: usize, (major, minor): (u64, u64)) {
    let dev = root.join(format!("dev-{board}"));
    let node = dev.join("ttyUSB0");
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o660);
    nix::sys::stat::mknod(&node, nix::sys::stat::SFlag::S_IFBLK, mode, nix::sys::stat::makedev(major, minor))
        .expect("mknod (needs root)");
    std::os::unix::fs::chown(&node, Some(0), Some(20)).unwrap();
    // (mknod honours the umask.)
    std::fs::set_permissions(&node, std::os::unix::fs::PermissionsExt::from_mode(0o660)).unwrap();
    let sys = root.join(format!("sys-{board}"));
    let usb = sys.join("devices/platform/usb1/1-1");
    std::fs::create_dir_all(usb.join("1-1:1.0/ttyUSB0")).unwrap();
    std::fs::write(usb.join("idVendor"), "10c4\n").unwrap();
    std::fs::write(usb.join("idProduct"), "ea60\n").unwrap();
    std::fs::write(usb.join("serial"), "0001\n").unwrap();
    std::fs::create_dir_all(sys.join("dev/block")).unwrap();
    let link = sys.join(format!("dev/block/{major}:{minor}"));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("../../devices/platform/usb1/1-1/1-1:1.0/ttyUSB0", link).unwrap();
}

fn unplug(root: &Path, board: usize) {
    std::fs::remove_file(root.join(format!("dev-{board}/ttyUSB0"))).unwrap();
}

fn running_on(c: &Cluster, app: &str, board: &str) -> Replica {
    wait_for(&format!("{app} running on {board}"), Duration::from_secs(90), || {
        c.replicas_of(app).into_iter().find(|r| r.phase == ReplicaPhase::Running && r.node.as_deref() == Some(board))
    })
}

#[test]
fn an_app_gets_its_device_only_where_it_is_and_follows_it() {
    let fixtures = tempfile::Builder::new().prefix("bramble-devices-").tempdir().unwrap();
    let root = fixtures.path();
    for b in 1..=2 {
        std::fs::create_dir_all(root.join(format!("dev-{b}"))).unwrap();
        std::fs::create_dir_all(root.join(format!("sys-{b}"))).unwrap();
    }
    let adapter = Loop::new(root);
    plug(root, 2, adapter.numbers());
    let devices = format!(
        "[devices]\ndev_dir = \"{0}/dev-@BOARD@\"\nsys_dir = \"{0}/sys-@BOARD@\"\nscan_every = \"1s\"\n",
        root.display()
    );
    let opts = ClusterOptions { agents: 2, ..Default::default() };
    let (c, _registry, image) = bramble_tests::cluster::with_busybox_opts(opts, &devices);

    // What the boards have.
    let described = c.ok(&["describe", "node", "board-2"]);
    assert!(
        described.lines().any(|l| l.contains("serial") && l.contains("/dev/ttyUSB0") && l.contains("usb 10c4:ea60")),
        "{described}"
    );
    assert!(c.ok(&["describe", "node", "board-1"]).contains("Devices:       <none>"));
    let node: serde_json::Value = serde_json::from_str(&c.ok(&["describe", "node", "board-2", "-o", "json"])).unwrap();
    let reported = &node["node"]["node"]["info"]["devices"][0];
    assert_eq!(
        (reported["path"].as_str(), reported["usb"].as_str()),
        (Some("/dev/ttyUSB0"), Some("10c4:ea60")),
        "{node}"
    );

    // A user other than root writes to the adapter, then waits.
    let dir = c.dir.path();
    let app = |name: &str, devices: &str, script: &str| {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "[[app]]\nname = \"{name}\"\nimage = \"{image}\"\nuser = \"1000:1000\"\ndevices = [{devices}]\n\
                 command = [\"/bin/sh\", \"-c\", \"{script} trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
            ),
        )
        .unwrap();
        c.ok(&["apply", "-f", file.to_str().unwrap()]);
    };
    app("zigbee", "\"serial:10c4:ea60\"", "echo hello-board > /dev/ttyUSB0;");
    let r = running_on(&c, "zigbee", "board-2");
    wait_for("the write through the container's node", Duration::from_secs(30), || {
        (adapter.head(11) == b"hello-board").then_some(())
    });
    let id = text(&c.cli(&["exec", &r.meta.name, "--", "id"]).stdout);
    assert!(
        id.contains("uid=1000") && id.contains("groups=") && id.contains("20"),
        "the device's group is the user's: {id}"
    );
    // The container has that node and no other of the board's.
    let ls = text(&c.cli(&["exec", &r.meta.name, "--", "ls", "/dev"]).stdout);
    assert!(ls.contains("ttyUSB0") && !ls.contains("loop"), "{ls}");

    // Asked for but on no board: Pending, saying which device.
    app("camera", "\"/dev/video0\"", "");
    let pending = wait_for("camera pending with a reason", Duration::from_secs(30), || {
        c.replicas_of("camera").into_iter().find(|r| r.reason.contains("missing device /dev/video0"))
    });
    assert_eq!(pending.phase, ReplicaPhase::Pending, "{pending:?}");
    assert!(pending.reason.contains("0/2 nodes: 2 missing device /dev/video0"), "{}", pending.reason);

    // Unplugged from board 2: the replica waits, saying why.
    unplug(root, 2);
    let waiting = wait_for("zigbee pending once the adapter is gone", Duration::from_secs(30), || {
        c.replicas_of("zigbee")
            .into_iter()
            .find(|r| r.phase == ReplicaPhase::Pending && r.reason.contains("missing device serial:10c4:ea60"))
    });
    assert!(waiting.node.is_none());
    let events = c.ok(&["events"]);
    assert!(events.contains("no longer has device serial:10c4:ea60"), "{events}");
    // Plugged into board 1: it runs there, and writes again.
    adapter.zero();
    plug(root, 1, adapter.numbers());
    running_on(&c, "zigbee", "board-1");
    wait_for("the write on board 1", Duration::from_secs(30), || (adapter.head(11) == b"hello-board").then_some(()));
    assert_eq!(c.replicas_of("zigbee").len(), 1);
    c.remove_containers();
}
