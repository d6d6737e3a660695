//! Pulling an image: resolve the reference to this board's platform, fetch what the store lacks,
//! verify every digest and every layer's diff_id, unpack each layer once, record the image.

use crate::digest::Digest;
use crate::oci::{parse_manifest_doc, Descriptor, ImageConfig, Manifest, ManifestDoc};
use crate::progress::{LayerPhase, Progress};
use crate::registry::{RegistryClient, RegistryError};
use crate::store::{ContentStore, ImageRecord, LayerRecord, StoreError};
use crate::unpack::UnpackOptions;
use bramble_proto::image_ref::ImageRef;
use bramble_proto::model::Arch;
use bramble_proto::platform::Platform;
use bramble_proto::time::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image {image} has no variant for this node ({arch}); it offers {}", list(offered))]
    NoPlatform { image: String, arch: String, offered: Vec<Platform> },
    #[error("image {image} is for {platform}, which cannot run on this node ({arch})")]
    WrongPlatform { image: String, platform: Platform, arch: String },
    #[error("image {image}: {reason}")]
    BadImage { image: String, reason: String },
}

fn list(platforms: &[Platform]) -> String {
    platforms.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
}

/// When to ask the registry even though the store has the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Use the stored image if the reference was pulled before (digest references never change).
    #[default]
    IfNotPresent,
    /// Resolve the reference again (tags move).
    Always,
}

pub struct Puller<'a> {
    pub store: &'a ContentStore,
    pub client: &'a RegistryClient,
    pub arch: Arch,
    pub unpack: UnpackOptions,
    /// The cluster's boards, asked first (none: registries only).
    pub peers: Option<&'a dyn Peers>,
}

/// Boards that may hold an image's content: asked before any registry. Whatever a peer sends is
/// checked against its digest like a registry's.
pub trait Peers: Send + Sync {
    /// The digest of the document `image` names, and the board that has it; none when no board
    /// has it (the caller then fetches it from a registry — after waiting, if another board is
    /// fetching it already).
    fn resolve(&self, image: &ImageRef) -> Option<(Digest, String)>;
    /// Streams blob `digest` of `size` bytes (0: a document of unknown size, at most what `sink` takes) of
    /// `image` into `sink` from a board that has it; returns that board. Err: none has it, or
    /// what came did not match (the sink then holds garbage: the caller starts again elsewhere).
    /// `layer`: one of the image's layers (while another board fetches the image for the LAN,
    /// a layer is waited for).
    fn blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        size: u64,
        layer: bool,
        sink: &mut dyn std::io::Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<String, String>;
}

/// Where each blob of a pull came from: `peer <board>`, `mirror <host>` or `registry <host>`
/// (absent: the store had it).
pub type Sources = std::collections::BTreeMap<Digest, String>;

/// "3 layers from peer board-2, 1 layer from registry r.lan" for a pull's layers.
pub fn summarize_sources(layers: &[LayerRecord], sources: &Sources) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for l in layers {
        *counts.entry(sources.get(&l.digest).map_or("the store", String::as_str)).or_default() += 1;
    }
    let parts: Vec<String> =
        counts.iter().map(|(from, n)| format!("{n} layer{} from {from}", if *n == 1 { "" } else { "s" })).collect();
    parts.join(", ")
}

impl Puller<'_> {
    pub fn pull(&self, image: &ImageRef, policy: PullPolicy, progress: &Progress) -> Result<ImageRecord, PullError> {
        self.pull_from(image, policy, progress, &mut Sources::new())
    }

    /// [`Puller::pull`], saying in `sources` where each blob fetched came from.
    pub fn pull_from(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
        progress: &Progress,
        sources: &mut Sources,
    ) -> Result<ImageRecord, PullError> {
        let reference = image.as_str().to_string();
        if policy == PullPolicy::IfNotPresent {
            if let Some(r) = self.store.image(&reference)? {
                if self.complete(&r) {
                    progress.set_layers(r.layers.iter().map(|l| (l.digest.clone(), l.size)));
                    for l in &r.layers {
                        progress.update(&l.digest, l.size, LayerPhase::Cached);
                    }
                    return Ok(r);
                }
            }
        }
        let bad = |reason: String| PullError::BadImage { image: reference.clone(), reason };
        let tag_or_digest =
            image.digest.clone().or_else(|| image.tag_or_default().map(str::to_string)).expect("a tag or a digest");
        // A tag is resolved by the registry (or its mirrors): a board's word for what a tag names
        // is taken only when no registry answers. A digest names its content: a peer's will do.
        let from_peer = |pulled: Option<&PullError>| {
            let (digest, from) = match &image.digest {
                Some(d) => (d.parse().ok()?, String::new()),
                None => self.peers?.resolve(image)?,
            };
            let bytes = self.peer_document(image, &digest, 0)?;
            if let Some(e) = pulled {
                tracing::warn!(image = %image, "no registry answers ({e}): the tag is resolved by {}", peer_label(&from));
            }
            Some(crate::registry::Fetched { bytes, media_type: None, digest })
        };
        let pinned = if image.digest.is_some() { from_peer(None) } else { None };
        let top = match pinned {
            Some(top) => top,
            None => match self.fetch_from_sources(image, |src| Ok(self.client.manifest(src, &tag_or_digest)?)) {
                Ok(top) => top,
                Err(e) => match from_peer(Some(&e)) {
                    Some(top) => top,
                    None => return Err(e),
                },
            },
        };
        let doc = parse_manifest_doc(top.media_type.as_deref(), &top.bytes).map_err(bad)?;
        let (index_digest, manifest_bytes, manifest_digest) = match doc {
            ManifestDoc::Index(index) => {
                let offered: Vec<Platform> = index
                    .manifests
                    .iter()
                    .map(|d| {
                        d.platform.as_ref().map(Platform::from).unwrap_or(Platform {
                            os: "?".into(),
                            architecture: "?".into(),
                            variant: None,
                        })
                    })
                    .collect();
                let Some(i) = Platform::choose(&offered, &self.arch) else {
                    return Err(PullError::NoPlatform { image: reference, arch: self.arch.to_string(), offered });
                };
                let chosen = &index.manifests[i];
                let m = match self.peer_document(image, &chosen.digest, chosen.size) {
                    Some(bytes) => crate::registry::Fetched { bytes, media_type: None, digest: chosen.digest.clone() },
                    None => self.fetch_from_sources(image, |src| {
                        Ok(self.client.manifest(src, &chosen.digest.to_string())?)
                    })?,
                };
                self.store.write_blob(&top.digest, &top.bytes)?;
                (Some(top.digest), m.bytes, m.digest)
            }
            ManifestDoc::Image(_) => (None, top.bytes, top.digest),
        };
        let manifest: Manifest = match parse_manifest_doc(None, &manifest_bytes).map_err(bad)? {
            ManifestDoc::Image(m) => m,
            ManifestDoc::Index(_) => return Err(bad("an index inside an index is not supported".into())),
        };
        let config_bytes = self.fetch_small(image, &manifest.config)?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| bad(format!("invalid image config: {e}")))?;
        if config.platform().suits(&self.arch).is_none() {
            return Err(PullError::WrongPlatform {
                image: reference,
                platform: config.platform(),
                arch: self.arch.to_string(),
            });
        }
        let layers = crate::store::layer_records(&manifest, &config).map_err(bad)?;
        progress.set_layers(layers.iter().map(|l| (l.digest.clone(), l.size)));
        let download = layers.iter().filter(|l| !self.store.has_blob(&l.digest)).map(|l| l.size).sum();
        let mut budget = crate::store::Budget::new(self.store, &self.unpack, download)?;
        for layer in &layers {
            self.fetch_layer(image, layer, progress, &mut budget, sources)?;
        }
        self.store.write_blob(&manifest_digest, &manifest_bytes)?;
        let record = ImageRecord {
            reference,
            index_digest,
            manifest_digest,
            config_digest: manifest.config.digest.clone(),
            platform: config.platform().to_string(),
            layers,
            created_ms: now_ms(),
        };
        self.store.put_image(&record)?;
        Ok(record)
    }

    /// `fetch` from each of the image's sources in turn (its registry's mirrors, then the
    /// registry): the first that works; a mirror that fails (unreachable, missing, corrupt) is
    /// logged and passed over, and the registry's own error is the one returned.
    fn fetch_from_sources<T>(
        &self,
        image: &ImageRef,
        mut fetch: impl FnMut(&ImageRef) -> Result<T, PullError>,
    ) -> Result<T, PullError> {
        for mirror in self.client.mirrors(image) {
            match fetch(&mirror) {
                Ok(v) => return Ok(v),
                Err(e) => tracing::info!(mirror = %mirror.registry, "mirror passed over: {e}"),
            }
        }
        fetch(image)
    }

    /// Whether everything a record names is in the store.
    fn complete(&self, r: &ImageRecord) -> bool {
        r.blobs().all(|d| self.store.has_blob(d)) && r.layers.iter().all(|l| self.store.has_layer(&l.diff_id))
    }

    /// A document (index, manifest, config) of at most [`crate::oci::MAX_DOCUMENT`] bytes from a
    /// peer, checked; none if no peer has it.
    fn peer_document(&self, image: &ImageRef, digest: &Digest, size: u64) -> Option<Vec<u8>> {
        let peers = self.peers?;
        let mut bytes = Vec::new();
        let mut sink = LimitedSink { inner: &mut bytes, left: crate::oci::MAX_DOCUMENT };
        match peers.blob(image, digest, size, false, &mut sink, &mut |_| {}) {
            Ok(_) if Digest::of(&bytes) == *digest => Some(bytes),
            _ => None,
        }
    }

    fn fetch_small(&self, image: &ImageRef, d: &Descriptor) -> Result<Vec<u8>, PullError> {
        if self.store.has_blob(&d.digest) {
            if let Ok(b) = self.store.read_blob(&d.digest) {
                return Ok(b);
            }
        }
        if d.size <= crate::oci::MAX_DOCUMENT {
            if let Some(bytes) = self.peer_document(image, &d.digest, d.size) {
                self.store.write_blob(&d.digest, &bytes)?;
                return Ok(bytes);
            }
        }
        if d.size > crate::oci::MAX_DOCUMENT {
            return Err(PullError::BadImage {
                image: image.to_string(),
                reason: format!("config of {} bytes is too large", d.size),
            });
        }
        let bytes = self.fetch_from_sources(image, |src| {
            let mut bytes = Vec::with_capacity(d.size as usize);
            self.client.blob(src, &d.digest, d.size, &mut bytes, &mut |_| {})?;
            Ok(bytes)
        })?;
        self.store.write_blob(&d.digest, &bytes)?;
        Ok(bytes)
    }

    fn fetch_layer(
        &self,
        image: &ImageRef,
        layer: &LayerRecord,
        progress: &Progress,
        budget: &mut crate::store::Budget,
        sources: &mut Sources,
    ) -> Result<(), PullError> {
        if self.store.has_layer(&layer.diff_id) && self.store.has_blob(&layer.digest) {
            progress.update(&layer.digest, layer.size, LayerPhase::Cached);
            return Ok(());
        }
        // A peer first: a fresh ingest, committed only when the digest matches.
        if let (Some(peers), false) = (self.peers, self.store.has_blob(&layer.digest)) {
            let mut ingest = self.store.ingest(&layer.digest)?;
            progress.update(&layer.digest, 0, LayerPhase::Downloading);
            let got = peers.blob(image, &layer.digest, layer.size, true, ingest.writer(), &mut |done| {
                progress.update(&layer.digest, done, LayerPhase::Downloading)
            });
            match got {
                Ok(from) if ingest.written() == layer.size => match ingest.commit() {
                    Ok(()) => {
                        sources.insert(layer.digest.clone(), peer_label(&from));
                    }
                    Err(e) => tracing::info!(layer = %layer.digest, "a peer's copy was passed over: {e}"),
                },
                Ok(from) => tracing::info!(layer = %layer.digest, "peer {from} sent a short copy: passed over"),
                Err(e) => tracing::debug!(layer = %layer.digest, "no peer: {e}"),
            }
        }
        if !self.store.has_blob(&layer.digest) {
            // A fresh ingest per source: what a mirror sent that did not match is gone. The layer
            // is unpacked as it arrives (on a thread of its own), made visible only once the
            // blob's digest and then the diff_id match.
            let from = self.fetch_from_sources(image, |src| {
                let mut ingest = self.store.ingest(&layer.digest)?;
                progress.update(&layer.digest, 0, LayerPhase::Downloading);
                let unpacked = self.store.has_layer(&layer.diff_id);
                let (tx, blob) = stream::channel();
                let mut opts_budget = crate::store::Budget::copy_of(budget);
                let fetched = std::thread::scope(|scope| {
                    let unpacker = (!unpacked).then(|| {
                        scope.spawn(|| self.store.unpack_layer_from_within(layer, blob, &self.unpack, &mut opts_budget))
                    });
                    let mut tee = stream::Tee { file: ingest.writer(), to: unpacker.is_some().then_some(&tx) };
                    let got = self
                        .client
                        .blob(src, &layer.digest, layer.size, &mut tee, &mut |done| {
                            progress.update(&layer.digest, done, LayerPhase::Downloading)
                        })
                        .map_err(PullError::from)
                        .and_then(|_| Ok(ingest.commit()?));
                    if got.is_ok() {
                        progress.update(&layer.digest, layer.size, LayerPhase::Unpacking);
                    }
                    // The unpacker's stream ends here: cleanly only if the digest matched.
                    tx.end(got.is_ok());
                    let unpacked = unpacker.map(|u| u.join().expect("the unpacking thread"));
                    // (The blob is stored: a layer that does not unpack is not another source's
                    // to try.)
                    got.map(|()| unpacked.and_then(Result::err))
                });
                let unpack_failed = fetched?;
                *budget = opts_budget;
                let label = if src.registry == image.registry {
                    format!("registry {}", src.registry)
                } else {
                    format!("mirror {}", src.registry)
                };
                Ok((label, unpack_failed))
            })?;
            sources.insert(layer.digest.clone(), from.0);
            if let Some(e) = from.1 {
                return Err(e.into());
            }
        }
        progress.update(&layer.digest, layer.size, LayerPhase::Unpacking);
        self.store.unpack_layer_within(layer, &self.unpack, budget)?;
        progress.update(&layer.digest, layer.size, LayerPhase::Done);
        Ok(())
    }
}

/// How a source that is not a registry is named: `peer <board>`, or what it calls itself (the
/// leader's mirror: board names have no spaces).
fn peer_label(from: &str) -> String {
    if from.contains(' ') {
        from.to_string()
    } else {
        format!("peer {from}")
    }
}

/// A sink that takes at most `left` bytes (a peer's document is read into memory).
struct LimitedSink<'a> {
    inner: &'a mut Vec<u8>,
    left: u64,
}

impl std::io::Write for LimitedSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(std::io::Error::other("a document larger than allowed"));
        }
        self.left -= buf.len() as u64;
        self.inner.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The image config of a stored image.
pub fn config(store: &ContentStore, record: &ImageRecord) -> Result<ImageConfig, PullError> {
    let bytes = store.read_blob(&record.config_digest)?;
    serde_json::from_slice(&bytes).map_err(|e| PullError::BadImage {
        image: record.reference.clone(),
        reason: format!("invalid image config: {e}"),
    })
}

/// A layer's blob handed from its download to the thread unpacking it, in chunks: the stream
/// ends cleanly only when the download says its digest matched.
mod stream {
    use std::io::{Read, Write};
    use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

    /// Chunks in flight at most (each what one read of the download gave, 64 KiB or less).
    const DEPTH: usize = 8;

    pub struct Sender(SyncSender<Result<Vec<u8>, ()>>);

    impl Sender {
        /// The end of the stream: clean (EOF) if `ok`, an error otherwise.
        pub fn end(self, ok: bool) {
            if !ok {
                let _ = self.0.send(Err(()));
            }
        }
    }

    pub struct Blob {
        rx: Receiver<Result<Vec<u8>, ()>>,
        chunk: Vec<u8>,
        at: usize,
    }

    pub fn channel() -> (Sender, Blob) {
        let (tx, rx) = sync_channel(DEPTH);
        (Sender(tx), Blob { rx, chunk: Vec::new(), at: 0 })
    }

    impl Read for Blob {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            while self.at == self.chunk.len() {
                match self.rx.recv() {
                    Ok(Ok(c)) => (self.chunk, self.at) = (c, 0),
                    Ok(Err(())) => {
                        return Err(std::io::Error::other("the layer's download failed or did not match its digest"))
                    }
                    Err(_) => return Ok(0),
                }
            }
            let n = buf.len().min(self.chunk.len() - self.at);
            buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// Writes to the blob's file and, while the unpacker takes them, to the unpacker.
    pub struct Tee<'a> {
        pub file: &'a mut dyn Write,
        pub to: Option<&'a Sender>,
    }

    impl Write for Tee<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.file.write(buf)?;
            if let Some(to) = self.to {
                // An unpacker that stopped (a bad layer) says why when joined: the download
                // goes on to its end regardless.
                if to.0.send(Ok(buf[..n].to_vec())).is_err() {
                    self.to = None;
                }
            }
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.file.flush()
        }
    }
}
