//! Images against a real registry (Debian's docker-registry on loopback) with images built
//! reproducibly from Debian's busybox-static and pushed by skopeo.

use bramble_images::pull::{PullError, PullPolicy, Puller};
use bramble_images::registry::{RegistryClient, RegistryConfig, RegistryError};
use bramble_images::rootfs::{RootfsKind, Rootfses};
use bramble_images::store::ContentStore;
use bramble_images::unpack::UnpackOptions;
use bramble_images::{Digest, ImageRef, Progress};
use bramble_proto::model::Arch;
use bramble_tests::registry::Registry;
use bramble_tests::testimages::{busybox_layout, push};
use std::path::Path;
use std::process::Command;

fn client(reg: &Registry) -> RegistryClient {
    RegistryClient::new(vec![RegistryConfig { host: reg.addr.clone(), insecure: true, ..Default::default() }])
}

fn puller<'a>(store: &'a ContentStore, client: &'a RegistryClient, arch: Arch) -> Puller<'a> {
    Puller { store, client, arch, unpack: UnpackOptions::default(), peers: None }
}

fn setup() -> (Registry, tempfile::TempDir, Digest) {
    let reg = Registry::start(None, None);
    let dir = tempfile::tempdir().unwrap();
    let index = busybox_layout(&dir.path().join("layout"), "1.35");
    push(&dir.path().join("layout"), "1.35", &format!("{}/bramble/busybox:1.35", reg.addr));
    (reg, dir, index)
}

fn elf_machine(path: &Path) -> u16 {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF");
    u16::from_le_bytes([b[18], b[19]])
}

#[test]
fn test_images_are_reproducible() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    assert_eq!(busybox_layout(a.path(), "x"), busybox_layout(b.path(), "x"));
}

#[test]
fn pull_verify_unpack_and_run_busybox_for_this_node() {
    let (reg, dir, index) = setup();
    let store = ContentStore::open(&dir.path().join("store")).unwrap();
    let client = client(&reg);
    let image: ImageRef = format!("{}/bramble/busybox:1.35", reg.addr).parse().unwrap();
    let progress = Progress::default();
    let rec = puller(&store, &client, Arch::Amd64).pull(&image, PullPolicy::Always, &progress).unwrap();
    assert_eq!(rec.platform, "linux/amd64");
    assert_eq!(rec.index_digest, Some(index), "the index skopeo pushed is the one we built");
    assert_eq!(progress.totals(), (rec.size(), rec.size()), "progress reached every byte");
    let layer = store.layer_dir(&rec.layers[0].diff_id);
    assert_eq!(elf_machine(&layer.join("bin/busybox")), 62, "x86-64");
    let out = Command::new(layer.join("bin/busybox")).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("BusyBox v1.35"), "{out:?}");
    // Pulled again: everything comes from the store.
    let again =
        puller(&store, &client, Arch::Amd64).pull(&image, PullPolicy::IfNotPresent, &Progress::default()).unwrap();
    assert_eq!(again, rec);
    assert_eq!(store.images().unwrap().len(), 1);
}

#[test]
fn the_platform_is_chosen_by_architecture_and_variant() {
    let (reg, dir, _) = setup();
    let client = client(&reg);
    let image: ImageRef = format!("{}/bramble/busybox:1.35", reg.addr).parse().unwrap();
    for (arch, platform, machine) in [(Arch::Arm64, "linux/arm64/v8", 183), (Arch::ArmV7, "linux/arm/v7", 40)] {
        let store = ContentStore::open(&dir.path().join(format!("store-{platform}").replace('/', "-"))).unwrap();
        let rec = puller(&store, &client, arch).pull(&image, PullPolicy::Always, &Progress::default()).unwrap();
        assert_eq!(rec.platform, platform);
        assert_eq!(elf_machine(&store.layer_dir(&rec.layers[0].diff_id).join("bin/busybox")), machine);
    }
    let store = ContentStore::open(&dir.path().join("store-v6")).unwrap();
    match puller(&store, &client, Arch::ArmV6).pull(&image, PullPolicy::Always, &Progress::default()) {
        Err(e @ PullError::NoPlatform { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(
                    "has no variant for this node (arm/v6); it offers linux/amd64, linux/arm64/v8, linux/arm/v7"
                ),
                "{text}"
            );
        }
        other => panic!("expected NoPlatform, got {other:?}"),
    }
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn a_corrupted_blob_in_the_registry_is_refused_and_nothing_is_stored() {
    let (reg, dir, _) = setup();
    let client = client(&reg);
    let image: ImageRef = format!("{}/bramble/busybox:1.35", reg.addr).parse().unwrap();
    // Find the amd64 layer through a clean pull into a scratch store, then corrupt it.
    let scratch = ContentStore::open(&dir.path().join("scratch")).unwrap();
    let rec = puller(&scratch, &client, Arch::Amd64).pull(&image, PullPolicy::Always, &Progress::default()).unwrap();
    reg.corrupt_blob(&rec.layers[0].digest);
    let store = ContentStore::open(&dir.path().join("store")).unwrap();
    match puller(&store, &client, Arch::Amd64).pull(&image, PullPolicy::Always, &Progress::default()) {
        Err(PullError::Registry(RegistryError::DigestMismatch { what, .. })) => {
            assert!(what.contains(&rec.layers[0].digest.to_string()))
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(!store.has_blob(&rec.layers[0].digest), "no corrupt blob in the store");
    assert!(store.images().unwrap().is_empty(), "no image recorded");
    assert_eq!(std::fs::read_dir(store.root().join("ingest")).unwrap().count(), 0, "no leftovers");
    // The layer was unpacked as it arrived: none of it stays, in place or beside.
    let layers: Vec<_> = std::fs::read_dir(store.root().join("layers")).unwrap().flatten().map(|e| e.path()).collect();
    assert!(layers.is_empty(), "nothing of the corrupt layer unpacked: {layers:?}");
}

#[test]
fn missing_images_and_unknown_registries_have_clear_errors() {
    let (reg, dir, _) = setup();
    let client = client(&reg);
    let store = ContentStore::open(&dir.path().join("store")).unwrap();
    let image: ImageRef = format!("{}/bramble/nope:1", reg.addr).parse().unwrap();
    let e = puller(&store, &client, Arch::Amd64).pull(&image, PullPolicy::Always, &Progress::default()).unwrap_err();
    assert!(e.to_string().contains("manifest bramble/nope:1 not found in registry"), "{e}");
    let image: ImageRef = "127.0.0.1:1/x:1".parse().unwrap();
    let c =
        RegistryClient::new(vec![RegistryConfig { host: "127.0.0.1:1".into(), insecure: true, ..Default::default() }]);
    let e = puller(&store, &c, Arch::Amd64).pull(&image, PullPolicy::Always, &Progress::default()).unwrap_err();
    assert!(e.to_string().starts_with("cannot reach registry 127.0.0.1:1"), "{e}");
}

#[test]
fn overlay_and_copy_root_filesystems_run_busybox_and_are_removed() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (overlay mounts, chroot); run it as root, as CI does"
    );
    let (reg, dir, _) = setup();
    let client = client(&reg);
    let store = ContentStore::open(&dir.path().join("store")).unwrap();
    let image: ImageRef = format!("{}/bramble/busybox:1.35", reg.addr).parse().unwrap();
    let rec = puller(&store, &client, Arch::Amd64).pull(&image, PullPolicy::Always, &Progress::default()).unwrap();
    for kind in [RootfsKind::Overlay, RootfsKind::Copy] {
        let roots = Rootfses::new(store.clone(), &dir.path().join("containers")).with_kind(kind);
        let r = roots.prepare("c1", &rec).unwrap();
        let out = Command::new("chroot")
            .arg(&r.path)
            .args(["/bin/sh", "-c", "echo hi > /tmp/x && cat /tmp/x /www/index.html"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\nhello from a bramble\n", "{kind:?}: {out:?}");
        assert_eq!(roots.leases().len(), 1);
        // The container's writes stay out of the shared layer.
        assert!(!store.layer_dir(&rec.layers[0].diff_id).join("tmp/x").exists());
        roots.remove("c1").unwrap();
        assert!(!dir.path().join("containers/c1").exists(), "{kind:?} rootfs removed");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&dir.path().join("containers").display().to_string()), "nothing left mounted");
        roots.remove("c1").unwrap();
    }
    assert!(matches!(
        Rootfses::new(store.clone(), dir.path()).prepare("../x", &rec),
        Err(bramble_images::rootfs::RootfsError::BadId(_))
    ));
}

#[test]
fn docker_schema_2_manifest_lists_pull_too() {
    let reg = Registry::start(None, None);
    let dir = tempfile::tempdir().unwrap();
    busybox_layout(&dir.path().join("layout"), "1.35");
    let dest = format!("{}/docker/busybox:1.35", reg.addr);
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false", "--format", "v2s2"])
        .arg(format!("oci:{}:1.35", dir.path().join("layout").display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let client = client(&reg);
    let store = ContentStore::open(&dir.path().join("store")).unwrap();
    let image: ImageRef = dest.parse().unwrap();
    let rec = puller(&store, &client, Arch::ArmV7).pull(&image, PullPolicy::Always, &Progress::default()).unwrap();
    assert_eq!(rec.platform, "linux/arm/v7");
    assert_eq!(rec.layers[0].media_type, "application/vnd.docker.image.rootfs.diff.tar.gzip");
    let manifest = store.read_blob(&rec.manifest_digest).unwrap();
    assert!(String::from_utf8_lossy(&manifest).contains("application/vnd.docker.distribution.manifest.v2+json"));
    let index = store.read_blob(rec.index_digest.as_ref().unwrap()).unwrap();
    assert!(String::from_utf8_lossy(&index).contains("application/vnd.docker.distribution.manifest.list.v2+json"));
}

#[test]
fn zstd_layers_made_by_skopeo_pull_unpack_and_run() {
    let reg = Registry::start(None, None);
    let dir = tempfile::tempdir().unwrap();
    busybox_layout(&dir.path().join("layout"), "1.35");
    // skopeo recompresses every layer to zstd on the way (an independent encoder: Go's klauspost).
    let dest = format!("{}/bramble/busybox-zstd:1.35", reg.addr);
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false", "--dest-compress-format", "zstd"])
        .args(["--dest-compress", "--format", "oci"])
        .arg(format!("oci:{}:1.35", dir.path().join("layout").display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("run skopeo (apt-get install skopeo; scripts/test does)");
    assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
    let store = ContentStore::open(&dir.path().join("store")).unwrap();
    let client = client(&reg);
    let image: ImageRef = dest.parse().unwrap();
    let rec = puller(&store, &client, Arch::Amd64).pull(&image, PullPolicy::Always, &Progress::default()).unwrap();
    assert_eq!(rec.layers.len(), 1);
    assert_eq!(rec.layers[0].media_type, "application/vnd.oci.image.layer.v1.tar+zstd", "skopeo wrote zstd");
    let blob = store.read_blob(&rec.layers[0].digest).unwrap();
    assert_eq!(&blob[..4], &[0x28, 0xb5, 0x2f, 0xfd], "the blob is a zstd frame");
    let layer = store.layer_dir(&rec.layers[0].diff_id);
    let out = Command::new(layer.join("bin/busybox")).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("BusyBox v1.35"), "{out:?}");
    // The same tar as the gzip image: one diff_id, two blobs; the unpacked layer is shared.
    push(&dir.path().join("layout"), "1.35", &format!("{}/bramble/busybox:1.35", reg.addr));
    let gz: ImageRef = format!("{}/bramble/busybox:1.35", reg.addr).parse().unwrap();
    let rec_gz = puller(&store, &client, Arch::Amd64).pull(&gz, PullPolicy::Always, &Progress::default()).unwrap();
    assert_eq!(rec_gz.layers[0].diff_id, rec.layers[0].diff_id);
    assert_ne!(rec_gz.layers[0].digest, rec.layers[0].digest);
}
