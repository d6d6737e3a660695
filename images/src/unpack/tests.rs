//! Hostile and ordinary layers, built byte by byte (the `tar` crate refuses to write `..` or
//! absolute names, which is exactly what an attacker would write).

use super::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use tar::EntryType;

#[derive(Default)]
struct Layer(Vec<u8>);

impl Layer {
    fn entry(mut self, path: &str, kind: EntryType, link: &str, data: &[u8], mode: u32) -> Self {
        let mut h = tar::Header::new_gnu();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }
    fn dir(self, p: &str) -> Self {
        self.entry(p, EntryType::Directory, "", b"", 0o755)
    }
    fn file(self, p: &str, data: &[u8]) -> Self {
        self.entry(p, EntryType::Regular, "", data, 0o644)
    }
    fn symlink(self, p: &str, target: &str) -> Self {
        self.entry(p, EntryType::Symlink, target, b"", 0o777)
    }
    fn hardlink(self, p: &str, target: &str) -> Self {
        self.entry(p, EntryType::Link, target, b"", 0o644)
    }
    fn bytes(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// A sandbox: `root/layer` is unpacked into; `root/outside` must never change.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("layer")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), b"untouched").unwrap();
        Sandbox { dir }
    }
    fn layer(&self) -> std::path::PathBuf {
        self.dir.path().join("layer")
    }
    fn outside(&self) -> std::path::PathBuf {
        self.dir.path().join("outside")
    }
    fn unpack(&self, tar: &[u8], target: Target) -> Result<(Digest, UnpackStats), UnpackError> {
        unpack(tar, &self.layer(), target, &UnpackOptions::default())
    }
    /// The outside directory holds exactly what it started with.
    fn outside_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(self.outside()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["secret"], "nothing new outside the layer");
        assert_eq!(std::fs::read(self.outside().join("secret")).unwrap(), b"untouched");
        assert!(!self.dir.path().join("escaped").exists());
    }
}

fn refused(result: Result<(Digest, UnpackStats), UnpackError>, entry: &str, reason: &str) {
    match result {
        Err(UnpackError::Entry { entry: e, reason: r }) => {
            assert_eq!(e, entry, "the error names the entry");
            assert!(r.contains(reason), "reason {r:?} should contain {reason:?}");
        }
        other => panic!("expected entry {entry:?} to be refused, got {other:?}"),
    }
}

fn require_root(what: &str) {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root ({what}); run it as root, as CI does");
}

#[test]
fn an_ordinary_layer_unpacks_with_modes_links_and_its_diff_id() {
    let s = Sandbox::new();
    let tar = Layer::default()
        .dir("bin")
        .entry("bin/busybox", EntryType::Regular, "", b"\x7fELF...", 0o4755)
        .symlink("bin/sh", "busybox")
        .hardlink("bin/ash", "bin/busybox")
        .dir("./etc/")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .file("deep/implied/dirs/file", b"x")
        .entry("run/fifo", EntryType::Fifo, "", b"", 0o600)
        .bytes();
    let (diff_id, stats) = s.unpack(&tar, Target::Layer).unwrap();
    assert_eq!(diff_id, Digest::of(&tar), "the diff_id is the digest of the whole uncompressed stream");
    assert_eq!(stats.entries, 8);
    let l = s.layer();
    assert_eq!(std::fs::read(l.join("bin/busybox")).unwrap(), b"\x7fELF...");
    let mode = std::fs::metadata(l.join("bin/busybox")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o4755, "set-user-ID kept");
    assert_eq!(std::fs::read_link(l.join("bin/sh")).unwrap().to_str(), Some("busybox"));
    assert_eq!(
        std::fs::metadata(l.join("bin/ash")).unwrap().ino(),
        std::fs::metadata(l.join("bin/busybox")).unwrap().ino()
    );
    assert_eq!(std::fs::metadata(l.join("bin/busybox")).unwrap().mtime(), 1_700_000_000);
    assert_eq!(std::fs::read(l.join("deep/implied/dirs/file")).unwrap(), b"x");
    assert!(std::fs::symlink_metadata(l.join("run/fifo")).unwrap().file_type().is_fifo());
    s.outside_untouched();
}

#[test]
fn dot_dot_paths_are_refused() {
    let s = Sandbox::new();
    let tar = Layer::default().file("../escaped", b"x").bytes();
    refused(s.unpack(&tar, Target::Layer), "../escaped", "`..` would leave the layer");
    let tar = Layer::default().file("a/../../outside/secret", b"pwned").bytes();
    refused(s.unpack(&tar, Target::Layer), "a/../../outside/secret", "`..`");
    s.outside_untouched();
}

#[test]
fn absolute_paths_are_refused() {
    let s = Sandbox::new();
    let target = format!("{}/pwned", s.outside().display());
    let tar = Layer::default().file(&target, b"x").bytes();
    refused(s.unpack(&tar, Target::Layer), &target, "absolute paths are not allowed");
    s.outside_untouched();
}

#[test]
fn a_write_through_a_symlink_is_refused() {
    let s = Sandbox::new();
    let outside = s.outside().display().to_string();
    let tar = Layer::default().symlink("etc", &outside).file("etc/secret", b"pwned").bytes();
    refused(
        s.unpack(&tar, Target::Layer),
        "etc/secret",
        "etc is a symlink or a file, not a directory: refusing to write through it",
    );
    let s = Sandbox::new();
    let tar = Layer::default().symlink("up", "../outside").file("up/new", b"pwned").bytes();
    refused(s.unpack(&tar, Target::Layer), "up/new", "refusing to write through it");
    s.outside_untouched();
}

#[test]
fn a_symlink_chain_that_escapes_is_refused() {
    let s = Sandbox::new();
    let outside = s.outside().display().to_string();
    let tar = Layer::default().symlink("b", &outside).symlink("a", "b").dir("a/sub").bytes();
    refused(s.unpack(&tar, Target::Layer), "a/sub", "a is a symlink");
    let s = Sandbox::new();
    let tar = Layer::default().dir("d").symlink("d/x", "../../outside").file("d/x/secret", b"pwned").bytes();
    refused(s.unpack(&tar, Target::Layer), "d/x/secret", "d/x is a symlink");
    s.outside_untouched();
}

#[test]
fn a_hard_link_to_outside_is_refused() {
    let s = Sandbox::new();
    let tar = Layer::default().hardlink("h", "../outside/secret").bytes();
    refused(s.unpack(&tar, Target::Layer), "h", "hard link target `..` would leave the layer");
    let abs = format!("{}/secret", s.outside().display());
    let tar = Layer::default().hardlink("h", &abs).bytes();
    refused(s.unpack(&tar, Target::Layer), "h", "hard link target absolute paths are not allowed");
    // Through a symlink inside the layer.
    let tar = Layer::default().symlink("o", "../outside").hardlink("h", "o/secret").bytes();
    refused(s.unpack(&tar, Target::Layer), "h", "is not inside the layer");
    // To something that is not there.
    let s = Sandbox::new();
    let tar = Layer::default().hardlink("h", "missing").bytes();
    refused(s.unpack(&tar, Target::Layer), "h", "cannot link to \"missing\"");
    s.outside_untouched();
}

#[test]
fn an_entry_replacing_a_symlink_replaces_the_link_not_its_target() {
    let s = Sandbox::new();
    let secret = format!("{}/secret", s.outside().display());
    let tar = Layer::default().symlink("x", &secret).file("x", b"new").hardlink("y", "x").bytes();
    s.unpack(&tar, Target::Layer).unwrap();
    assert_eq!(std::fs::read(s.layer().join("x")).unwrap(), b"new");
    assert!(std::fs::symlink_metadata(s.layer().join("x")).unwrap().is_file());
    s.outside_untouched();
    // A hard link to a symlink links the symlink itself; nothing is followed.
    let s = Sandbox::new();
    let tar = Layer::default().symlink("s", &secret).hardlink("h", "s").bytes();
    s.unpack(&tar, Target::Layer).unwrap();
    assert!(std::fs::symlink_metadata(s.layer().join("h")).unwrap().file_type().is_symlink());
    s.outside_untouched();
}

#[test]
fn devices_follow_the_policy_and_overlay_xattrs_are_never_taken_from_a_layer() {
    let s = Sandbox::new();
    let tar = Layer::default().entry("dev/null", EntryType::Char, "", b"", 0o666).bytes();
    let (_, stats) = s.unpack(&tar, Target::Layer).unwrap();
    assert_eq!(stats.devices_skipped, 1);
    assert!(!s.layer().join("dev/null").exists());
    let opts = UnpackOptions { devices: DevicePolicy::Refuse, ..Default::default() };
    let s = Sandbox::new();
    match unpack(&tar[..], &s.layer(), Target::Layer, &opts) {
        Err(UnpackError::Entry { entry, reason }) => {
            assert_eq!((entry.as_str(), reason.contains("device")), ("dev/null", true))
        }
        other => panic!("{other:?}"),
    }
    // A pax header asking for trusted.overlay.opaque is dropped, user.* kept.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
        ("SCHILY.xattr.user.note", &b"hi"[..]),
    ])
    .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Directory);
    h.set_path("d").unwrap();
    h.set_mode(0o755);
    h.set_size(0);
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    let tar = b.into_inner().unwrap();
    let s = Sandbox::new();
    let (_, stats) = s.unpack(&tar, Target::Layer).unwrap();
    assert_eq!(stats.xattrs_skipped, 1);
    assert!(xattr::get(s.layer().join("d"), "trusted.overlay.opaque").unwrap_or(None).is_none());
    if let Ok(Some(v)) = xattr::get(s.layer().join("d"), "user.note") {
        assert_eq!(v, b"hi");
    }
}

#[test]
fn size_limits_hold() {
    let s = Sandbox::new();
    let tar = Layer::default().file("a", &[7u8; 3000]).file("b", &[7u8; 3000]).bytes();
    let opts = UnpackOptions { max_bytes: 5000, ..Default::default() };
    assert!(matches!(unpack(&tar[..], &s.layer(), Target::Layer, &opts), Err(UnpackError::TooLarge { limit: 5000 })));
}

#[test]
fn garbage_is_a_tar_error() {
    let s = Sandbox::new();
    let mut junk = vec![0x42u8; 1024];
    junk[100] = 0;
    assert!(s.unpack(&junk, Target::Layer).is_err());
}

#[test]
fn whiteouts_become_overlayfs_whiteouts_in_a_layer_directory() {
    require_root("whiteouts are character devices and trusted.* xattrs");
    let s = Sandbox::new();
    let tar = Layer::default()
        .dir("etc")
        .file("etc/.wh.motd", b"")
        .dir("var")
        .file("var/.wh..wh..opq", b"")
        .file("var/kept", b"k")
        .bytes();
    s.unpack(&tar, Target::Layer).unwrap();
    let md = std::fs::symlink_metadata(s.layer().join("etc/motd")).unwrap();
    assert!(md.file_type().is_char_device() && md.rdev() == 0, "a 0/0 character device");
    assert_eq!(xattr::get(s.layer().join("var"), OPAQUE_XATTR).unwrap().as_deref(), Some(&b"y"[..]));
    assert!(s.layer().join("var/kept").exists());
    let tar = Layer::default().file(".wh.", b"").bytes();
    refused(s.unpack(&tar, Target::Layer), ".wh.", "invalid whiteout");
}

#[test]
fn flat_target_applies_whiteouts_and_replaces_lower_symlinks_with_directories() {
    let s = Sandbox::new();
    let outside = s.outside().display().to_string();
    let lower = Layer::default()
        .file("etc/motd", b"hi")
        .file("var/old", b"o")
        .dir("var/cache")
        .file("var/cache/x", b"x")
        .symlink("lib", &outside)
        .bytes();
    s.unpack(&lower, Target::Flat).unwrap();
    let upper = Layer::default()
        .file("etc/.wh.motd", b"")
        .file("var/new", b"n")
        .file("var/.wh..wh..opq", b"")
        .file("lib/libc.so", b"elf")
        .bytes();
    s.unpack(&upper, Target::Flat).unwrap();
    let l = s.layer();
    assert!(!l.join("etc/motd").exists(), "whited out");
    let mut var: Vec<_> = std::fs::read_dir(l.join("var")).unwrap().map(|e| e.unwrap().file_name()).collect();
    var.sort();
    assert_eq!(var, ["new"], "the opaque directory lost the lower layer's content, kept this layer's");
    assert!(std::fs::symlink_metadata(l.join("lib")).unwrap().is_dir(), "a directory replaced the lower symlink");
    assert_eq!(std::fs::read(l.join("lib/libc.so")).unwrap(), b"elf");
    s.outside_untouched();
    // But this layer's own symlink is never a way through, even in a flat target.
    let tar = Layer::default().symlink("own", &outside).file("own/x", b"pwned").bytes();
    refused(s.unpack(&tar, Target::Flat), "own/x", "refusing to write through it");
    s.outside_untouched();
}

/// Issue 27: a gzip layer of half a megabyte holding a GNU long name of 512 MiB. Refused at its
/// header: the parser never allocates for it, little of the stream is read, and the error does
/// not quote the name.
#[test]
fn a_long_name_bomb_is_refused_at_its_header() {
    use std::io::Write;
    struct Counting<R>(R, std::rc::Rc<std::cell::Cell<u64>>);
    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(b)?;
            self.1.set(self.1.get() + n as u64);
            Ok(n)
        }
    }
    let huge: u64 = 512 << 20;
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(EntryType::GNULongName);
    h.set_size(huge);
    h.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(h.as_bytes()).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..(huge >> 20) {
        gz.write_all(&chunk).unwrap();
    }
    let layer = gz.finish().unwrap();
    assert!(layer.len() < 1 << 20, "a small layer: {} bytes", layer.len());
    let read = std::rc::Rc::new(std::cell::Cell::new(0));
    let s = Sandbox::new();
    let r = Counting(flate2::read::GzDecoder::new(&layer[..]), read.clone());
    let e = unpack(r, s.dir.path().join("layer").as_path(), Target::Layer, &UnpackOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("a GNU long name of 536870912 bytes (at most 4096)"), "{e}");
    assert!(e.len() < 200, "the name is not quoted: {} bytes", e.len());
    assert!(read.get() < 1 << 20, "read {} bytes of 512 MiB", read.get());
}
