//! The agent's local image commands as an operator uses them, and what `kill -9` in the middle of
//! a pull leaves behind.

use bramble_tests::process::bin_dir;
use bramble_tests::registry::Registry;
use bramble_tests::testimages::{busybox_layer, busybox_layout, push, Layout, TarBuilder};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn agent_config(dir: &Path, reg: &Registry) -> std::path::PathBuf {
    let p = dir.join("agent.toml");
    let text = format!(
        "version = 1\nname = \"img-test\"\ndata_dir = \"{}\"\n[[images.registry]]\nhost = \"{}\"\ninsecure = true\n",
        dir.join("agent").display(),
        reg.addr
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn image(cfg: &Path, args: &[&str]) -> Output {
    Command::new(bin_dir().join("bramble-agent")).args(["image", "--config"]).arg(cfg).args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn pull_import_ls_rm_prune_from_the_command_line() {
    let reg = Registry::start(None, None);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    busybox_layout(&layout, "1.35");
    push(&layout, "1.35", &format!("{}/bramble/busybox:1.35", reg.addr));
    let cfg = agent_config(dir.path(), &reg);
    let store = dir.path().join("agent/images");

    let pulled = ok(image(&cfg, &["pull", &format!("{}/bramble/busybox:1.35", reg.addr)]));
    assert!(pulled.contains("(linux/amd64, 1 layers,"), "{pulled}");

    // The same image from an OCI layout directory, an OCI archive and a docker save tarball: all
    // three share the one unpacked layer.
    let out = ok(image(&cfg, &["import", layout.to_str().unwrap(), "--name", "local/busybox"]));
    assert!(out.starts_with("local/busybox:1.35 sha256:"), "{out}");
    let archive = dir.path().join("busybox-oci.tar");
    tar_dir(&layout, &archive);
    ok(image(&cfg, &["import", archive.to_str().unwrap(), "--name", "archive/busybox:1"]));
    let docker = dir.path().join("busybox-docker.tar");
    docker_save(&docker, "saved/busybox:latest");
    let out = ok(image(&cfg, &["import", docker.to_str().unwrap()]));
    assert!(out.starts_with("saved/busybox:latest sha256:"), "{out}");
    assert_eq!(count(&store.join("layers")), 1, "one layer, unpacked once, shared by four images");

    let ls = ok(image(&cfg, &["ls"]));
    assert_eq!(ls.lines().count(), 5, "{ls}");
    assert!(ls.lines().next().unwrap().starts_with("REFERENCE"));
    let json: serde_json::Value = serde_json::from_str(&ok(image(&cfg, &["ls", "-o", "json"]))).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 4);

    // Removing an image keeps what others share; prune takes the rest.
    ok(image(&cfg, &["rm", "local/busybox:1.35"]));
    assert_eq!(count(&store.join("layers")), 1);
    let out = image(&cfg, &["rm", "local/busybox:1.35"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is not in the store"));
    let pruned = ok(image(&cfg, &["prune"]));
    assert!(pruned.contains("removed saved/busybox:latest"), "{pruned}");
    assert_eq!(count(&store.join("layers")), 0);
    assert_eq!(count(&store.join("blobs/sha256")), 0);
    assert_eq!(count(&store.join("refs")), 0);

    // A layout for another architecture only: a clear refusal.
    let arm = dir.path().join("arm-only");
    let l = Layout::new(&arm);
    let m = l.image("arm", Some("v6"), &[busybox_layer("armhf")], &["sh"]);
    l.finish("1", vec![m], false);
    let out = image(&cfg, &["import", arm.to_str().unwrap(), "--name", "x/y"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no image for this node (amd64); it holds linux/arm/v6"), "{err}");
    // A hostile archive is refused without writing outside the store.
    let evil = dir.path().join("evil.tar");
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..15].copy_from_slice(b"../../escape-me");
    h.set_size(1);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(b"x");
    bytes.resize(512 * 4, 0);
    std::fs::write(&evil, bytes).unwrap();
    let out = image(&cfg, &["import", evil.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("`..` would leave the layer").count(), 1, "said once: {err}");
    assert!(!dir.path().join("agent/escape-me").exists() && !dir.path().join("escape-me").exists());
}

fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// A `docker save` tarball: manifest.json, the config, an uncompressed layer.tar.
fn docker_save(out: &Path, tag: &str) {
    let layer = busybox_layer("amd64");
    let diff_id = bramble_images::Digest::of(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id.to_string()] },
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", bramble_images::Digest::of(&config).hex());
    let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": [tag], "Layers": ["0123abcd/layer.tar"] }]);
    let t = TarBuilder::default()
        .file("manifest.json", 0o644, &serde_json::to_vec(&manifest).unwrap())
        .file(&config_name, 0o644, &config)
        .dir("0123abcd")
        .file("0123abcd/layer.tar", 0o644, &layer)
        .finish();
    std::fs::write(out, t).unwrap();
}

/// Incompressible bytes, reproducibly.
fn noise(len: usize) -> Vec<u8> {
    bramble_tests::testimages::noise(0x2545F4914F6CDD1D, len)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[test]
fn kill_9_mid_pull_leaves_nothing_half_done_and_a_100_mib_layer_streams() {
    let reg = Registry::start(None, None);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("big");
    let l = Layout::new(&layout);
    let big = TarBuilder::default().dir("data").file("data/noise", 0o644, &noise(100 << 20)).finish();
    let big_diff_id = bramble_images::Digest::of(&big).hex();
    let m = l.image("amd64", None, &[busybox_layer("amd64"), big], &["sh"]);
    l.finish("big", vec![m], false);
    let reference = format!("{}/bramble/big:1", reg.addr);
    push(&layout, "big", &reference);
    let cfg = agent_config(dir.path(), &reg);
    let store = dir.path().join("agent/images");

    // Kill the pull once bytes of the big layer are on disk.
    let mut child = Command::new(bin_dir().join("bramble-agent"))
        .args(["image", "--config"])
        .arg(&cfg)
        .args(["pull", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let partial: u64 = std::fs::read_dir(store.join("ingest"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum();
        if partial > 8 << 20 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the pull finished before it could be interrupted");
        assert!(started.elapsed() < Duration::from_secs(60), "the pull never got going");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let blobs_before: Vec<_> =
        std::fs::read_dir(store.join("blobs/sha256")).unwrap().flatten().map(|e| e.file_name()).collect();
    for b in &blobs_before {
        let bytes = std::fs::read(store.join("blobs/sha256").join(b)).unwrap();
        assert_eq!(
            bramble_images::Digest::of(&bytes).hex(),
            b.to_string_lossy(),
            "every visible blob is complete and verified"
        );
    }
    assert_eq!(count(&store.join("refs")), 0, "no image is visible");
    let ls = ok(image(&cfg, &["ls"]));
    assert_eq!(ls.lines().count(), 1, "ls shows no image: {ls}");
    assert_eq!(count(&store.join("ingest")), 0, "opening the store cleared the partial download");
    // The big layer was being unpacked as it arrived: opening the store removed the partial
    // unpack beside, and only layers whose blobs are stored (whole and verified) are visible.
    for e in std::fs::read_dir(store.join("layers")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        assert!(!name.contains(".tmp-"), "a partial unpack stayed: {name}");
    }
    assert!(!store.join("layers").join(&big_diff_id).exists(), "the interrupted layer is not visible");
    assert!(count(&store.join("layers")) <= blobs_before.len(), "no more layers than stored blobs");

    // The next pull completes; its memory stays far below the layer's size.
    let mut child = Command::new(bin_dir().join("bramble-agent"))
        .args(["image", "--config"])
        .arg(&cfg)
        .args(["pull", &reference])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(h) = vm_hwm_kib(child.id()) {
            peak = peak.max(h);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    ok(out);
    eprintln!("pulling a 100 MiB layer: peak RSS {peak} KiB");
    assert!(
        peak > 0 && peak < 48 * 1024,
        "peak RSS {peak} KiB while pulling a 100 MiB layer: it must stream, not buffer"
    );
    assert_eq!(count(&store.join("refs")), 1);
    // Where the interrupted layer was not: it is now, whole.
    let noise_file = store.join("layers").join(&big_diff_id).join("data/noise");
    assert_eq!(std::fs::metadata(&noise_file).map(|m| m.len()).ok(), Some(100 << 20), "{}", noise_file.display());
}

/// On a small filesystem (a tmpfs), filling past the high mark removes the oldest unused images.
#[test]
fn a_full_disk_triggers_garbage_collection_of_old_unused_images() {
    use bramble_images::gc::{disk_used_percent, relieve_disk, MIN_AGE_MS};
    use bramble_images::import::{import, ImportOptions};
    use bramble_images::rootfs::Lease;
    use bramble_images::store::ContentStore;
    use bramble_images::Progress;
    use bramble_proto::model::Arch;
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (it mounts a tmpfs); run it as root, as CI does");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    nix::mount::mount(Some("tmpfs"), &mnt, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=24m")).unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _guard = Unmount(mnt.clone());
    let store = ContentStore::open(&mnt.join("images")).unwrap();
    // Four images of ~3 MiB each (a distinct 1.5 MiB layer, stored compressed and unpacked).
    for i in 0..4u8 {
        let layout = dir.path().join(format!("img{i}"));
        let l = Layout::new(&layout);
        let data: Vec<u8> = noise(3 << 19).into_iter().map(|b| b ^ i).collect();
        let m = l.image("amd64", None, &[TarBuilder::default().file("data", 0o644, &data).finish()], &["sh"]);
        l.finish(&format!("{i}"), vec![m], false);
        import(&store, &layout, &Arch::Amd64, &ImportOptions { name: Some("local/img".into()) }, &Progress::default())
            .unwrap();
    }
    let before = disk_used_percent(&mnt).unwrap();
    assert!(before >= 40, "the images fill the small disk ({before}%)");
    let in_use = vec![Lease {
        image: "local/img:0".into(),
        diff_ids: Vec::new(),
        kind: bramble_images::rootfs::RootfsKind::Overlay,
    }];
    // Just imported: too young to be removed.
    let now = bramble_proto::time::now_ms();
    let r = relieve_disk(&store, &in_use, 30, 20, now).unwrap().unwrap();
    assert!(r.images_removed.is_empty());
    // Later: the oldest unused images go until the disk is below the low mark; the one in use stays.
    let r = relieve_disk(&store, &in_use, 30, 20, now + MIN_AGE_MS).unwrap().unwrap();
    let left: Vec<String> = store.images().unwrap().into_iter().map(|i| i.reference).collect();
    assert!(left.contains(&"local/img:0".to_string()), "the image in use stays: {left:?}");
    assert_eq!(r.images_removed.first().map(String::as_str), Some("local/img:1"), "oldest unused first: {r:?}");
    let after = disk_used_percent(&mnt).unwrap();
    assert!(after < 20 || left == ["local/img:0"], "below the low mark ({after}%) or nothing unused left: {left:?}");
    assert!(after < before);
    assert!(relieve_disk(&store, &in_use, 99, 98, now).unwrap().is_none(), "nothing to do below the high mark");
}
