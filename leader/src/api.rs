//! Requests from the CLI and from joining agents: who may do what, and what it does to the store.

use crate::controllers::run::DesiredSets;
use crate::nodes::NodeRegistry;
use crate::store::{Expect, Store};
use crate::tokens::{self, store_error};
use bramble_proto::model::{Node, NodeInfo, NodeView, ObjectMeta};
use bramble_proto::names::{check_dns_subdomain, check_label_key, check_label_value};
use bramble_proto::wire::{ApiError, ErrorCode, Request, Response};
use bramble_transport::pki::Ca;
use bramble_transport::Identity;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub fn node_key(name: &str) -> String {
    format!("/nodes/{name}")
}

/// What the API handlers share.
pub struct Api {
    pub store: Arc<dyn Store>,
    pub ca: Ca,
    pub registry: Arc<NodeRegistry>,
    /// Each node's desired set, as the replica controller last computed it (`None` until its
    /// first pass: no session is told anything before that).
    pub desired: tokio::sync::watch::Sender<Option<Arc<DesiredSets>>>,
    /// Asks the replica controller for a pass now.
    pub kick: tokio::sync::Notify,
    /// Live detail per replica (e.g. pull progress), in memory only.
    pub details: Mutex<HashMap<String, String>>,
    /// The platforms an image offers, learned from boards whose arch it lacked (memory only).
    pub image_platforms: Mutex<HashMap<String, Vec<bramble_images::Platform>>>,
    /// The image references each node holds, as its agent last said (memory only).
    pub node_images: Mutex<HashMap<String, std::collections::BTreeSet<String>>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

fn err(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

impl Api {
    pub fn new(store: Arc<dyn Store>, ca: Ca, registry: Arc<NodeRegistry>) -> Api {
        Api {
            store,
            ca,
            registry,
            desired: tokio::sync::watch::Sender::new(None),
            kick: tokio::sync::Notify::new(),
            details: Mutex::new(HashMap::new()),
            image_platforms: Mutex::new(HashMap::new()),
            node_images: Mutex::new(HashMap::new()),
        }
    }

    /// Handles one request from a peer with `identity` (None: no client certificate).
    pub fn handle(&self, identity: Option<&Identity>, request: Request) -> Response {
        match self.dispatch(identity, request) {
            Ok(r) => r,
            Err(e) => Response::Error(e),
        }
    }

    fn dispatch(&self, identity: Option<&Identity>, request: Request) -> Result<Response, ApiError> {
        if let Request::Join { token, node_name, csr_pem, info } = request {
            return self.join(&token, &node_name, &csr_pem, info).inspect_err(|e| {
                let name = if check_dns_subdomain(&node_name).is_ok() { node_name.as_str() } else { "<invalid>" };
                self.record(name, "JoinRefused", e.message.clone());
            });
        }
        match identity {
            None => {
                return Err(err(
                    ErrorCode::Unauthenticated,
                    "a client certificate signed by this cluster's CA is required (only joining works without one)",
                ))
            }
            Some(Identity::Admin(_) | Identity::Leader) => {}
            Some(id @ Identity::Node(_)) => {
                return Err(err(ErrorCode::PermissionDenied, format!("{id} may not make admin requests")));
            }
        }
        match request {
            Request::Join { .. } => unreachable!("handled above"),
            Request::GetNodes => Ok(Response::Nodes(self.node_views()?)),
            Request::GetNode { name } => {
                let node = self.load_node(&name)?.0;
                let events = self.registry.events_for(&format!("node/{name}"));
                Ok(Response::Node { node: Box::new(self.view(node)), events })
            }
            Request::LabelNode { name, set, remove } => self.label(&name, set, remove),
            Request::SetCordon { name, cordoned } => {
                let changed = self.update_node(&name, |n| {
                    let changed = n.unschedulable != cordoned;
                    n.unschedulable = cordoned;
                    Ok(changed)
                })?;
                let verb = if cordoned { "cordoned" } else { "uncordoned" };
                if changed {
                    self.record(
                        &name,
                        if cordoned { "NodeCordoned" } else { "NodeUncordoned" },
                        format!("node {verb} by an admin"),
                    );
                }
                Ok(Response::Done(format!("node/{name} {verb}{}", if changed { "" } else { " (no change)" })))
            }
            Request::Apply { apps, services } => Ok(Response::Applied(crate::apps::apply(self, apps, services)?)),
            Request::GetApps => Ok(Response::Apps(crate::apps::apps(self)?)),
            Request::GetServices => Ok(Response::Services(crate::apps::services(self)?)),
            Request::Delete { apps, services } => Ok(Response::Done(crate::apps::delete(self, apps, services)?)),
            Request::GetReplicas { app } => Ok(Response::Replicas(crate::replicas::list(self, app.as_deref())?)),
            Request::GetApp { name } => crate::replicas::describe_app(self, &name),
            Request::GetReplica { name } => crate::replicas::describe_replica(self, &name),
            Request::Scale { app, replicas, expect_generation } => {
                Ok(Response::Done(crate::replicas::scale(self, &app, replicas, expect_generation)?))
            }
            Request::GetEvents { since_ms } => Ok(Response::Events(self.registry.events_since(since_ms))),
            Request::Logs(_) | Request::Image { .. } => {
                Err(err(ErrorCode::InvalidArgument, "this request is relayed to an agent on a stream of its own"))
            }
            Request::CreateToken { ttl_secs } => {
                let (token, expires_ms) = tokens::create(
                    self.store.as_ref(),
                    &self.ca.fingerprint(),
                    Duration::from_secs(ttl_secs),
                    now_ms(),
                )?;
                Ok(Response::Token { token: token.to_string(), expires_ms })
            }
        }
    }

    fn record(&self, name: &str, reason: &str, message: String) {
        self.registry.node_event(name, reason, message, now_ms());
    }

    fn join(&self, token: &str, node_name: &str, csr_pem: &str, info: NodeInfo) -> Result<Response, ApiError> {
        tokens::verify(self.store.as_ref(), &self.ca.fingerprint(), token, now_ms())?;
        check_dns_subdomain(node_name)
            .map_err(|e| err(ErrorCode::InvalidArgument, format!("join refused: node {e}")))?;
        let (cert_pem, key_fp) = self
            .ca
            .sign_node_csr(csr_pem, node_name)
            .map_err(|e| err(ErrorCode::InvalidArgument, format!("join refused: {e}")))?;
        let key = node_key(node_name);
        match self.store.get(&key).map_err(store_error)? {
            Some(kv) => {
                let existing: Node = decode_node(&kv.value)?;
                if existing.key_fingerprint != key_fp {
                    return Err(err(
                        ErrorCode::Conflict,
                        format!(
                            "join refused: node name {node_name:?} already belongs to another board (a different key); \
                             choose another name, or remove the old node first"
                        ),
                    ));
                }
                // The same board joining again (e.g. it lost its certificate but kept its key).
            }
            None => {
                let node = Node {
                    meta: ObjectMeta { name: node_name.to_string(), generation: 1, revision: 0, created_ms: now_ms() },
                    key_fingerprint: key_fp,
                    labels: Default::default(),
                    taints: Vec::new(),
                    unschedulable: false,
                    info,
                    pod_cidr: None,
                };
                let value = serde_json::to_vec(&node).expect("node serialises");
                self.store.put(&key, &value, Expect::Absent).map_err(|e| match e {
                    crate::store::StoreError::Conflict { .. } => err(
                        ErrorCode::Conflict,
                        format!("join refused: node name {node_name:?} was taken at the same moment"),
                    ),
                    e => store_error(e),
                })?;
                self.record(node_name, "NodeJoined", "the node joined the cluster".into());
            }
        }
        Ok(Response::Joined { node_name: node_name.to_string(), cert_pem, ca_pem: self.ca.cert_pem().to_string() })
    }

    fn label(
        &self,
        name: &str,
        set: std::collections::BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<Response, ApiError> {
        for (k, v) in &set {
            check_label_key(k).map_err(|e| err(ErrorCode::InvalidArgument, e.to_string()))?;
            check_label_value(v).map_err(|e| err(ErrorCode::InvalidArgument, e.to_string()))?;
        }
        self.update_node(name, |n| {
            for k in &remove {
                if n.labels.remove(k).is_none() {
                    let msg = if n.info.labels.contains_key(k) {
                        format!("label {k:?} on node {name} comes from the agent's config file; change it there")
                    } else {
                        format!("node {name} has no label {k:?}")
                    };
                    return Err(err(ErrorCode::InvalidArgument, msg));
                }
            }
            let before = n.labels.clone();
            n.labels.extend(set.clone());
            Ok(before != n.labels || !remove.is_empty())
        })?;
        let mut parts: Vec<String> = set.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.extend(remove.iter().map(|k| format!("{k}-")));
        self.record(name, "NodeLabeled", format!("labels changed: {}", parts.join(" ")));
        Ok(Response::Done(format!("node/{name} labeled")))
    }

    pub fn load_node(&self, name: &str) -> Result<(Node, u64), ApiError> {
        let kv = self
            .store
            .get(&node_key(name))
            .map_err(store_error)?
            .ok_or_else(|| err(ErrorCode::NotFound, format!("node {name:?} not found")))?;
        let mut node = decode_node(&kv.value)?;
        node.meta.revision = kv.mod_revision;
        Ok((node, kv.mod_revision))
    }

    /// Read-modify-write with compare-and-swap, retried when someone else wrote in between.
    /// `change` returns whether it changed anything; nothing is written if not.
    pub fn update_node(
        &self,
        name: &str,
        change: impl Fn(&mut Node) -> Result<bool, ApiError>,
    ) -> Result<bool, ApiError> {
        for _ in 0..5 {
            let (mut node, rev) = self.load_node(name)?;
            if !change(&mut node)? {
                return Ok(false);
            }
            node.meta.generation += 1;
            let value = serde_json::to_vec(&node).expect("node serialises");
            match self.store.put(&node_key(name), &value, Expect::Revision(rev)) {
                Ok(_) => return Ok(true),
                Err(crate::store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(err(ErrorCode::Conflict, format!("node {name} kept changing; try again")))
    }

    /// Records what an agent reports about its board; writes only if it changed.
    pub fn set_node_info(&self, name: &str, info: NodeInfo) -> Result<bool, ApiError> {
        self.update_node(name, |node| {
            let changed = node.info != info;
            node.info = info.clone();
            Ok(changed)
        })
    }

    pub fn nodes(&self) -> Result<Vec<Node>, ApiError> {
        let kvs = self.store.list("/nodes/").map_err(store_error)?;
        kvs.iter()
            .map(|kv| {
                let mut n = decode_node(&kv.value)?;
                n.meta.revision = kv.mod_revision;
                Ok(n)
            })
            .collect()
    }

    fn node_views(&self) -> Result<Vec<NodeView>, ApiError> {
        Ok(self.nodes()?.into_iter().map(|n| self.view(n)).collect())
    }

    fn view(&self, node: Node) -> NodeView {
        let live = self.registry.view(&node.meta.name, now_ms());
        NodeView {
            ready: live.ready,
            last_seen_ms: live.last_seen_ms,
            session_epoch: live.session_epoch,
            session_address: live.session_address,
            images: self
                .node_images
                .lock()
                .expect("images lock")
                .get(&node.meta.name)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
            node,
        }
    }
}

fn decode_node(bytes: &[u8]) -> Result<Node, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| err(ErrorCode::Internal, format!("stored node is corrupt: {e}")))
}
