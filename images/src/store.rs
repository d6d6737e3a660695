//! The content store under the agent's data dir.
//!
//! ```text
//! images/
//!   blobs/sha256/<hex>      verified blobs: manifests, configs, compressed layers (shared)
//!   ingest/                 downloads in progress; emptied on open
//!   layers/<diff-id hex>/   unpacked layers, each once, overlayfs whiteouts inside
//!   layers/<hex>.tmp-*      unpacks in progress; removed on open
//!   refs/<sha256(ref)>.json one record per image reference
//! ```
//!
//! Everything becomes visible by a rename after it is complete and synced, so `kill -9` or a power
//! cut at any moment leaves either the old state or the new one, and the next pull finishes.

use crate::digest::{Digest, HashingWriter};
use crate::oci::{layer_compression, Compression};
use crate::unpack::{unpack, Target, UnpackError, UnpackOptions, UnpackStats};
use bramble_proto::quantity::format_duration;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("blob {digest} in the store is corrupt (it hashes to {actual})")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("layer {blob}: {source}")]
    Unpack { blob: Digest, source: UnpackError },
    #[error("layer {blob} unpacks to {actual}, but the image config says its diff_id is {expected}")]
    DiffId { blob: Digest, expected: Digest, actual: Digest },
    #[error("layer {blob}: {reason}")]
    Layer { blob: Digest, reason: String },
    #[error("image record {path} is unreadable: {reason}")]
    BadRecord { path: PathBuf, reason: String },
    #[error("{0}")]
    NoRoom(String),
}

/// Disk kept free whatever an image wants (the board needs room for its logs and state): 256 MiB,
/// or a twentieth of a smaller filesystem.
pub const RESERVE: u64 = 256 << 20;

/// Free bytes (for an unprivileged user) on the filesystem of `path`, and what stays free there.
pub fn free_and_reserve(path: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    // (statvfs's fields are 32 bits on 32-bit ARM: the casts are not idle there.)
    #[allow(clippy::unnecessary_cast)]
    let (free, total) =
        (st.blocks_available() as u64 * st.fragment_size() as u64, st.blocks() as u64 * st.fragment_size() as u64);
    Some((free, RESERVE.min(total / 20)))
}

/// Free bytes (for an unprivileged user) on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    free_and_reserve(path).map(|(f, _)| f)
}

/// What one image may still take: its cap (`UnpackOptions::max_image_bytes`) less what its
/// layers unpacked so far, and never more than the disk has free beyond [`RESERVE`].
#[derive(Debug)]
pub struct Budget {
    left: u64,
}

impl Budget {
    /// For an image whose missing blobs weigh `download` bytes: refused at once when the disk
    /// cannot take even those.
    pub fn new(store: &ContentStore, opts: &UnpackOptions, download: u64) -> Result<Budget, StoreError> {
        if let Some((free, reserve)) = free_and_reserve(&store.root) {
            if free < download.saturating_add(reserve) {
                return Err(StoreError::NoRoom(format!(
                    "{} MiB free on the image store's disk; the image's layers need {} MiB to download, \
                     and {} MiB stay free for the board (bramble-agent image prune)",
                    free >> 20,
                    download.div_ceil(1 << 20),
                    reserve.div_ceil(1 << 20)
                )));
            }
        }
        Ok(Budget { left: opts.max_image_bytes })
    }

    /// A copy, for a layer unpacked on another thread (spent there, then put back).
    pub fn copy_of(b: &Budget) -> Budget {
        Budget { left: b.left }
    }

    /// `opts` for the next layer: at most what is left of the image's cap and of the disk.
    fn layer_opts(&self, store: &ContentStore, opts: &UnpackOptions) -> UnpackOptions {
        let disk = free_and_reserve(&store.root).map_or(u64::MAX, |(f, r)| f.saturating_sub(r));
        UnpackOptions { max_bytes: opts.max_bytes.min(self.left).min(disk), ..opts.clone() }
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { what, path: path.to_path_buf(), source }
}

/// `blob` (a layer's blob) as its uncompressed tar stream.
fn decompressed(layer: &LayerRecord, blob: impl Read + 'static) -> Result<Box<dyn Read>, StoreError> {
    let compression = layer_compression(&layer.media_type)
        .map_err(|reason| StoreError::Layer { blob: layer.digest.clone(), reason })?;
    let f = BufReader::with_capacity(64 << 10, blob);
    Ok(match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Zstd => Box::new(crate::zstd::ZstdReader::new(f)),
        Compression::None => Box::new(f),
    })
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Digest of the uncompressed tar: the unpacked directory's name.
    pub diff_id: Digest,
}

/// The layers of an image: the manifest's blobs paired with the config's diff_ids.
pub fn layer_records(
    manifest: &crate::oci::Manifest,
    config: &crate::oci::ImageConfig,
) -> Result<Vec<LayerRecord>, String> {
    if manifest.layers.len() != config.rootfs.diff_ids.len() {
        return Err(format!(
            "the manifest lists {} layers but the config {} diff_ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        ));
    }
    Ok(manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(d, diff_id)| LayerRecord {
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            size: d.size,
            diff_id: diff_id.clone(),
        })
        .collect())
}

/// What the store knows about one image reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// As the user wrote it (`registry.lan:5000/team/web:1.4`).
    pub reference: String,
    /// The index or manifest list the reference pointed at, for multi-platform images.
    #[serde(default)]
    pub index_digest: Option<Digest>,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// `linux/arm/v7`.
    pub platform: String,
    pub layers: Vec<LayerRecord>,
    /// When it was pulled or imported.
    pub created_ms: u64,
}

impl ImageRecord {
    /// Compressed size of the layers.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// Every blob the image needs.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.index_digest
            .iter()
            .chain([&self.manifest_digest, &self.config_digest])
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn tmp_suffix() -> String {
    format!("{}-{}", std::process::id(), TMP_SEQ.fetch_add(1, Ordering::Relaxed))
}

/// A blob being written: becomes visible only by [`Ingest::commit`], after its digest checked out.
pub struct Ingest {
    writer: Option<HashingWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
    expected: Digest,
}

impl Ingest {
    pub fn writer(&mut self) -> &mut dyn Write {
        self.writer.as_mut().expect("not committed")
    }

    pub fn written(&self) -> u64 {
        self.writer.as_ref().map_or(0, |w| w.count())
    }

    /// Syncs, checks the digest and renames into the store.
    pub fn commit(mut self) -> Result<(), StoreError> {
        let (file, actual, _) = self.writer.take().expect("not committed").finish();
        file.sync_all().map_err(io_err("cannot sync", &self.tmp))?;
        drop(file);
        if actual != self.expected {
            let _ = fs::remove_file(&self.tmp);
            return Err(StoreError::Corrupt { digest: self.expected.clone(), actual });
        }
        fs::rename(&self.tmp, &self.dest).map_err(io_err("cannot store", &self.dest))?;
        sync_dir(self.dest.parent().expect("blob dir"))
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("cannot sync", dir))
}

/// The content store.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the store at `root` and clears what an interrupted run left half-done.
    pub fn open(root: &Path) -> Result<ContentStore, StoreError> {
        let s = ContentStore { root: root.to_path_buf() };
        for d in [s.root.join("blobs/sha256"), s.root.join("ingest"), s.root.join("layers"), s.root.join("refs")] {
            fs::create_dir_all(&d).map_err(io_err("cannot create", &d))?;
        }
        let ingest = s.root.join("ingest");
        for e in fs::read_dir(&ingest).map_err(io_err("cannot read", &ingest))?.flatten() {
            remove_tree(&e.path())
                .or_else(|_| fs::remove_file(e.path()).map_err(io_err("cannot remove", &e.path())))?;
        }
        for e in fs::read_dir(s.root.join("layers")).map_err(io_err("cannot read", &s.root))?.flatten() {
            if e.file_name().to_string_lossy().contains(".tmp-") {
                tracing::info!(path = %e.path().display(), "removing an interrupted unpack");
                remove_tree(&e.path())?;
            }
        }
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Reads a small blob (manifest, config), checking its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let bytes = fs::read(&p).map_err(io_err("cannot read", &p))?;
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(StoreError::Corrupt { digest: d.clone(), actual });
        }
        Ok(bytes)
    }

    /// Stores a small blob held in memory.
    pub fn write_blob(&self, d: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        if self.has_blob(d) {
            return Ok(());
        }
        let mut i = self.ingest(d)?;
        i.writer().write_all(bytes).map_err(io_err("cannot write", &self.root))?;
        i.commit()
    }

    /// Starts writing blob `d`.
    pub fn ingest(&self, d: &Digest) -> Result<Ingest, StoreError> {
        let tmp = self.root.join("ingest").join(format!("{}.{}", d.hex(), tmp_suffix()));
        let file = File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
        Ok(Ingest { writer: Some(HashingWriter::new(file)), tmp, dest: self.blob_path(d), expected: d.clone() })
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_dir(diff_id).is_dir()
    }

    /// Opens a layer blob as its uncompressed tar stream.
    pub fn layer_reader(&self, layer: &LayerRecord) -> Result<Box<dyn Read>, StoreError> {
        let p = self.blob_path(&layer.digest);
        let f = File::open(&p).map_err(io_err("cannot open", &p))?;
        decompressed(layer, f)
    }

    /// [`ContentStore::unpack_layer_within`] from `blob`, the layer's blob as it arrives (a
    /// download under way) rather than from the store: unpacked beside, renamed into place only
    /// once `blob` has ended, and only if the diff_id matches — `blob` must end (EOF) only after
    /// the blob's own digest matched, and fail otherwise.
    pub fn unpack_layer_from_within(
        &self,
        layer: &LayerRecord,
        blob: impl Read + 'static,
        opts: &UnpackOptions,
        budget: &mut Budget,
    ) -> Result<Option<UnpackStats>, StoreError> {
        let stats = self.unpack_from(layer, decompressed(layer, blob)?, &budget.layer_opts(self, opts))?;
        budget.left = budget.left.saturating_sub(stats.as_ref().map_or(0, |s| s.bytes));
        Ok(stats)
    }

    /// Unpacks a stored layer blob into `layers/<diff_id>` (once), checking the diff_id.
    /// [`ContentStore::unpack_layer`] within what is left of `budget`, which it then spends.
    pub fn unpack_layer_within(
        &self,
        layer: &LayerRecord,
        opts: &UnpackOptions,
        budget: &mut Budget,
    ) -> Result<Option<UnpackStats>, StoreError> {
        let stats = self.unpack_layer(layer, &budget.layer_opts(self, opts))?;
        budget.left = budget.left.saturating_sub(stats.as_ref().map_or(0, |s| s.bytes));
        Ok(stats)
    }

    pub fn unpack_layer(&self, layer: &LayerRecord, opts: &UnpackOptions) -> Result<Option<UnpackStats>, StoreError> {
        if self.layer_dir(&layer.diff_id).is_dir() {
            return Ok(None);
        }
        self.unpack_from(layer, self.layer_reader(layer)?, opts)
    }

    /// Unpacks the tar stream `tar` of `layer` into `layers/<diff_id>` (once), checking the
    /// diff_id: beside it first, synced, then renamed.
    fn unpack_from(
        &self,
        layer: &LayerRecord,
        tar: Box<dyn Read>,
        opts: &UnpackOptions,
    ) -> Result<Option<UnpackStats>, StoreError> {
        let dest = self.layer_dir(&layer.diff_id);
        if dest.is_dir() {
            return Ok(None);
        }
        let tmp = self.root.join("layers").join(format!("{}.tmp-{}", layer.diff_id.hex(), tmp_suffix()));
        fs::create_dir(&tmp).map_err(io_err("cannot create", &tmp))?;
        let started = std::time::Instant::now();
        let result = unpack(tar, &tmp, Target::Layer, opts)
            .map_err(|source| StoreError::Unpack { blob: layer.digest.clone(), source });
        let (diff_id, stats) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = remove_tree(&tmp);
                return Err(e);
            }
        };
        if diff_id != layer.diff_id {
            let _ = remove_tree(&tmp);
            return Err(StoreError::DiffId {
                blob: layer.digest.clone(),
                expected: layer.diff_id.clone(),
                actual: diff_id,
            });
        }
        // Unpacked files reach the disk before the directory becomes visible.
        let dir = File::open(&tmp).map_err(io_err("cannot open", &tmp))?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)).map_err(|e| StoreError::Io {
            what: "cannot sync",
            path: tmp.clone(),
            source: e.into(),
        })?;
        drop(dir);
        match fs::rename(&tmp, &dest) {
            Ok(()) => {}
            // Another pull unpacked the same layer meanwhile.
            Err(_) if dest.is_dir() => {
                let _ = remove_tree(&tmp);
                return Ok(None);
            }
            Err(e) => return Err(StoreError::Io { what: "cannot store", path: dest, source: e }),
        }
        sync_dir(&self.root.join("layers"))?;
        tracing::debug!(layer = %layer.diff_id, took = %format_duration(started.elapsed()), entries = stats.entries, "layer unpacked");
        Ok(Some(stats))
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        self.root.join("refs").join(format!("{}.json", Digest::of(reference.as_bytes()).hex()))
    }

    pub fn image(&self, reference: &str) -> Result<Option<ImageRecord>, StoreError> {
        let p = self.ref_path(reference);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::BadRecord { path: p, reason: e.to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { what: "cannot read", path: p, source: e }),
        }
    }

    /// Records an image; everything it names must already be in the store.
    pub fn put_image(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let p = self.ref_path(&record.reference);
        let bytes = serde_json::to_vec_pretty(record).expect("record serialises");
        bramble_proto::fsutil::write_file_atomic(&p, &bytes, 0o644).map_err(io_err("cannot store", &p))
    }

    pub fn remove_image(&self, reference: &str) -> Result<bool, StoreError> {
        let p = self.ref_path(reference);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io { what: "cannot remove", path: p, source: e }),
        }
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("cannot read", &dir))?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let b = fs::read(&p).map_err(io_err("cannot read", &p))?;
                out.push(
                    serde_json::from_slice(&b).map_err(|e| StoreError::BadRecord { path: p, reason: e.to_string() })?,
                );
            }
        }
        out.sort_by(|a: &ImageRecord, b| a.reference.cmp(&b.reference));
        Ok(out)
    }
}

/// Removes a directory tree that may hold read-only directories and whiteout devices.
pub fn remove_tree(path: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            // Read-only directories from a layer: make them writable, then try again.
            make_writable(path);
            fs::remove_dir_all(path).map_err(io_err("cannot remove", path))
        }
    }
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(md) = fs::symlink_metadata(path) {
        if md.is_dir() {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
            if let Ok(rd) = fs::read_dir(path) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn an_image_gets_its_cap_and_the_disk_less_the_reserve_never_more() {
        let t = tempfile::tempdir().unwrap();
        let store = ContentStore::open(t.path()).unwrap();
        let free = free_bytes(t.path()).unwrap();
        let e = Budget::new(&store, &UnpackOptions::default(), free).unwrap_err().to_string();
        assert!(e.contains("MiB free on the image store's disk"), "{e}");
        let opts = UnpackOptions { max_image_bytes: 1000, ..Default::default() };
        let mut b = Budget::new(&store, &opts, 0).unwrap();
        assert_eq!(b.layer_opts(&store, &opts).max_bytes, 1000);
        b.left -= 600;
        assert_eq!(b.layer_opts(&store, &opts).max_bytes, 400, "what the first layers took is gone");
        let big = UnpackOptions { max_image_bytes: u64::MAX, ..Default::default() };
        let b = Budget::new(&store, &big, 0).unwrap();
        let (_, reserve) = free_and_reserve(t.path()).unwrap();
        assert!(
            b.layer_opts(&store, &big).max_bytes <= free.saturating_sub(reserve) + (1 << 20),
            "the disk less its reserve"
        );
    }
}

#[cfg(test)]
mod zstd_tests {
    use super::*;
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn stored(store: &ContentStore, blob: &[u8], diff_id: Digest) -> LayerRecord {
        let digest = Digest::of(blob);
        store.write_blob(&digest, blob).unwrap();
        LayerRecord { digest, media_type: crate::oci::OCI_LAYER_ZSTD.into(), size: blob.len() as u64, diff_id }
    }

    #[test]
    fn a_zstd_layer_unpacks_and_its_diff_id_is_checked() {
        let t = tempfile::tempdir().unwrap();
        let store = ContentStore::open(t.path()).unwrap();
        let tar = tar_of(&[("etc/motd", b"zstd layer\n"), ("bin/x", &[7u8; 100_000])]);
        let blob = compress_to_vec(&tar[..], CompressionLevel::Fastest);
        assert!(blob.len() < tar.len() / 4, "compressed: {} of {}", blob.len(), tar.len());
        let opts = UnpackOptions { chown: false, ..Default::default() };
        let layer = stored(&store, &blob, Digest::of(&tar));
        store.unpack_layer(&layer, &opts).unwrap().expect("unpacked");
        let dir = store.layer_dir(&layer.diff_id);
        assert_eq!(fs::read(dir.join("etc/motd")).unwrap(), b"zstd layer\n");
        assert_eq!(fs::metadata(dir.join("bin/x")).unwrap().len(), 100_000);

        let wrong = stored(
            &store,
            &compress_to_vec(&tar_of(&[("a", b"b")])[..], CompressionLevel::Fastest),
            layer.diff_id.clone(),
        );
        let other = ContentStore::open(&t.path().join("other")).unwrap();
        other.write_blob(&wrong.digest, &store.read_blob(&wrong.digest).unwrap()).unwrap();
        let e = other.unpack_layer(&wrong, &opts).unwrap_err().to_string();
        assert!(e.contains("but the image config says its diff_id is"), "{e}");
        assert!(!other.has_layer(&wrong.diff_id), "nothing visible");
    }

    #[test]
    fn a_zstd_bomb_stops_at_the_layer_cap() {
        let t = tempfile::tempdir().unwrap();
        let store = ContentStore::open(t.path()).unwrap();
        let tar = tar_of(&[("big", &vec![0u8; 8 << 20])]);
        let blob = compress_to_vec(&tar[..], CompressionLevel::Fastest);
        assert!(blob.len() < 64 << 10, "a small blob: {}", blob.len());
        let opts = UnpackOptions { chown: false, max_bytes: 1 << 20, ..Default::default() };
        let layer = stored(&store, &blob, Digest::of(&tar));
        let e = store.unpack_layer(&layer, &opts).unwrap_err().to_string();
        assert!(e.contains("layer unpacks to more than 1048576 bytes"), "{e}");
        assert!(!store.has_layer(&layer.diff_id));
        let left: Vec<_> = fs::read_dir(t.path().join("layers")).unwrap().collect();
        assert!(left.is_empty(), "no temporary directory left: {left:?}");
    }
}
