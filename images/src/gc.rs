//! Garbage collection: blobs and unpacked layers that no image and no container needs.

use crate::digest::Digest;
use crate::rootfs::Lease;
use crate::store::{remove_tree, ContentStore, StoreError};
use std::collections::HashSet;
use std::fs;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub images_removed: Vec<String>,
    pub blobs_removed: u64,
    pub layers_removed: u64,
    pub bytes_freed: u64,
}

fn tree_size(p: &Path) -> u64 {
    let Ok(md) = fs::symlink_metadata(p) else { return 0 };
    if md.is_dir() {
        fs::read_dir(p).map(|rd| rd.flatten().map(|e| tree_size(&e.path())).sum()).unwrap_or(0)
    } else {
        md.len()
    }
}

/// Removes every blob and layer that neither an image record nor a lease names.
pub fn collect(store: &ContentStore, leases: &[Lease]) -> Result<GcReport, StoreError> {
    let images = store.images()?;
    let blobs: HashSet<Digest> = images.iter().flat_map(|i| i.blobs().cloned()).collect();
    let layers: HashSet<Digest> = images
        .iter()
        .flat_map(|i| i.layers.iter().map(|l| l.diff_id.clone()))
        .chain(leases.iter().flat_map(|l| l.diff_ids.iter().cloned()))
        .collect();
    let mut report = GcReport::default();
    let blob_dir = store.root().join("blobs/sha256");
    for e in fs::read_dir(&blob_dir)
        .map_err(|source| StoreError::Io { what: "cannot read", path: blob_dir.clone(), source })?
        .flatten()
    {
        let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>() else { continue };
        if !blobs.contains(&d) {
            report.bytes_freed += e.metadata().map_or(0, |m| m.len());
            fs::remove_file(e.path()).map_err(|source| StoreError::Io {
                what: "cannot remove",
                path: e.path(),
                source,
            })?;
            report.blobs_removed += 1;
        }
    }
    let layer_dir = store.root().join("layers");
    for e in fs::read_dir(&layer_dir)
        .map_err(|source| StoreError::Io { what: "cannot read", path: layer_dir.clone(), source })?
        .flatten()
    {
        let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>() else { continue };
        if !layers.contains(&d) {
            report.bytes_freed += tree_size(&e.path());
            remove_tree(&e.path())?;
            report.layers_removed += 1;
        }
    }
    Ok(report)
}

/// Removes images no container uses, then collects garbage.
pub fn prune(store: &ContentStore, leases: &[Lease]) -> Result<GcReport, StoreError> {
    let in_use: HashSet<&str> = leases.iter().map(|l| l.image.as_str()).collect();
    let mut removed = Vec::new();
    for image in store.images()? {
        if !in_use.contains(image.reference.as_str()) && store.remove_image(&image.reference)? {
            removed.push(image.reference);
        }
    }
    let mut report = collect(store, leases)?;
    report.images_removed = removed;
    Ok(report)
}

/// Percentage of the filesystem holding `path` that is used.
pub fn disk_used_percent(path: &Path) -> Option<u8> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let total = st.blocks() as u128 * st.fragment_size() as u128;
    let avail = st.blocks_available() as u128 * st.fragment_size() as u128;
    if total == 0 {
        return None;
    }
    Some((100 - avail * 100 / total) as u8)
}

/// Images younger than this are never removed to make room (they were just pulled for a reason).
pub const MIN_AGE_MS: u64 = 2 * 60 * 1000;

/// When the disk is fuller than `high` percent, removes images no container uses, oldest first
/// and none younger than [`MIN_AGE_MS`], until it is below `low` percent or none is left.
pub fn relieve_disk(
    store: &ContentStore,
    leases: &[Lease],
    high: u8,
    low: u8,
    now_ms: u64,
) -> Result<Option<GcReport>, StoreError> {
    let used = |s: &ContentStore| disk_used_percent(s.root()).unwrap_or(0);
    if used(store) < high {
        return Ok(None);
    }
    let in_use: HashSet<&str> = leases.iter().map(|l| l.image.as_str()).collect();
    let mut images: Vec<_> = store
        .images()?
        .into_iter()
        .filter(|i| !in_use.contains(i.reference.as_str()) && now_ms.saturating_sub(i.created_ms) >= MIN_AGE_MS)
        .collect();
    images.sort_by_key(|i| i.created_ms);
    let mut total = collect(store, leases)?;
    for image in images {
        if used(store) < low {
            break;
        }
        store.remove_image(&image.reference)?;
        let r = collect(store, leases)?;
        total.images_removed.push(image.reference);
        total.blobs_removed += r.blobs_removed;
        total.layers_removed += r.layers_removed;
        total.bytes_freed += r.bytes_freed;
    }
    tracing::info!(freed = total.bytes_freed, images = ?total.images_removed, "disk above {high}%: garbage collected");
    Ok(Some(total))
}
