//! Requests the leader relays to an agent on a stream of the agent's session connection:
//! `bramble logs` (each replica's agent sends its output), `bramble image … --node`,
//! `bramble exec` and `bramble volume ls|rm`.

use bramble_proto::codec::MAX_FRAME_LEN;
use bramble_proto::model::{Node, Replica, ReplicaPhase};
use bramble_proto::wire::{
    AgentLogRequest, AgentRequest, ApiError, ErrorCode, ExecOutput, ExecRequest, ImageOp, LogFrame, LogRequest,
    Response, VolumeOp,
};
use bramble_transport::quic::{read_frame, write_frame};
use quinn::{RecvStream, SendStream};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::debug;

/// What relaying uses: the store, the boards' connections and the desired sets (which replicas
/// use a volume).
#[derive(Debug, Clone)]
pub struct Handles {
    pub objects: crate::objects::Objects,
    pub registry: Arc<crate::boards::nodes::NodeRegistry>,
    pub published: Arc<crate::controllers::Published>,
    /// Opens the secret of a registry a prefetch pulls from.
    pub keyring: Arc<crate::trust::secrets::Keyring>,
    /// The images each board holds (peers' sources).
    pub observed: Arc<crate::boards::observed::Observed>,
    /// Images being fetched for the LAN by one board.
    pub fetching: Arc<super::peers::Fetching>,
    /// The cluster's pull-through mirror, if `[mirror]` is on.
    pub mirror: Option<Arc<crate::mirror::Mirror>>,
}

async fn fail(send: &mut SendStream, code: ErrorCode, message: String) {
    let _ = write_frame(send, &Response::Error(ApiError::new(code, message))).await;
    let _ = send.finish();
}

/// The board's id of container `container` (none: the app's own) of replica `r`, if its app has
/// one by that name.
fn container_of(objects: &crate::objects::Objects, r: &Replica, container: Option<&str>) -> Result<String, ApiError> {
    let Some(c) = container else { return Ok(r.meta.name.clone()) };
    let app = objects.get::<bramble_proto::model::App>(&r.app).map_err(ApiError::from)?;
    let spec = app.map(|v| v.value.spec);
    let names: Vec<String> = spec.iter().flat_map(|s| s.units(&r.meta.name)).map(|u| u.name).collect();
    if c == r.app {
        return Ok(r.meta.name.clone());
    }
    if names.iter().any(|n| n == c) {
        return Ok(bramble_proto::manifest::container_id(&r.meta.name, c));
    }
    // The name is the caller's: only its start is quoted back.
    let shown: String = c.chars().take(64).collect();
    Err(ApiError::new(
        ErrorCode::NotFound,
        format!("app {} has no container {shown:?} (its containers: {})", r.app, names.join(", ")),
    ))
}

/// Streams the output `req` names to the CLI on `send`, until it ends (or the CLI goes away).
pub async fn serve(api: Handles, req: LogRequest, mut send: SendStream, _recv: RecvStream) {
    let a = api.clone();
    let target = req.target.clone();
    let container = req.container.clone();
    let replicas = tokio::task::spawn_blocking(move || {
        let replicas = match target.strip_prefix("app/") {
            Some(app) => a.objects.replicas(Some(app)).map_err(ApiError::from)?,
            None => match a.objects.get::<Replica>(&target) {
                Ok(Some(r)) => vec![r.value],
                Ok(None) => {
                    return Err(ApiError::new(
                        ErrorCode::NotFound,
                        format!("replica {target:?} not found (use app/NAME for every replica of an app)"),
                    ))
                }
                Err(e) => return Err(e.into()),
            },
        };
        // Each replica's container asked for (the app's own by default).
        replicas
            .into_iter()
            .map(|r| container_of(&a.objects, &r, container.as_deref()).map(|id| (r, id)))
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await;
    let replicas = match replicas {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return fail(&mut send, e.code, e.message).await,
        Err(e) => return fail(&mut send, ErrorCode::Internal, e.to_string()).await,
    };
    let (tx, mut rx) = mpsc::channel::<Response>(16);
    let mut readers = Vec::new();
    for (r, id) in replicas {
        let name = r.meta.name.clone();
        let Some(node) = r.node.clone() else {
            // Of a whole app, replicas not placed yet have nothing to show; asked by name, say so.
            if !req.target.starts_with("app/") {
                let msg = format!("replica {name} is not scheduled to a node yet, so it has no output");
                let _ = tx.send(Response::Error(ApiError::new(ErrorCode::Unavailable, msg))).await;
            }
            continue;
        };
        let Some(conn) = api.registry.connection(&node) else {
            let msg = format!("node {node} (running {name}) is not connected; its logs cannot be read now");
            let _ = tx.send(Response::Error(ApiError::new(ErrorCode::Unavailable, msg))).await;
            continue;
        };
        let ask = AgentLogRequest { replica: id, tail: req.tail, since_ms: req.since_ms, follow: req.follow };
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let result: Result<(), String> = async {
                let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
                write_frame(&mut s, &AgentRequest::Logs(ask.clone())).await.map_err(|e| e.to_string())?;
                let _ = s.finish();
                loop {
                    match read_frame::<LogFrame>(&mut r, MAX_FRAME_LEN).await.map_err(|e| e.to_string())? {
                        Some(LogFrame::Lines(lines)) => {
                            if tx.send(Response::Log { replica: ask.replica.clone(), lines }).await.is_err() {
                                return Ok(());
                            }
                        }
                        Some(LogFrame::Error(e)) => return Err(e),
                        None => return Ok(()),
                    }
                }
            }
            .await;
            if let Err(e) = result {
                let msg = format!("{}: {e}", ask.replica);
                let _ = tx.send(Response::Error(ApiError::new(ErrorCode::Unavailable, msg))).await;
            }
        }));
    }
    drop(tx);
    let mut errors = Vec::new();
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Response::Error(e)) => errors.push(e.message),
                Some(m) => if write_frame(&mut send, &m).await.is_err() { break },
                None => break,
            },
            _ = send.stopped() => { debug!("the client stopped reading logs"); break }
        }
    }
    for r in readers {
        r.abort();
    }
    let end = if errors.is_empty() {
        Response::Done(String::new())
    } else {
        Response::Error(ApiError::new(ErrorCode::Unavailable, errors.join("; ")))
    };
    let _ = write_frame(&mut send, &end).await;
    let _ = send.finish();
}

/// Relays an image request to `node`'s agent; for an import, the archive's bytes that follow the
/// request on the client's stream are copied to the agent's.
pub async fn image(api: Handles, node: String, op: ImageOp, mut send: SendStream, mut recv: RecvStream) {
    let a = api.clone();
    let n = node.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || a.objects.load::<Node>(&n)).await {
        let e = ApiError::from(e);
        return fail(&mut send, e.code, e.message).await;
    }
    let Some(conn) = api.registry.connection(&node) else {
        let msg = format!("node {node} is not connected; its image store cannot be reached now");
        return fail(&mut send, ErrorCode::Unavailable, msg).await;
    };
    let result: Result<Response, String> = async {
        let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let upload = matches!(op, ImageOp::Import { .. });
        write_frame(&mut s, &AgentRequest::Image(op)).await.map_err(|e| e.to_string())?;
        if upload {
            tokio::io::copy(&mut recv, &mut s).await.map_err(|e| format!("relaying the archive: {e}"))?;
        }
        let _ = s.finish();
        read_frame::<Response>(&mut r, MAX_FRAME_LEN)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the agent closed the stream without an answer".to_string())
    }
    .await;
    let response =
        result.unwrap_or_else(|e| Response::Error(ApiError::new(ErrorCode::Unavailable, format!("node {node}: {e}"))));
    let _ = write_frame(&mut send, &response).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// `bramble image prefetch`: each node pulls `image` at once (with its registry's settings for
/// this pull only); their progress and results come back on `send` as they go.
pub async fn prefetch(api: Handles, image: String, nodes: Vec<String>, mut send: SendStream) {
    let reference: bramble_proto::image_ref::ImageRef = match image.parse() {
        Ok(r) => r,
        Err(e) => return fail(&mut send, ErrorCode::InvalidArgument, format!("{e}")).await,
    };
    let a = api.clone();
    let host = reference.registry.clone();
    let looked = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let known: Vec<String> =
            a.objects.list::<Node>().map_err(ApiError::from)?.into_iter().map(|v| v.value.meta.name).collect();
        let missing: Vec<&String> = nodes.iter().filter(|n| !known.contains(n)).collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            return Err(ApiError::new(ErrorCode::NotFound, format!("no node {}", names.join(", "))));
        }
        let chosen = if nodes.is_empty() { known } else { nodes };
        let settings = crate::sessions::registry_payload(&a.objects, &a.keyring, &host)
            .map_err(|e| ApiError::new(ErrorCode::Unavailable, e))?;
        Ok((chosen, settings))
    })
    .await;
    let (chosen, settings) = match looked {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return fail(&mut send, e.code, e.message).await,
        Err(e) => return fail(&mut send, ErrorCode::Internal, e.to_string()).await,
    };
    let registry = settings.map(|(version, values)| bramble_proto::wire::SecretPayload {
        name: reference.registry.clone(),
        version,
        values: bramble_proto::wire::SecretValues(values),
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Response>(64);
    for node in chosen {
        let (tx, api, reference, registry) = (tx.clone(), api.clone(), image.clone(), registry.clone());
        tokio::spawn(async move {
            let pulled = |image, error| Response::Pulled { node: node.clone(), image, error };
            let Some(conn) = api.registry.connection(&node) else {
                let _ = tx.send(pulled(None, Some("not connected".into()))).await;
                return;
            };
            let result: Result<Response, String> = async {
                let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
                write_frame(&mut s, &AgentRequest::Pull { reference, registry }).await.map_err(|e| e.to_string())?;
                let _ = s.finish();
                loop {
                    match read_frame::<Response>(&mut r, MAX_FRAME_LEN).await.map_err(|e| e.to_string())? {
                        Some(Response::Pulling { done, total, .. }) => {
                            let _ = tx.send(Response::Pulling { node: node.clone(), done, total }).await;
                        }
                        Some(other) => return Ok(other),
                        None => return Err("the agent closed the stream without an answer".to_string()),
                    }
                }
            }
            .await;
            let last = match result {
                Ok(Response::Images(mut i)) if !i.is_empty() => pulled(Some(i.remove(0)), None),
                Ok(Response::Error(e)) => pulled(None, Some(e.message)),
                Ok(other) => pulled(None, Some(format!("unexpected answer: {other:?}"))),
                Err(e) => pulled(None, Some(e)),
            };
            let _ = tx.send(last).await;
        });
    }
    drop(tx);
    while let Some(frame) = rx.recv().await {
        if write_frame(&mut send, &frame).await.is_err() {
            return;
        }
    }
    let _ = write_frame(&mut send, &Response::Done(String::new())).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// Replicas the leader wants on `node` whose app mounts local volume `name`.
fn volume_users(api: &Handles, node: &str, name: &str) -> Vec<String> {
    let desired = api.published.desired.borrow().clone();
    let Some(set) = desired.as_ref().and_then(|d| d.get(node).cloned()) else { return Vec::new() };
    set.values().filter(|a| a.spec.local_volumes().any(|v| v == name)).map(|a| a.replica.clone()).collect()
}

/// Asks `node`'s agent about its local volumes.
async fn ask_volumes(api: &Handles, node: &str, op: VolumeOp) -> Response {
    let Some(conn) = api.registry.connection(node) else {
        let msg = format!("node {node} is not connected; its volumes cannot be reached now");
        return Response::Error(ApiError::new(ErrorCode::Unavailable, msg));
    };
    let result: Result<Response, String> = async {
        let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut s, &AgentRequest::Volume(op)).await.map_err(|e| e.to_string())?;
        let _ = s.finish();
        read_frame::<Response>(&mut r, MAX_FRAME_LEN)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the agent closed the stream without an answer".to_string())
    }
    .await;
    match result {
        Ok(Response::Volumes(mut list)) => {
            for v in &mut list {
                v.node = node.to_string();
                v.used_by = volume_users(api, node, &v.name);
            }
            Response::Volumes(list)
        }
        Ok(other) => other,
        Err(e) => Response::Error(ApiError::new(ErrorCode::Unavailable, format!("node {node}: {e}"))),
    }
}

/// `bramble volume ls` (one node, or every node that is connected) and `volume rm` (refused
/// while a replica the leader wants on that node mounts it).
pub async fn volume(api: Handles, node: Option<String>, op: VolumeOp, mut send: SendStream) {
    let a = api.clone();
    let nodes = tokio::task::spawn_blocking(move || match &node {
        Some(n) => a.objects.load::<Node>(n).map(|_| vec![n.clone()]),
        None => a.objects.list::<Node>().map(|l| l.into_iter().map(|v| v.value.meta.name).collect()),
    })
    .await;
    let nodes = match nodes {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            let e = ApiError::from(e);
            return fail(&mut send, e.code, e.message).await;
        }
        Err(e) => return fail(&mut send, ErrorCode::Internal, e.to_string()).await,
    };
    let response = match op {
        VolumeOp::Rm { name } => {
            let node = nodes.first().cloned().unwrap_or_default();
            let users = volume_users(&api, &node, &name);
            if users.is_empty() {
                let answer = ask_volumes(&api, &node, VolumeOp::Rm { name: name.clone() }).await;
                if matches!(answer, Response::Done(_)) {
                    // Gone from the board: its home is forgotten too.
                    let forget = crate::objects::Objects::forget_volume_home_op(&node, &name);
                    if let Err(e) = api.objects.txn(&[forget]) {
                        tracing::warn!("cannot forget volume {name} on {node}: {e}");
                    }
                }
                answer
            } else {
                let msg = format!(
                    "volume {name} on node {node} is in use by {} (delete or move the app first)",
                    users.join(", ")
                );
                Response::Error(ApiError::new(ErrorCode::Conflict, msg))
            }
        }
        VolumeOp::Ls => {
            let mut all = Vec::new();
            let mut unreachable = Vec::new();
            for n in &nodes {
                match ask_volumes(&api, n, VolumeOp::Ls).await {
                    Response::Volumes(list) => all.extend(list),
                    Response::Error(e) if nodes.len() == 1 => {
                        return fail(&mut send, e.code, e.message).await;
                    }
                    _ => unreachable.push(n.clone()),
                }
            }
            if !unreachable.is_empty() {
                tracing::debug!(?unreachable, "volume ls: nodes not connected");
            }
            Response::Volumes(all)
        }
    };
    let _ = write_frame(&mut send, &response).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// The replica `target` names (`app/NAME`: a running one of the app's, ready ones first), if it
/// runs; otherwise why not.
fn exec_target(api: &Handles, target: &str) -> Result<Replica, ApiError> {
    let running = |r: &Replica| r.phase == ReplicaPhase::Running && r.terminating_ms.is_none();
    if let Some(app) = target.strip_prefix("app/") {
        let mut all = api.objects.replicas(Some(app)).map_err(ApiError::from)?;
        all.sort_by_key(|r| (!r.serving(), r.meta.name.clone()));
        return all.into_iter().find(running).ok_or_else(|| {
            ApiError::new(ErrorCode::Unavailable, format!("app {app} has no running replica to exec in"))
        });
    }
    let r = match api.objects.get::<Replica>(target) {
        Ok(Some(r)) => r.value,
        Ok(None) => {
            let msg = format!("replica {target:?} not found (use app/NAME for one of an app's replicas)");
            return Err(ApiError::new(ErrorCode::NotFound, msg));
        }
        Err(e) => return Err(e.into()),
    };
    if !running(&r) {
        let state = if r.terminating_ms.is_some() { "Terminating".to_string() } else { format!("{:?}", r.phase) };
        let msg = format!("replica {target} is {state}, not running: exec needs a running container");
        return Err(ApiError::new(ErrorCode::Unavailable, msg));
    }
    Ok(r)
}

/// Relays `bramble exec` to the agent of the replica's board: the request, then the client's
/// input up and the command's output down, byte for byte, until the command's exit code.
pub async fn exec(api: Handles, mut req: ExecRequest, mut send: SendStream, mut recv: RecvStream) {
    let a = api.clone();
    let target = req.replica.clone();
    let container = req.container.take();
    let found = tokio::task::spawn_blocking(move || {
        let r = exec_target(&a, &target)?;
        let id = container_of(&a.objects, &r, container.as_deref())?;
        Ok::<_, ApiError>((r, id))
    });
    let (replica, id) = match found.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return fail(&mut send, e.code, e.message).await,
        Err(e) => return fail(&mut send, ErrorCode::Internal, e.to_string()).await,
    };
    let node = replica.node.clone().unwrap_or_default();
    let Some(conn) = api.registry.connection(&node) else {
        let msg = format!("node {node} (running {}) is not connected; exec cannot reach it now", replica.meta.name);
        return fail(&mut send, ErrorCode::Unavailable, msg).await;
    };
    req.replica = id;
    let result: Result<(), String> = async {
        let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut s, &AgentRequest::Exec(req)).await.map_err(|e| e.to_string())?;
        let up = async {
            let _ = tokio::io::copy(&mut recv, &mut s).await;
            let _ = s.finish();
        };
        let down = async {
            let copied = tokio::io::copy(&mut r, &mut send).await;
            let _ = send.finish();
            copied
        };
        // The command's end (the agent finishing its side) ends the relay; input may still be open.
        tokio::pin!(down);
        tokio::select! {
            copied = &mut down => copied.map(|_| ()).map_err(|e| e.to_string()),
            _ = up => down.await.map(|_| ()).map_err(|e| e.to_string()),
        }
    }
    .await;
    if let Err(e) = result {
        debug!(node = %node, "exec relay ended: {e}");
        let msg = format!("node {node}: {e}");
        let _ = write_frame(&mut send, &ExecOutput::Error(ApiError::new(ErrorCode::Unavailable, msg))).await;
        let _ = send.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Objects;
    use crate::store::{Expect, MemStore};
    use bramble_proto::manifest::parse_manifest;
    use bramble_proto::model::{App, ObjectMeta};

    #[test]
    fn a_container_named_by_the_client_is_one_of_the_apps_or_refused_without_quoting_it_whole() {
        let objects = Objects::new(Arc::new(MemStore::new()));
        let text = "[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\n\
                    [[app.containers]]\nname = \"side\"\nimage = \"reg/side:1\"\n";
        let spec = parse_manifest("a.toml", text).unwrap().apps.remove(0);
        let meta = ObjectMeta { name: "web".into(), generation: 1, revision: 0, created_ms: 0, changed_by: None };
        objects.put(&App { meta, spec, cronjob: None }, Expect::Absent).unwrap();
        let r = Replica::new("web", "web-abc-0", "abc", 0);
        assert_eq!(container_of(&objects, &r, None).unwrap(), "web-abc-0");
        assert_eq!(container_of(&objects, &r, Some("web")).unwrap(), "web-abc-0");
        assert_eq!(container_of(&objects, &r, Some("side")).unwrap(), "web-abc-0.side");
        for hostile in ["../../etc", "side/../..", ".side", "side\n"] {
            let e = container_of(&objects, &r, Some(hostile)).unwrap_err();
            assert_eq!(e.code, ErrorCode::NotFound, "{hostile:?}");
            assert!(e.message.contains("(its containers: web, side)"), "{}", e.message);
        }
        let long = "x".repeat(10_000);
        assert!(container_of(&objects, &r, Some(&long)).unwrap_err().message.len() < 200);
    }
}
