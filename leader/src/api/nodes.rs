//! Nodes through the API: joining with a token, listing, describing, labels, cordons and
//! deletion. (What an agent reports about its board is `crate::sessions::reports::node_info`.)

use crate::error::{Error, Result};
use crate::objects::{keys, Objects};
use crate::store::{Expect, StoreError};
use bramble_proto::model::{Condition, ConditionStatus, EventReason, Node, NodeInfo, NodeView, ObjectRef};
use bramble_proto::names::{check_dns_subdomain, check_label_key, check_label_value};
use bramble_proto::time::now_ms;
use bramble_proto::wire::Response;
use std::collections::BTreeMap;

/// What the node requests use: the store, the CA (joins), readiness, what boards reported, the
/// cluster's network (pod subnets) and the replica controller's wake-up.
pub struct Nodes<'a> {
    pub objects: &'a Objects,
    pub ca: &'a bramble_transport::pki::Ca,
    pub registry: &'a crate::boards::nodes::NodeRegistry,
    pub events: &'a crate::events::Events,
    pub observed: &'a crate::boards::observed::Observed,
    pub published: &'a crate::controllers::Published,
    pub network: &'a bramble_proto::network::ClusterNetwork,
    /// How drains stand (the replica controller's last pass).
    pub drain: &'a crate::controllers::drain::Drain,
    /// How long the certificates given at join live.
    pub node_cert_lifetime: std::time::Duration,
}

impl Nodes<'_> {
    pub(super) fn join(&self, token: &str, node_name: &str, csr_pem: &str, mut info: NodeInfo) -> Result<Response> {
        crate::trust::tokens::verify(self.objects, &self.ca.fingerprint(), token, now_ms())?;
        check_dns_subdomain(node_name).map_err(|e| Error::Invalid(format!("join refused: node {e}")))?;
        let (cert_pem, key_fp) = self
            .ca
            .sign_node_csr_for(csr_pem, node_name, self.node_cert_lifetime)
            .map_err(|e| Error::Invalid(format!("join refused: {e}")))?;
        match self.objects.get::<Node>(node_name)? {
            Some(existing) if existing.value.key_fingerprint != key_fp => {
                return Err(Error::Conflict(format!(
                    "join refused: node name {node_name:?} already belongs to another board (a different key); \
                     choose another name, or remove the old node first"
                )));
            }
            // The same board joining again (e.g. it lost its certificate but kept its key).
            Some(_) => {}
            None => {
                info.sanitize();
                let node = Node::joined(node_name, key_fp, info, now_ms());
                self.objects.put(&node, Expect::Absent).map_err(|e| match e {
                    StoreError::Conflict { .. } => {
                        Error::Conflict(format!("join refused: node name {node_name:?} was taken at the same moment"))
                    }
                    e => e.into(),
                })?;
                self.events.node(node_name, EventReason::NodeJoined, "the node joined the cluster", now_ms());
            }
        }
        crate::trust::tokens::used(self.objects, token)?;
        Ok(Response::Joined { node_name: node_name.to_string(), cert_pem, ca_pem: self.ca.cert_pem().to_string() })
    }

    pub(super) fn describe_node(&self, name: &str) -> Result<Response> {
        let node = self.objects.load::<Node>(name)?.value;
        let events = self.events.about(&ObjectRef::node(name));
        Ok(Response::Node { node: Box::new(self.view(node)), events })
    }

    pub(super) fn cordon(&self, name: &str, cordoned: bool, who: &str) -> Result<Response> {
        let changed = self.objects.update::<Node>(name, |n| {
            // Uncordoned: a drain under way stops where it is.
            let changed = n.unschedulable != cordoned || (!cordoned && n.draining.is_some());
            n.unschedulable = cordoned;
            if !cordoned {
                n.draining = None;
            }
            Ok(changed)
        })?;
        self.published.kick.notify_one();
        let verb = if cordoned { "cordoned" } else { "uncordoned" };
        if changed {
            let reason = if cordoned { EventReason::NodeCordoned } else { EventReason::NodeUncordoned };
            self.events.node(name, reason, format!("node {verb} by {who}"), now_ms());
        }
        Ok(Response::Done(format!("node/{name} {verb}{}", if changed { "" } else { " (no change)" })))
    }

    /// Cordons the node and moves its replicas away one app at a time (the replica controller
    /// does it: see `controllers::plan::release_moved`); every-board apps stay unless
    /// `include_every_board`. Asked again, it changes only that choice.
    pub(super) fn drain_node(&self, name: &str, include_every_board: bool, who: &str) -> Result<Response> {
        let started = std::cell::Cell::new(false);
        self.objects.update::<Node>(name, |n| {
            let before = (n.unschedulable, n.draining.clone());
            started.set(n.draining.is_none());
            let since_ms = n.draining.as_ref().map_or_else(now_ms, |d| d.since_ms);
            let by = n.draining.as_ref().map_or_else(|| who.to_string(), |d| d.by.clone());
            n.unschedulable = true;
            n.draining = Some(bramble_proto::model::Draining { since_ms, by, include_every_board });
            Ok((n.unschedulable, n.draining.clone()) != before)
        })?;
        let started = started.get();
        if started {
            let every = if include_every_board { ", every-board apps too" } else { "" };
            self.events.node(name, EventReason::NodeDraining, format!("drain started by {who}{every}"), now_ms());
        }
        self.published.kick.notify_one();
        Ok(Response::Done(format!("node/{name} {}", if started { "draining" } else { "draining (already)" })))
    }

    pub(super) fn label(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        who: &str,
    ) -> Result<Response> {
        for (k, v) in &set {
            check_label_key(k).map_err(|e| Error::Invalid(e.to_string()))?;
            check_label_value(v).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        self.objects.update::<Node>(name, |n| {
            for k in &remove {
                if n.labels.remove(k).is_none() {
                    let board = k.strip_prefix(bramble_proto::model::BOARD_LABELS);
                    let msg = if board.is_some_and(|b| n.info.labels.contains_key(b)) {
                        format!("label {k:?} on node {name} comes from the agent's config file; change it there")
                    } else {
                        format!("node {name} has no label {k:?}")
                    };
                    return Err(Error::Invalid(msg));
                }
            }
            let before = n.labels.clone();
            n.labels.extend(set.clone());
            Ok(before != n.labels || !remove.is_empty())
        })?;
        let mut parts: Vec<String> = set.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.extend(remove.iter().map(|k| format!("{k}-")));
        self.events.node(
            name,
            EventReason::NodeLabeled,
            format!("labels changed by {who}: {}", parts.join(" ")),
            now_ms(),
        );
        Ok(Response::Done(format!("node/{name} labeled")))
    }

    /// Removes a node: its pod subnet is released, its replicas are replaced elsewhere. A board
    /// that is still running is refused the next time it connects, until it joins again.
    pub(super) fn delete_node(&self, name: &str, who: &str) -> Result<String> {
        let v = self.objects.load::<Node>(name)?;
        let mut ops = vec![Objects::delete_op::<Node>(name, Expect::Revision(v.rev))];
        ops.extend(v.value.pod_cidr.map(|c| Objects::release_op(keys::subnet(&c))));
        let homes = self.objects.volume_homes()?.remove(name).unwrap_or_default();
        ops.extend(homes.iter().map(|vol| Objects::forget_volume_home_op(name, vol)));
        self.objects.txn(&ops).map_err(|e| match e {
            StoreError::Conflict { .. } => Error::Conflict(format!("node {name} changed meanwhile; try again")),
            e => e.into(),
        })?;
        let freed = v.value.pod_cidr.map(|c| format!("; pod subnet {c} released")).unwrap_or_default();
        self.events.node(name, EventReason::NodeDeleted, format!("node deleted by {who}{freed}"), now_ms());
        if let Some(conn) = self.registry.connection(name) {
            conn.close(quinn::VarInt::from_u32(3), b"node deleted");
        }
        self.published.kick.notify_one();
        Ok(format!("node/{name} deleted{freed}"))
    }

    pub(super) fn node_views(&self) -> Result<Vec<NodeView>> {
        Ok(self.objects.list::<Node>()?.into_iter().map(|v| self.view(v.value)).collect())
    }

    fn view(&self, node: Node) -> NodeView {
        let live = self.registry.view(&node.meta.name, now_ms());
        let mut ready = live.ready;
        // A board without a pod subnet runs no pods: not ready, and why.
        if node.pod_cidr.is_none() && ready.status == ConditionStatus::True {
            ready.status = ConditionStatus::False;
            ready.reason = "NoPodSubnet".into();
            let held = self.objects.claims(keys::SUBNETS).map(|c| c.len() as u64).unwrap_or(0);
            ready.message = if held >= self.network.node_subnets() {
                crate::network::out_of_subnets(self.network)
            } else {
                "waiting for a pod subnet from the leader".into()
            };
        }
        let conditions = node
            .info
            .network_problem
            .iter()
            .map(|p| Condition {
                kind: "NetworkUnavailable".into(),
                status: ConditionStatus::True,
                reason: p.reason.clone(),
                message: p.message.clone(),
                last_transition_ms: p.since_ms,
            })
            .collect();
        let mut conditions: Vec<Condition> = conditions;
        if let Some(d) = &node.draining {
            let (reason, message) = match self.drain.board(&node.meta.name) {
                Some(crate::controllers::plan::DrainStatus::Moving(m)) => ("Moving", m),
                Some(crate::controllers::plan::DrainStatus::Blocked(m)) => ("Blocked", m),
                Some(crate::controllers::plan::DrainStatus::Drained(m)) => ("Drained", m),
                None => ("Starting", "the replica controller has not looked yet".to_string()),
            };
            conditions.push(Condition {
                kind: "Draining".into(),
                status: ConditionStatus::True,
                reason: reason.into(),
                message,
                last_transition_ms: d.since_ms,
            });
        }
        NodeView {
            conditions,
            ready,
            last_seen_ms: live.last_seen_ms,
            session_epoch: live.session_epoch,
            session_address: live.session_address,
            link: live.link,
            images: self.observed.node_images(&node.meta.name).into_iter().collect(),
            node,
        }
    }
}
