//! The cluster's network on the leader: the settings chosen at init (kept in the store), pod
//! subnets for boards and virtual IPs for services (claims in the store, so two never share
//! one), the endpoints of every service, and what each board is told.
//!
//! ```text
//! alloc.rs      which subnet or VIP is free (pure)
//! endpoints.rs  services + apps + replicas → each service's endpoints (pure)
//! view.rs       the network as boards see it, and the delta a session sends (pure)
//! ```

pub mod alloc;
pub mod endpoints;
pub mod view;

use crate::error::{Error, Result};
use crate::objects::{keys, Objects};
use crate::store::Expect;
use bramble_proto::network::ClusterNetwork;

/// Records the network on the first start; later refuses a config that changed it.
pub fn ensure_settings(objects: &Objects, configured: &ClusterNetwork) -> Result<()> {
    match objects.get_at::<ClusterNetwork>(keys::CLUSTER_NETWORK)? {
        None => {
            objects.put_at(keys::CLUSTER_NETWORK, configured, Expect::Absent)?;
            Ok(())
        }
        Some(stored) if stored == *configured => Ok(()),
        Some(stored) => Err(Error::Invalid(format!(
            "leader.toml's [network] differs from the one this cluster was created with \
             (cluster_cidr {}, service_cidr {}, node_prefix {}, domain {}, backend {}): addresses already \
             given out depend on it; put those values back, or create a new cluster",
            stored.cluster_cidr, stored.service_cidr, stored.node_prefix, stored.domain, stored.backend
        ))),
    }
}

/// Gives a pod subnet to every node that lacks one, each with a claim in the same transaction
/// (so two nodes never share one). A node that cannot get one says why, once.
pub fn assign_subnets(
    objects: &Objects,
    events: &crate::events::Events,
    network: &ClusterNetwork,
    now_ms: u64,
) -> Result<()> {
    use bramble_proto::model::{EventReason, Node};
    let nodes = objects.list::<Node>()?;
    if nodes.iter().all(|n| n.value.pod_cidr.is_some()) {
        return Ok(());
    }
    let mut taken: std::collections::BTreeSet<_> = nodes.iter().filter_map(|n| n.value.pod_cidr).collect();
    for v in nodes.into_iter().filter(|n| n.value.pod_cidr.is_none()) {
        let name = v.value.meta.name.clone();
        let Some(cidr) = alloc::free_subnet(network, &taken) else {
            let told = events.about(&bramble_proto::model::ObjectRef::node(&name)).last().map(|e| e.reason.clone());
            if told != Some(EventReason::NoPodSubnet) {
                events.node(&name, EventReason::NoPodSubnet, out_of_subnets(network), now_ms);
            }
            continue;
        };
        let mut node = v.value;
        node.pod_cidr = Some(cidr);
        let ops = [Objects::claim_op(keys::subnet(&cidr), &name), Objects::put_op(&node, Expect::Revision(v.rev))];
        match objects.txn(&ops) {
            Ok(_) => {
                taken.insert(cidr);
                events.node(&name, EventReason::PodSubnet, format!("pod subnet {cidr}"), now_ms);
            }
            // Changed meanwhile (or the subnet was just claimed): the next pass tries again.
            Err(crate::store::StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Why a node has no pod subnet, with what to do.
pub fn out_of_subnets(network: &ClusterNetwork) -> String {
    format!(
        "no pod subnet left: {} holds {} blocks of /{} and every one is taken; delete boards that are gone \
         (bramble delete node NAME) or create the cluster with a larger --cluster-cidr",
        network.cluster_cidr,
        network.node_subnets(),
        network.node_prefix
    )
}

#[cfg(test)]
mod tests;
