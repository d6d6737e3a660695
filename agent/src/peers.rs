//! The cluster's boards as a source of image content: a pull asks, through the leader, for what
//! another board holds before it asks any registry (`bramble_images::Peers`), and serves what its
//! own store holds when the leader asks on another board's behalf.
//!
//! The pull runs on a blocking thread; the session's QUIC connection is async: each request opens
//! a stream on the current connection and is driven with the runtime's `block_on`. Without a
//! session (no leader), no peer is asked.

use bramble_images::store::ContentStore;
use bramble_images::{Digest, ImageRef};
use bramble_proto::codec::MAX_FRAME_LEN;
use bramble_proto::wire::{Open, OpenKind, PeerReply, PeerRequest, PROTOCOL_VERSION};
use bramble_transport::quic::{read_frame, write_frame};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::info;

/// How long a pull waits while another board fetches the same image for the LAN.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// How long a peer's stream may stay silent.
const IDLE: Duration = Duration::from_secs(30);

/// The current session's connection, set by the session while it runs.
pub type Slot = Arc<Mutex<Option<quinn::Connection>>>;

pub struct LeaderPeers {
    pub slot: Slot,
    pub rt: tokio::runtime::Handle,
    /// Boards whose copy of a blob did not match: not asked for it again.
    bad: Mutex<BTreeMap<Digest, BTreeSet<String>>>,
}

impl std::fmt::Debug for LeaderPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderPeers").field("connected", &self.conn().is_some()).finish_non_exhaustive()
    }
}

impl LeaderPeers {
    pub fn new(slot: Slot, rt: tokio::runtime::Handle) -> Self {
        LeaderPeers { slot, rt, bad: Mutex::new(BTreeMap::new()) }
    }

    fn conn(&self) -> Option<quinn::Connection> {
        self.slot.lock().expect("peer slot").clone()
    }

    /// Opens a stream, sends `req`, reads the reply; the stream's rest (a blob) is the caller's.
    fn ask(&self, req: PeerRequest) -> Result<(PeerReply, quinn::RecvStream), String> {
        let conn = self.conn().ok_or("no session with a leader")?;
        self.rt.block_on(async move {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let open = Open { version: PROTOCOL_VERSION, kind: OpenKind::Peer(req) };
            write_frame(&mut send, &open).await.map_err(|e| e.to_string())?;
            let _ = send.finish();
            let reply = tokio::time::timeout(MAX_WAIT + IDLE, read_frame::<PeerReply>(&mut recv, MAX_FRAME_LEN))
                .await
                .map_err(|_| "the leader did not answer".to_string())?
                .map_err(|e| e.to_string())?
                .ok_or("the leader closed the stream")?;
            Ok((reply, recv))
        })
    }
}

impl bramble_images::Peers for LeaderPeers {
    fn resolve(&self, image: &ImageRef) -> Option<(Digest, String)> {
        let (reply, _) = self.ask(PeerRequest::Resolve { reference: image.as_str().to_string() }).ok()?;
        match reply {
            PeerReply::Found { from, digest: Some(d), .. } => d.parse().ok().map(|d| (d, from)),
            _ => None,
        }
    }

    fn blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        size: u64,
        layer: bool,
        sink: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<String, String> {
        let not_from: Vec<String> =
            self.bad.lock().expect("bad peers").get(digest).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        let req = PeerRequest::Blob {
            reference: image.as_str().to_string(),
            digest: digest.to_string(),
            size,
            not_from,
            layer,
        };
        // While another board fetches this image for the LAN, its copy is waited for.
        let started = Instant::now();
        let mut said = false;
        let (reply, mut recv) = loop {
            match self.ask(req.clone())? {
                (PeerReply::Wait { fetcher }, _) if started.elapsed() < MAX_WAIT => {
                    if !said {
                        info!(image = %image, "{fetcher} is fetching it for the LAN: waiting for its copy");
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
                answer => break answer,
            }
        };
        let (from, expected) = match reply {
            PeerReply::Found { from, size: n, .. } => (from, n),
            other => return Err(format!("{other:?}")),
        };
        if size > 0 && expected != size {
            return Err(format!("board {from} has {expected} bytes of it, not {size}"));
        }
        let mut hashed = bramble_images::digest::HashingWriter::new(sink);
        let mut buf = vec![0u8; 64 << 10];
        let copied: Result<(), String> = self.rt.block_on(async {
            loop {
                let n = tokio::time::timeout(IDLE, recv.read(&mut buf))
                    .await
                    .map_err(|_| format!("board {from} went silent"))?
                    .map_err(|e| e.to_string())?;
                let Some(n) = n else { return Ok(()) };
                if hashed.count() + n as u64 > expected {
                    return Err(format!("board {from} sent more than {expected} bytes"));
                }
                hashed.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                progress(hashed.count());
            }
        });
        copied?;
        let (_, actual, count) = hashed.finish();
        if &actual != digest || count != expected {
            info!(blob = %digest, "board {from} sent a copy that does not match: not asked for it again");
            self.bad.lock().expect("bad peers").entry(digest.clone()).or_default().insert(from.clone());
            return Err(format!("board {from} sent a corrupt copy ({actual}, {count} bytes)"));
        }
        Ok(from)
    }
}

/// What this board answers for another (the leader asks): only what the named image's record in
/// its store names, and only when the image is whole here.
pub fn serve(store: &ContentStore, req: &PeerRequest) -> (PeerReply, Option<std::fs::File>) {
    let not_here = (PeerReply::NotHere, None);
    let (reference, digest) = match req {
        PeerRequest::Resolve { reference } => (reference, None),
        PeerRequest::Blob { reference, digest, .. } => (reference, Some(digest)),
    };
    let Ok(Some(record)) = store.image(reference) else { return not_here };
    if !record.blobs().all(|d| store.has_blob(d)) {
        return not_here;
    }
    match digest {
        None => {
            let top = record.index_digest.clone().unwrap_or_else(|| record.manifest_digest.clone());
            (PeerReply::Found { from: String::new(), digest: Some(top.to_string()), size: 0 }, None)
        }
        Some(d) => {
            let Ok(d) = d.parse::<Digest>() else { return not_here };
            if !record.blobs().any(|b| *b == d) {
                return not_here;
            }
            let Ok(f) = std::fs::File::open(store.blob_path(&d)) else { return not_here };
            let Ok(md) = f.metadata() else { return not_here };
            (PeerReply::Found { from: String::new(), digest: None, size: md.len() }, Some(f))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_images::store::{ImageRecord, LayerRecord};

    #[test]
    fn a_holder_serves_only_what_the_named_images_record_names() {
        let t = tempfile::tempdir().unwrap();
        let store = ContentStore::open(t.path()).unwrap();
        let blob = |b: &[u8]| {
            let d = Digest::of(b);
            store.write_blob(&d, b).unwrap();
            d
        };
        let (manifest, config, layer) = (blob(b"manifest"), blob(b"config"), blob(b"layer bytes"));
        let other = blob(b"another image's private layer");
        store
            .put_image(&ImageRecord {
                reference: "reg.lan/web:1".into(),
                index_digest: None,
                manifest_digest: manifest.clone(),
                config_digest: config,
                platform: "linux/amd64".into(),
                layers: vec![LayerRecord {
                    digest: layer.clone(),
                    media_type: bramble_images::oci::OCI_LAYER_GZIP.into(),
                    size: 11,
                    diff_id: Digest::of(b"x"),
                }],
                created_ms: 0,
            })
            .unwrap();
        let ask = |reference: &str, digest: &Digest| {
            let req = PeerRequest::Blob {
                reference: reference.into(),
                digest: digest.to_string(),
                size: 0,
                not_from: vec![],
                layer: false,
            };
            serve(&store, &req)
        };
        match ask("reg.lan/web:1", &layer) {
            (PeerReply::Found { size: 11, .. }, Some(_)) => {}
            other => panic!("{:?}", other.0),
        }
        assert_eq!(ask("reg.lan/web:1", &other).0, PeerReply::NotHere, "not this image's");
        assert_eq!(ask("reg.lan/other:1", &other).0, PeerReply::NotHere, "no such image here");
        let bad = PeerRequest::Blob {
            reference: "reg.lan/web:1".into(),
            digest: "../../etc/passwd".into(),
            size: 0,
            not_from: vec![],
            layer: false,
        };
        assert_eq!(serve(&store, &bad).0, PeerReply::NotHere);
        let resolved = serve(&store, &PeerRequest::Resolve { reference: "reg.lan/web:1".into() }).0;
        assert_eq!(resolved, PeerReply::Found { from: String::new(), digest: Some(manifest.to_string()), size: 0 });
        // An image missing a blob is not served at all.
        std::fs::remove_file(store.blob_path(&layer)).unwrap();
        assert_eq!(ask("reg.lan/web:1", &manifest).0, PeerReply::NotHere);
    }
}
