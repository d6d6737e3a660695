//! Which pod subnet or virtual IP is free: the lowest one no claim holds. Pure.

use bramble_proto::network::{Cidr, ClusterNetwork};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The lowest pod subnet of the cluster CIDR not in `taken`.
pub fn free_subnet(network: &ClusterNetwork, taken: &BTreeSet<Cidr>) -> Option<Cidr> {
    (0..network.node_subnets())
        .filter_map(|i| network.cluster_cidr.subnet(network.node_prefix, i))
        .find(|c| !taken.contains(c))
}

/// The lowest address of the service CIDR not in `taken`, leaving out the block's first and
/// last (its network and broadcast addresses, which some tools refuse).
pub fn free_vip(service_cidr: &Cidr, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    (1..service_cidr.size().saturating_sub(1)).filter_map(|i| service_cidr.nth(i)).find(|ip| !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_free_one_and_none_when_all_are_taken() {
        let n = ClusterNetwork { cluster_cidr: "10.42.0.0/22".parse().unwrap(), ..Default::default() };
        let mut taken = BTreeSet::new();
        for expected in ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24", "10.42.3.0/24"] {
            let c = free_subnet(&n, &taken).unwrap();
            assert_eq!(c.to_string(), expected);
            taken.insert(c);
        }
        assert_eq!(free_subnet(&n, &taken), None, "four boards fill a /22 of /24s");
        taken.remove(&"10.42.1.0/24".parse().unwrap());
        assert_eq!(free_subnet(&n, &taken).unwrap().to_string(), "10.42.1.0/24", "a released one is given again");
        let s: Cidr = "10.43.0.0/30".parse().unwrap();
        let mut vips = BTreeSet::new();
        for expected in ["10.43.0.1", "10.43.0.2"] {
            let ip = free_vip(&s, &vips).unwrap();
            assert_eq!(ip.to_string(), expected);
            vips.insert(ip);
        }
        assert_eq!(free_vip(&s, &vips), None, "network and broadcast addresses are never given");
    }
}
