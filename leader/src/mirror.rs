//! The cluster's pull-through mirror (`[mirror]` in leader.toml): for the registries it names,
//! the leader fetches what boards ask for once, keeps it in a capped cache (least recently used
//! out first) and serves it to every board through the same peer streams boards use for each
//! other (`edge/peers.rs`). Boards need no setting: they ask peers before any registry, and the
//! leader answers from its mirror when no board holds the image. It also resolves tags for boards
//! that cannot reach the registry (boards on a LAN without internet, the leader with).
//!
//! Every blob is checked against its digest on the way in (as a board's pull does) and again by
//! the board. Credentials for the upstream come from the cluster's `[[registry]]` objects.

use bramble_images::registry::RegistryClient;
use bramble_images::store::ContentStore;
use bramble_images::{Digest, ImageRef};
use bramble_proto::quantity::Memory;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// `[mirror]` in leader.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The registries mirrored (`host[:port]` as image references write them; `docker.io`).
    pub upstreams: Vec<String>,
    /// The cache (default `<data_dir>/mirror`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The most the cache holds; the least recently used blobs go first.
    #[serde(default = "default_max_size")]
    pub max_size: Memory,
}

/// Whether `s` is a registry as image references write it: a host name or address, and a port.
pub fn is_registry_host(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
        _ => (s, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
        && !host.starts_with(['-', '.']);
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

fn default_max_size() -> Memory {
    Memory(10 << 30)
}

/// One cached blob: its size and when it was last served (a counter, not a clock).
#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    used: u64,
}

#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<Digest, Entry>,
    total: u64,
    clock: u64,
}

impl Cache {
    fn touch(&mut self, d: &Digest, size: u64) {
        self.clock += 1;
        let used = self.clock;
        match self.entries.get_mut(d) {
            Some(e) => e.used = used,
            None => {
                self.entries.insert(d.clone(), Entry { size, used });
                self.total += size;
            }
        }
    }

    /// The blobs to remove so that `total` fits in `max`, oldest first, never one of `keep`.
    fn evict(&mut self, max: u64, keep: &[Digest]) -> Vec<Digest> {
        let mut order: Vec<(u64, Digest)> =
            self.entries.iter().filter(|(d, _)| !keep.contains(d)).map(|(d, e)| (e.used, d.clone())).collect();
        order.sort();
        let mut out = Vec::new();
        for (_, d) in order {
            if self.total <= max {
                break;
            }
            if let Some(e) = self.entries.remove(&d) {
                self.total -= e.size;
                out.push(d);
            }
        }
        out
    }
}

pub struct Mirror {
    config: MirrorConfig,
    store: ContentStore,
    cache: Mutex<Cache>,
    /// One fetch per blob at a time: the others wait for it.
    inflight: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// What each tag named when last asked (it is asked again after a minute).
    tags: Mutex<HashMap<String, (Digest, u64)>>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("config", &self.config).finish_non_exhaustive()
    }
}

/// How long a tag's digest is taken from the mirror's memory.
const TAG_TTL_MS: u64 = 60_000;

impl Mirror {
    /// Opens the cache (what an earlier run left counts, oldest first).
    pub fn open(config: MirrorConfig, data_dir: &std::path::Path) -> Result<Mirror, String> {
        let dir = config.dir.clone().unwrap_or_else(|| data_dir.join("mirror"));
        let store = ContentStore::open(&dir).map_err(|e| format!("mirror cache {}: {e}", dir.display()))?;
        let mut cache = Cache::default();
        let mut found: Vec<(std::time::SystemTime, Digest, u64)> = Vec::new();
        for e in std::fs::read_dir(dir.join("blobs/sha256")).into_iter().flatten().flatten() {
            let (Ok(md), Ok(d)) = (e.metadata(), format!("sha256:{}", e.file_name().to_string_lossy()).parse()) else {
                continue;
            };
            found.push((md.modified().unwrap_or(std::time::UNIX_EPOCH), d, md.len()));
        }
        found.sort();
        for (_, d, size) in found {
            cache.touch(&d, size);
        }
        Ok(Mirror { config, store, cache: Mutex::new(cache), inflight: Mutex::default(), tags: Mutex::default() })
    }

    pub fn serves(&self, image: &ImageRef) -> bool {
        self.config.upstreams.contains(&image.registry)
    }

    /// Whether blob `d` is in the cache.
    pub fn has(&self, d: &Digest) -> bool {
        self.store.has_blob(d)
    }

    /// Bytes cached now.
    pub fn cached_bytes(&self) -> u64 {
        self.cache.lock().expect("mirror cache").total
    }

    fn lock_for(&self, d: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        self.inflight.lock().expect("mirror inflight").entry(d.clone()).or_default().clone()
    }

    /// The digest `image`'s tag names now (the upstream asked at most once a minute), its
    /// document cached.
    pub async fn resolve(&self, client: Arc<RegistryClient>, image: &ImageRef, now: u64) -> Result<Digest, String> {
        if let Some(d) = image.digest.as_ref().and_then(|d| d.parse().ok()) {
            return Ok(d);
        }
        let key = image.as_str().to_string();
        if let Some((d, at)) = self.tags.lock().expect("mirror tags").get(&key).cloned() {
            if now.saturating_sub(at) < TAG_TTL_MS && self.store.has_blob(&d) {
                return Ok(d);
            }
        }
        let tag = image.tag_or_default().unwrap_or("latest").to_string();
        let (store, i) = (self.store.clone(), image.clone());
        let fetched = tokio::task::spawn_blocking(move || -> Result<Digest, String> {
            let f = client.manifest(&i, &tag).map_err(|e| e.to_string())?;
            store.write_blob(&f.digest, &f.bytes).map_err(|e| e.to_string())?;
            Ok(f.digest)
        })
        .await
        .map_err(|e| e.to_string())??;
        let size = std::fs::metadata(self.store.blob_path(&fetched)).map_or(0, |m| m.len());
        self.cache.lock().expect("mirror cache").touch(&fetched, size);
        self.tags.lock().expect("mirror tags").insert(key, (fetched.clone(), now));
        Ok(fetched)
    }

    /// Blob `digest` of `image` in the cache (fetched from the upstream if it is not, once however
    /// many boards ask): its path and size. `size` 0: a document of unknown size (a tag's index or
    /// manifest), asked of the manifests endpoint; a manifest the blobs endpoint does not know is
    /// asked there too.
    pub async fn blob(
        &self,
        client: Arc<RegistryClient>,
        image: &ImageRef,
        digest: &Digest,
        size: u64,
    ) -> Result<(PathBuf, u64), String> {
        let lock = self.lock_for(digest);
        let guard = lock.lock().await;
        if !self.store.has_blob(digest) {
            let (store, i, d) = (self.store.clone(), image.clone(), digest.clone());
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                let as_manifest = || -> Result<(), String> {
                    let f = client.manifest(&i, &d.to_string()).map_err(|e| e.to_string())?;
                    store.write_blob(&d, &f.bytes).map_err(|e| e.to_string())
                };
                if size == 0 {
                    return as_manifest();
                }
                let mut ingest = store.ingest(&d).map_err(|e| e.to_string())?;
                match client.blob(&i, &d, size, ingest.writer(), &mut |_| {}) {
                    Ok(()) => ingest.commit().map_err(|e| e.to_string()),
                    // A manifest asked by its digest and size: not every registry serves it as a blob.
                    Err(bramble_images::registry::RegistryError::NotFound { .. }) => as_manifest(),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .map_err(|e| e.to_string())??;
            tracing::info!(blob = %digest, image = %image, "mirror: fetched from {}", image.registry);
        }
        let path = self.store.blob_path(digest);
        let len = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
        let evicted = {
            let mut cache = self.cache.lock().expect("mirror cache");
            cache.touch(digest, len);
            let busy: Vec<Digest> = self.inflight.lock().expect("mirror inflight").keys().cloned().collect();
            cache.evict(self.config.max_size.0, &busy)
        };
        for d in evicted {
            let _ = std::fs::remove_file(self.store.blob_path(&d));
            tracing::debug!(blob = %d, "mirror: evicted (least recently used)");
        }
        drop(guard);
        // The lock goes once nobody waits on it.
        let mut inflight = self.inflight.lock().expect("mirror inflight");
        if inflight.get(digest).is_some_and(|l| Arc::strong_count(l) == 2) {
            inflight.remove(digest);
        }
        Ok((path, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn the_least_recently_used_go_first_and_never_one_being_fetched() {
        let mut c = Cache::default();
        c.touch(&d(1), 40);
        c.touch(&d(2), 40);
        c.touch(&d(3), 40);
        assert!(c.evict(120, &[]).is_empty(), "it fits");
        c.touch(&d(1), 40); // used again: now the newest
        c.touch(&d(4), 40);
        assert_eq!(c.evict(100, &[]), [d(2), d(3)], "the two least recently used");
        assert_eq!(c.total, 80);
        c.touch(&d(5), 100);
        // d(5) was just fetched and d(1) is being fetched: both kept, over the cap for now.
        assert_eq!(c.evict(100, &[d(1), d(5)]), [d(4)]);
        assert_eq!(c.total, 140);
        assert_eq!(c.evict(100, &[d(5)]), [d(1)], "once d(1) is done, it goes");
        assert_eq!(c.total, 100);
    }

    #[test]
    fn a_cache_reopened_counts_what_it_holds() {
        let t = tempfile::tempdir().unwrap();
        let cfg = MirrorConfig { upstreams: vec!["docker.io".into()], dir: None, max_size: Memory(1 << 20) };
        let m = Mirror::open(cfg.clone(), t.path()).unwrap();
        m.store.write_blob(&Digest::of(b"abc"), b"abc").unwrap();
        m.store.write_blob(&Digest::of(b"defg"), b"defg").unwrap();
        let again = Mirror::open(cfg, t.path()).unwrap();
        assert_eq!(again.cached_bytes(), 7);
        assert!(again.serves(&"busybox:1".parse().unwrap()));
        assert!(!again.serves(&"reg.lan/x:1".parse().unwrap()));
    }
}
