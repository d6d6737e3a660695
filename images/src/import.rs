//! Images for boards that never see a registry: an OCI layout (directory or tar), an OCI archive,
//! or a `docker save` tarball, copied into the store with every digest checked.
//!
//! Tarballs are first unpacked with the same safe unpacker as layers, into a private temporary
//! directory; every path the tarball's index names is then opened without following symlinks.

use crate::digest::{Digest, HashingReader};
use crate::oci::{self, parse_manifest_doc, Descriptor, ImageConfig, Manifest, ManifestDoc};
use crate::progress::{LayerPhase, Progress};
use crate::store::{ContentStore, ImageRecord, LayerRecord, StoreError};
use crate::unpack::walk::{components, Dir};
use crate::unpack::{unpack, Target, UnpackOptions};
use bramble_proto::image_ref::ImageRef;
use bramble_proto::model::Arch;
use bramble_proto::platform::Platform;
use bramble_proto::time::now_ms;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::Deserialize;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::FromRawFd;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is not an image archive: {reason}")]
    NotAnImage { path: String, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path}: no image for this node ({arch}); it holds {}", offered.join(", "))]
    NoPlatform { path: String, arch: String, offered: Vec<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The reference to record the image under, when the archive names none (or to override it).
    pub name: Option<String>,
}

/// Imports every image in `path` (a directory or a tar, tar.gz or tar.zst file) that suits `arch`.
pub fn import(
    store: &ContentStore,
    path: &Path,
    arch: &Arch,
    opts: &ImportOptions,
    progress: &Progress,
) -> Result<Vec<ImageRecord>, ImportError> {
    let shown = path.display().to_string();
    let md = std::fs::metadata(path).map_err(|source| ImportError::Io { path: shown.clone(), source })?;
    if md.is_dir() {
        return import_dir(store, path, &shown, arch, opts, progress);
    }
    // A tarball: unpack it privately first.
    let scratch = tempdir_in(store.root())?;
    let file = File::open(path).map_err(|source| ImportError::Io { path: shown.clone(), source })?;
    let mut reader = BufReader::new(file);
    let (gz, zst) = {
        let buf =
            io::BufRead::fill_buf(&mut reader).map_err(|source| ImportError::Io { path: shown.clone(), source })?;
        (buf.starts_with(&[0x1f, 0x8b]), buf.starts_with(&crate::zstd::MAGIC))
    };
    let stream: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if zst {
        Box::new(crate::zstd::ZstdReader::new(reader))
    } else {
        Box::new(reader)
    };
    let opts_unpack = UnpackOptions { chown: false, ..Default::default() };
    unpack(stream, scratch.path(), Target::Layer, &opts_unpack)
        .map_err(|e| ImportError::NotAnImage { path: shown.clone(), reason: e.to_string() })?;
    import_dir(store, scratch.path(), &shown, arch, opts, progress)
}

/// A private temporary directory inside the store (same filesystem, cleaned on drop).
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = crate::store::remove_tree(&self.0);
    }
}

fn tempdir_in(root: &Path) -> Result<Scratch, ImportError> {
    let p = root.join("ingest").join(format!("import-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&p).map_err(|source| ImportError::Io { path: p.display().to_string(), source })?;
    Ok(Scratch(p))
}

/// Opens `rel` inside `root` without following any symlink.
fn open_inside(root: &Dir, rel: &str, shown: &str) -> Result<File, ImportError> {
    let comps = components(rel.as_bytes())
        .map_err(|r| ImportError::Invalid { path: shown.into(), reason: format!("{rel:?}: {r}") })?;
    let Some((name, parents)) = comps.split_last() else {
        return Err(ImportError::Invalid { path: shown.into(), reason: "empty path".into() });
    };
    let dir =
        root.walk(parents).map_err(|e| ImportError::Invalid { path: shown.into(), reason: format!("{rel:?}: {e}") })?;
    let fd = nix::fcntl::openat(
        Some(dir.raw()),
        name.as_os_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImportError::Invalid { path: shown.into(), reason: format!("{rel:?}: {e}") })?;
    // SAFETY: a descriptor just returned by openat, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn read_small(root: &Dir, rel: &str, shown: &str) -> Result<Vec<u8>, ImportError> {
    let mut bytes = Vec::new();
    open_inside(root, rel, shown)?
        .take(oci::MAX_DOCUMENT + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ImportError::Io { path: format!("{shown}: {rel}"), source })?;
    if bytes.len() as u64 > oci::MAX_DOCUMENT {
        return Err(ImportError::Invalid { path: shown.into(), reason: format!("{rel} is too large") });
    }
    Ok(bytes)
}

/// Copies a blob from the layout into the store, checking its digest; returns its size.
fn copy_blob(store: &ContentStore, root: &Dir, rel: &str, digest: &Digest, shown: &str) -> Result<u64, ImportError> {
    if store.has_blob(digest) {
        return Ok(std::fs::metadata(store.blob_path(digest)).map_or(0, |m| m.len()));
    }
    let mut src = open_inside(root, rel, shown)?;
    let mut ingest = store.ingest(digest)?;
    io::copy(&mut src, ingest.writer())
        .map_err(|source| ImportError::Io { path: format!("{shown}: {rel}"), source })?;
    let size = ingest.written();
    ingest.commit()?;
    Ok(size)
}

fn blob_rel(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn import_dir(
    store: &ContentStore,
    dir: &Path,
    shown: &str,
    arch: &Arch,
    opts: &ImportOptions,
    progress: &Progress,
) -> Result<Vec<ImageRecord>, ImportError> {
    let root = Dir::open_root(dir).map_err(|e| ImportError::Io { path: shown.into(), source: e.into() })?;
    if open_inside(&root, "index.json", shown).is_ok() {
        return import_oci(store, &root, shown, arch, opts, progress);
    }
    if open_inside(&root, "manifest.json", shown).is_ok() {
        return import_docker(store, &root, shown, arch, opts, progress);
    }
    Err(ImportError::NotAnImage {
        path: shown.into(),
        reason: "neither index.json (OCI layout) nor manifest.json (docker save) is in it".into(),
    })
}

/// The reference to record: the caller's name, else the archive's own.
fn reference(
    opts: &ImportOptions,
    annotations: &std::collections::BTreeMap<String, String>,
    shown: &str,
) -> Result<String, ImportError> {
    let name = annotations.get("io.containerd.image.name").cloned();
    let tag = annotations.get("org.opencontainers.image.ref.name").cloned();
    let r = match (&opts.name, name, tag) {
        (Some(n), _, Some(t)) if !n.contains(':') && !n.contains('@') && !t.contains('/') && !t.contains(':') => {
            format!("{n}:{t}")
        }
        (Some(n), _, _) => n.clone(),
        (None, Some(n), _) => n,
        (None, None, Some(t)) if t.contains('/') || t.contains(':') => t,
        _ => {
            return Err(ImportError::Invalid {
                path: shown.into(),
                reason: "the archive does not name its image; give it a name (e.g. --name registry.lan/team/web:1.4)"
                    .into(),
            })
        }
    };
    r.parse::<ImageRef>().map_err(|e| ImportError::Invalid { path: shown.into(), reason: e.to_string() })?;
    Ok(r)
}

fn import_oci(
    store: &ContentStore,
    root: &Dir,
    shown: &str,
    arch: &Arch,
    opts: &ImportOptions,
    progress: &Progress,
) -> Result<Vec<ImageRecord>, ImportError> {
    let invalid = |reason: String| ImportError::Invalid { path: shown.into(), reason };
    let index: oci::Index = serde_json::from_slice(&read_small(root, "index.json", shown)?)
        .map_err(|e| invalid(format!("index.json: {e}")))?;
    let mut out = Vec::new();
    let mut offered = Vec::new();
    for top in &index.manifests {
        let bytes = read_small(root, &blob_rel(&top.digest), shown)?;
        if Digest::of(&bytes) != top.digest {
            return Err(invalid(format!("blob {} does not match its digest", top.digest)));
        }
        let (index_digest, desc, manifest_bytes) =
            match parse_manifest_doc(Some(&top.media_type), &bytes).map_err(invalid)? {
                ManifestDoc::Index(inner) => {
                    let platforms: Vec<Platform> =
                        inner.manifests.iter().map(|d| oci::platform_of(d.platform.as_ref())).collect();
                    let Some(i) = Platform::choose(&platforms, arch) else {
                        offered.extend(platforms.iter().map(|p| p.to_string()));
                        continue;
                    };
                    let d = inner.manifests[i].clone();
                    let mb = read_small(root, &blob_rel(&d.digest), shown)?;
                    if Digest::of(&mb) != d.digest {
                        return Err(invalid(format!("blob {} does not match its digest", d.digest)));
                    }
                    copy_blob(store, root, &blob_rel(&top.digest), &top.digest, shown)?;
                    (Some(top.digest.clone()), d, mb)
                }
                ManifestDoc::Image(_) => (None, top.clone(), bytes),
            };
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| invalid(format!("manifest {}: {e}", desc.digest)))?;
        let config_bytes = read_small(root, &blob_rel(&manifest.config.digest), shown)?;
        if Digest::of(&config_bytes) != manifest.config.digest {
            return Err(invalid(format!("config {} does not match its digest", manifest.config.digest)));
        }
        let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(|e| invalid(format!("config: {e}")))?;
        if config.platform().suits(arch).is_none() {
            offered.push(config.platform().to_string());
            continue;
        }
        let name = reference(opts, &top.annotations, shown)?;
        let layers = crate::store::layer_records(&manifest, &config).map_err(invalid)?;
        progress.set_layers(layers.iter().map(|l| (l.digest.clone(), l.size)));
        let copies = layers.iter().filter(|l| !store.has_blob(&l.digest)).map(|l| l.size).sum();
        let mut budget = crate::store::Budget::new(store, &UnpackOptions::default(), copies)?;
        for l in &layers {
            progress.update(&l.digest, 0, LayerPhase::Downloading);
            copy_blob(store, root, &blob_rel(&l.digest), &l.digest, shown)?;
            progress.update(&l.digest, l.size, LayerPhase::Unpacking);
            store.unpack_layer_within(l, &UnpackOptions::default(), &mut budget)?;
            progress.update(&l.digest, l.size, LayerPhase::Done);
        }
        store.write_blob(&manifest.config.digest, &config_bytes)?;
        out.push(record(
            store,
            name,
            index_digest,
            &desc.digest,
            &manifest_bytes,
            &manifest.config.digest,
            &config,
            layers,
        )?);
    }
    if out.is_empty() {
        return Err(ImportError::NoPlatform { path: shown.into(), arch: arch.to_string(), offered });
    }
    Ok(out)
}

/// Stores the manifest and records the image (its layers and config are in the store already).
#[allow(clippy::too_many_arguments)]
fn record(
    store: &ContentStore,
    reference: String,
    index_digest: Option<Digest>,
    manifest_digest: &Digest,
    manifest_bytes: &[u8],
    config_digest: &Digest,
    config: &ImageConfig,
    layers: Vec<LayerRecord>,
) -> Result<ImageRecord, ImportError> {
    store.write_blob(manifest_digest, manifest_bytes)?;
    let record = ImageRecord {
        reference,
        index_digest,
        manifest_digest: manifest_digest.clone(),
        config_digest: config_digest.clone(),
        platform: config.platform().to_string(),
        layers,
        created_ms: now_ms(),
    };
    store.put_image(&record)?;
    Ok(record)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn import_docker(
    store: &ContentStore,
    root: &Dir,
    shown: &str,
    arch: &Arch,
    opts: &ImportOptions,
    progress: &Progress,
) -> Result<Vec<ImageRecord>, ImportError> {
    let invalid = |reason: String| ImportError::Invalid { path: shown.into(), reason };
    let entries: Vec<DockerEntry> = serde_json::from_slice(&read_small(root, "manifest.json", shown)?)
        .map_err(|e| invalid(format!("manifest.json: {e}")))?;
    let mut out = Vec::new();
    let mut offered = Vec::new();
    for entry in entries {
        let config_bytes = read_small(root, &entry.config, shown)?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| invalid(format!("{}: {e}", entry.config)))?;
        if config.platform().suits(arch).is_none() {
            offered.push(config.platform().to_string());
            continue;
        }
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(invalid(format!(
                "{} layers but {} diff_ids in the config",
                entry.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let name = match (&opts.name, entry.repo_tags.first()) {
            (Some(n), _) => n.clone(),
            (None, Some(t)) => t.clone(),
            (None, None) => return Err(invalid("the archive does not name its image; give it a name (--name)".into())),
        };
        name.parse::<ImageRef>().map_err(|e| invalid(e.to_string()))?;
        let config_digest = Digest::of(&config_bytes);
        store.write_blob(&config_digest, &config_bytes)?;
        let mut layers = Vec::new();
        let mut budget = crate::store::Budget::new(store, &UnpackOptions::default(), 0)?;
        progress.set_layers(entry.layers.iter().zip(&config.rootfs.diff_ids).map(|(_, d)| (d.clone(), 0)));
        for (rel, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
            progress.update(diff_id, 0, LayerPhase::Downloading);
            // Hash the file as it is (the blob) and, if it is compressed, its contents too.
            let mut f = open_inside(root, rel, shown)?;
            let mut magic = [0u8; 2];
            let gz = f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
            let (digest, size) = HashingReader::new(open_inside(root, rel, shown)?)
                .finish()
                .map_err(|source| ImportError::Io { path: format!("{shown}: {rel}"), source })?;
            let media_type = if gz { oci::DOCKER_LAYER_GZIP } else { oci::DOCKER_LAYER_TAR };
            copy_blob(store, root, rel, &digest, shown)?;
            let layer = LayerRecord { digest, media_type: media_type.into(), size, diff_id: diff_id.clone() };
            progress.update(diff_id, size, LayerPhase::Unpacking);
            store.unpack_layer_within(&layer, &UnpackOptions::default(), &mut budget)?;
            progress.update(diff_id, size, LayerPhase::Done);
            layers.push(layer);
        }
        // A manifest of our own, so the image has a digest like a pulled one.
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::DOCKER_MANIFEST.into()),
            config: Descriptor {
                media_type: oci::DOCKER_CONFIG.into(),
                digest: config_digest.clone(),
                size: config_bytes.len() as u64,
                platform: None,
                annotations: Default::default(),
            },
            layers: layers
                .iter()
                .map(|l| Descriptor {
                    media_type: l.media_type.clone(),
                    digest: l.digest.clone(),
                    size: l.size,
                    platform: None,
                    annotations: Default::default(),
                })
                .collect(),
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serialises");
        let manifest_digest = Digest::of(&manifest_bytes);
        out.push(record(store, name, None, &manifest_digest, &manifest_bytes, &config_digest, &config, layers)?);
    }
    if out.is_empty() {
        return Err(ImportError::NoPlatform { path: shown.into(), arch: arch.to_string(), offered });
    }
    Ok(out)
}
