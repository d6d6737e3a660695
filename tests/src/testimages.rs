//! Test images built reproducibly from Debian's `busybox-static` (amd64, arm64, armhf), as an OCI
//! layout with a three-platform index. Same inputs, same bytes, same digests.

use bramble_images::digest::Digest;
use bramble_images::oci;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where `scripts/fetch-test-assets` puts the busybox binaries.
pub fn assets_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let target =
        exe.ancestors().find(|p| p.file_name().is_some_and(|n| n == "target")).expect("inside target/").to_path_buf();
    target.join("test-assets")
}

pub fn busybox(arch: &str) -> PathBuf {
    let p = assets_dir().join(format!("busybox-{arch}"));
    assert!(p.is_file(), "{} is missing: run scripts/fetch-test-assets (scripts/test does)", p.display());
    p
}

/// (OCI architecture, variant, Debian architecture)
pub const PLATFORMS: [(&str, Option<&str>, &str); 3] =
    [("amd64", None, "amd64"), ("arm64", Some("v8"), "arm64"), ("arm", Some("v7"), "armhf")];

const APPLETS: [&str; 18] = [
    "cat", "echo", "false", "hostname", "httpd", "id", "ip", "kill", "ls", "mkdir", "nc", "nslookup", "ps", "sh",
    "sleep", "true", "wget", "yes",
];

/// A reproducible tar stream.
pub struct TarBuilder(tar::Builder<Vec<u8>>);

impl Default for TarBuilder {
    fn default() -> Self {
        TarBuilder(tar::Builder::new(Vec::new()))
    }
}

impl TarBuilder {
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h
    }
    pub fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, path, &[][..]).expect("tar");
        self
    }
    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.0.append_data(&mut h, path, data).expect("tar");
        self
    }
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, path, target).expect("tar");
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.0.into_inner().expect("tar")
    }
}

/// gzip without a name or time, so the bytes depend only on the input.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// The busybox root filesystem layer (uncompressed tar) for one Debian architecture.
/// `n` bytes nobody compresses (xorshift from `seed`; the same seed, the same bytes).
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = vec![0u8; n];
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    out
}

pub fn busybox_layer(deb_arch: &str) -> Vec<u8> {
    let bin = std::fs::read(busybox(deb_arch)).expect("read busybox");
    let mut t = TarBuilder::default().dir("bin").file("bin/busybox", 0o755, &bin);
    for a in APPLETS {
        t = t.symlink(&format!("bin/{a}"), "busybox");
    }
    t.dir("dev")
        .dir("etc")
        .file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        .dir("proc")
        .dir("root")
        .dir("sys")
        .dir("tmp")
        .dir("www")
        .file("www/index.html", 0o644, b"hello from a bramble\n")
        .finish()
}

/// Blobs of an OCI layout being built.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dir");
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
        Layout { dir: dir.to_path_buf() }
    }

    /// Stores a blob; returns its descriptor.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let d = Digest::of(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(d.hex()), bytes).expect("blob");
        json!({ "mediaType": media_type, "digest": d.to_string(), "size": bytes.len() })
    }

    /// An image of the given layers (uncompressed tars); returns the manifest's descriptor.
    pub fn image(&self, arch: &str, variant: Option<&str>, layers: &[Vec<u8>], cmd: &[&str]) -> serde_json::Value {
        let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
        let layer_descs: Vec<_> = layers.iter().map(|l| self.blob(oci::OCI_LAYER_GZIP, &gzip(l))).collect();
        let mut config = json!({
            "architecture": arch,
            "os": "linux",
            "config": { "Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/" },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        let config_desc = self.blob(oci::OCI_CONFIG, serde_json::to_vec(&config).expect("json").as_slice());
        let manifest =
            json!({ "schemaVersion": 2, "mediaType": oci::OCI_MANIFEST, "config": config_desc, "layers": layer_descs });
        let mut desc = self.blob(oci::OCI_MANIFEST, serde_json::to_vec(&manifest).expect("json").as_slice());
        let mut platform = json!({ "architecture": arch, "os": "linux" });
        if let Some(v) = variant {
            platform["variant"] = json!(v);
        }
        desc["platform"] = platform;
        desc
    }

    /// Writes `index.json` naming `manifests` (or an index of them, for a multi-platform image).
    pub fn finish(&self, tag: &str, manifests: Vec<serde_json::Value>, multi: bool) -> Digest {
        let top = if multi {
            let index = json!({ "schemaVersion": 2, "mediaType": oci::OCI_INDEX, "manifests": manifests });
            self.blob(oci::OCI_INDEX, serde_json::to_vec(&index).expect("json").as_slice())
        } else {
            manifests.into_iter().next().expect("one manifest")
        };
        let mut top = top;
        top["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        let index = json!({ "schemaVersion": 2, "manifests": [top.clone()] });
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index).expect("json")).expect("index.json");
        top["digest"].as_str().expect("digest").parse().expect("digest")
    }
}

/// The three-platform busybox image as an OCI layout in `dir`; returns the index digest.
pub fn busybox_layout(dir: &Path, tag: &str) -> Digest {
    let l = Layout::new(dir);
    let manifests =
        PLATFORMS.iter().map(|(arch, variant, deb)| l.image(arch, *variant, &[busybox_layer(deb)], &["sh"])).collect();
    l.finish(tag, manifests, true)
}

/// The caddy layer for one Debian architecture (`scripts/fetch-test-assets`: Debian's caddy with
/// the loader, libc and libzstd it links).
pub fn caddy_layer(arch: &str) -> Vec<u8> {
    let p = assets_dir().join(format!("caddy-{arch}.tar"));
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/fetch-test-assets (scripts/test does)", p.display()))
}

/// The ingress proxy's image (issue 32): busybox, and Debian's caddy as `/usr/bin/caddy` in a
/// layer of its own, for the platforms of `archs` (OCI names: `amd64`, `arm64`, `arm`).
pub fn caddy_layout(dir: &Path, tag: &str, archs: &[&str]) -> Digest {
    let l = Layout::new(dir);
    let manifests = PLATFORMS
        .iter()
        .filter(|(arch, _, _)| archs.contains(arch))
        .map(|(arch, variant, deb)| {
            l.image(arch, *variant, &[busybox_layer(deb), caddy_layer(deb)], &["/usr/bin/caddy", "run"])
        })
        .collect();
    l.finish(tag, manifests, true)
}

/// Pushes an OCI layout to a registry with skopeo (an independent client).
pub fn push(layout: &Path, tag: &str, dest: &str) {
    push_from(None, layout, tag, dest)
}

/// Pushes with skopeo run inside network namespace `ns` (if given).
pub fn push_from(ns: Option<&str>, layout: &Path, tag: &str, dest: &str) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "skopeo"]);
            c
        }
        None => std::process::Command::new("skopeo"),
    };
    let out = cmd
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false", "--preserve-digests"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("run skopeo (apt-get install skopeo; scripts/test does)");
    assert!(out.status.success(), "skopeo copy to {dest} failed: {}", String::from_utf8_lossy(&out.stderr));
}
