//! Streams the leader opens on the agent's session connection: logs, the image store
//! (`bramble image ls|rm|import --node`), `bramble exec` and `bramble volume ls|rm`.

use crate::config::AgentConfig;
use bramble_images::import::{import, ImportOptions};
use bramble_images::rootfs::Rootfses;
use bramble_images::store::ContentStore;
use bramble_images::{gc, Progress};
use bramble_proto::codec::MAX_FRAME_LEN;
use bramble_proto::quantity::human_bytes;
use bramble_proto::wire::{AgentRequest, ApiError, ErrorCode, ImageInfo, ImageOp, Response, VolumeOp};
use bramble_transport::quic::{read_frame, write_frame};
use quinn::{RecvStream, SendStream};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The largest archive an import accepts.
pub const MAX_IMPORT: u64 = 4 << 30;

/// What the handlers need from the agent's config.
#[derive(Debug, Clone)]
pub struct Context {
    pub log_dir: PathBuf,
    pub images_dir: PathBuf,
    pub rootfs_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Where each container's shim has its socket.
    pub shims_dir: PathBuf,
    /// The registry client the board's own pulls use (with the cluster's settings), for prefetches.
    pub client: Arc<bramble_images::registry::RegistryClient>,
    pub unpack: bramble_images::unpack::UnpackOptions,
    /// `[images] peers`: whether other boards may copy from this one.
    pub serve_peers: bool,
}

impl Context {
    pub fn new(config: &AgentConfig, client: Arc<bramble_images::registry::RegistryClient>) -> Context {
        let paths = crate::reconcile::Paths::new(&config.data_dir);
        Context {
            log_dir: paths.logs,
            images_dir: config.images_dir(),
            rootfs_dir: paths.rootfs,
            data_dir: config.data_dir.clone(),
            shims_dir: paths.shims,
            client,
            unpack: config.images.unpack_options(),
            serve_peers: config.images.peers,
        }
    }
}

pub async fn serve(ctx: Arc<Context>, mut send: SendStream, mut recv: RecvStream) {
    match read_frame::<AgentRequest>(&mut recv, MAX_FRAME_LEN).await {
        Ok(Some(AgentRequest::Logs(req))) => crate::logserve::serve(ctx.log_dir.clone(), req, send).await,
        Ok(Some(AgentRequest::Image(op))) => image(ctx, op, send, recv).await,
        Ok(Some(AgentRequest::Exec(req))) => crate::exec::serve(ctx.shims_dir.clone(), req, send, recv).await,
        Ok(Some(AgentRequest::Volume(op))) => volume(ctx, op, send).await,
        Ok(Some(AgentRequest::Pull { reference, registry })) => prefetch(ctx, reference, registry, send).await,
        Ok(Some(AgentRequest::Peer(req))) if ctx.serve_peers => peer(ctx, req, send).await,
        Ok(Some(AgentRequest::Peer(_))) => {
            let _ = write_frame(&mut send, &bramble_proto::wire::PeerReply::NotHere).await;
            let _ = send.finish();
        }
        _ => {}
    }
}

/// Another board's request for what this board's store holds (the leader relays it): the reply,
/// then a blob's bytes.
async fn peer(ctx: Arc<Context>, req: bramble_proto::wire::PeerRequest, mut send: SendStream) {
    let dir = ctx.images_dir.clone();
    let looked = tokio::task::spawn_blocking(move || match ContentStore::open(&dir) {
        Ok(store) => crate::peers::serve(&store, &req),
        Err(_) => (bramble_proto::wire::PeerReply::NotHere, None),
    })
    .await;
    let (reply, file) = looked.unwrap_or((bramble_proto::wire::PeerReply::NotHere, None));
    if write_frame(&mut send, &reply).await.is_err() {
        return;
    }
    if let Some(f) = file {
        let mut f = tokio::fs::File::from_std(f);
        let _ = tokio::io::copy(&mut f, &mut send).await;
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// A prefetch: pulls `reference` (a tag resolved again) with the registry's settings the leader
/// sent for it (for this pull only), saying how far it got every half second.
async fn prefetch(
    ctx: Arc<Context>,
    reference: String,
    registry: Option<bramble_proto::wire::SecretPayload>,
    mut send: SendStream,
) {
    let image: bramble_images::ImageRef = match reference.parse() {
        Ok(i) => i,
        Err(e) => {
            let _ = write_frame(&mut send, &error(format!("{e}"))).await;
            let _ = send.finish();
            return;
        }
    };
    let extra = registry.map(|p| {
        let held = std::collections::BTreeMap::from([(p.name, p.values.0)]);
        crate::registries::configs(&held)
    });
    let client = match extra {
        Some(extra) => Arc::new(ctx.client.with_extra(extra)),
        None => ctx.client.clone(),
    };
    let progress = Progress::default();
    let (p, c) = (progress.clone(), ctx.clone());
    let mut pull = tokio::task::spawn_blocking(move || -> Result<ImageInfo, String> {
        let store = ContentStore::open(&c.images_dir).map_err(|e| e.to_string())?;
        let arch = crate::sysinfo::arch();
        let puller =
            bramble_images::Puller { store: &store, client: &client, arch, unpack: c.unpack.clone(), peers: None };
        let record = puller.pull(&image, bramble_images::PullPolicy::Always, &p).map_err(|e| e.to_string())?;
        Ok(info(&record))
    });
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            r = &mut pull => break r.unwrap_or_else(|e| Err(e.to_string())),
            _ = tick.tick() => {
                let (done, total) = progress.totals();
                if write_frame(&mut send, &Response::Pulling { node: String::new(), done, total }).await.is_err() {
                    // The leader went: the pull goes on and its image stays.
                    return;
                }
            }
        }
    };
    let response = match result {
        Ok(i) => Response::Images(vec![i]),
        Err(e) => Response::Error(ApiError::new(ErrorCode::Unavailable, e)),
    };
    let _ = write_frame(&mut send, &response).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// `bramble volume ls|rm` (the leader has checked that no replica here uses a volume it removes).
async fn volume(ctx: Arc<Context>, op: VolumeOp, mut send: SendStream) {
    let volumes = crate::volumes::Volumes::new(&ctx.data_dir);
    let response = tokio::task::spawn_blocking(move || match op {
        VolumeOp::Ls => Response::Volumes(volumes.list()),
        VolumeOp::Rm { name } => match volumes.remove(&name) {
            Ok(freed) => Response::Done(format!("removed volume {name} (freed {})", human_bytes(freed))),
            Err(e @ crate::volumes::VolumeError::NotFound(_)) => {
                Response::Error(ApiError::new(ErrorCode::NotFound, e.to_string()))
            }
            Err(e) => error(e.to_string()),
        },
    })
    .await
    .unwrap_or_else(|e| error(e.to_string()));
    let _ = write_frame(&mut send, &response).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

fn error(message: String) -> Response {
    Response::Error(ApiError::new(ErrorCode::InvalidArgument, message))
}

async fn image(ctx: Arc<Context>, op: ImageOp, mut send: SendStream, mut recv: RecvStream) {
    let response = match op {
        ImageOp::Import { name, size } => receive_and_import(&ctx, name, size, &mut recv).await,
        op => {
            let c = ctx.clone();
            tokio::task::spawn_blocking(move || local(&c, op)).await.unwrap_or_else(|e| error(e.to_string()))
        }
    };
    let _ = write_frame(&mut send, &response).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

fn info(r: &bramble_images::ImageRecord) -> ImageInfo {
    ImageInfo {
        reference: r.reference.clone(),
        digest: r.manifest_digest.to_string(),
        platform: r.platform.to_string(),
        size: r.size(),
        layers: r.layers.len(),
    }
}

/// `ls` and `rm`, on the store directly (blocking).
fn local(ctx: &Context, op: ImageOp) -> Response {
    let result = (|| -> Result<Response, String> {
        let store = ContentStore::open(&ctx.images_dir).map_err(|e| e.to_string())?;
        match op {
            ImageOp::Ls => Ok(Response::Images(store.images().map_err(|e| e.to_string())?.iter().map(info).collect())),
            ImageOp::Rm { reference } => {
                let roots = Rootfses::new(store.clone(), &ctx.rootfs_dir);
                let leases = roots.leases();
                if leases.iter().any(|l| l.image == reference) {
                    return Err(format!("image {reference} is in use by a container on this node"));
                }
                if !store.remove_image(&reference).map_err(|e| e.to_string())? {
                    return Ok(Response::Error(ApiError::new(
                        ErrorCode::NotFound,
                        format!("image {reference} is not in this node's store"),
                    )));
                }
                let r = gc::collect(&store, &leases).map_err(|e| e.to_string())?;
                Ok(Response::Done(format!("removed {reference} (freed {})", human_bytes(r.bytes_freed))))
            }
            ImageOp::Import { .. } => unreachable!("handled by the caller"),
        }
    })();
    result.unwrap_or_else(error)
}

/// Receives the archive into a temporary file in the data dir, then imports it.
async fn receive_and_import(ctx: &Context, name: Option<String>, size: u64, recv: &mut RecvStream) -> Response {
    if size > MAX_IMPORT {
        return error(format!("the archive is {}; at most {} is accepted", human_bytes(size), human_bytes(MAX_IMPORT)));
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = TempFile(ctx.data_dir.join(format!(".import-{}-{n}.tar", std::process::id())));
    let path = tmp.0.clone();
    let received = async {
        let mut file = tokio::fs::File::create(&path).await?;
        let mut limited = tokio::io::AsyncReadExt::take(recv, size + 1);
        let n = tokio::io::copy(&mut limited, &mut file).await?;
        file.flush().await?;
        Ok::<u64, std::io::Error>(n)
    }
    .await;
    match received {
        Ok(n) if n == size => {}
        Ok(n) => return error(format!("expected {size} bytes of archive, received {n}")),
        Err(e) => return error(format!("receiving the archive: {e}")),
    }
    let dir = ctx.images_dir.clone();
    tokio::task::spawn_blocking(move || {
        let store = match ContentStore::open(&dir) {
            Ok(s) => s,
            Err(e) => return error(e.to_string()),
        };
        let result = import(&store, &tmp.0, &crate::sysinfo::arch(), &ImportOptions { name }, &Progress::default());
        drop(tmp);
        match result {
            Ok(records) => Response::Images(records.iter().map(info).collect()),
            Err(e) => error(format!("import refused: {e}")),
        }
    })
    .await
    .unwrap_or_else(|e| error(e.to_string()))
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
