//! The board's network (issue 11): each pod in a network namespace on the board's bridge with an
//! address from the board's pod subnet; routes (or a vxlan device) to every other board's pods;
//! services and host ports as nftables DNAT in a table of its own; cluster DNS on the bridge.
//!
//! ```text
//! link.rs       links, addresses, routes, neighbours over rtnetlink (messages built here)
//! netns.rs      named network namespaces for pods
//! ipam.rs       this board's pod addresses (persisted)
//! pods.rs       one pod's network: namespace, veth, address, resolv.conf, hosts
//! rules.rs      services and host ports as an nft table (pure: whole, or the changes)
//! nft.rs        applies nft scripts atomically
//! conntrack.rs  forgets UDP flows to endpoints that went away
//! dns.rs        cluster DNS
//! board.rs      the bridge and routes wanted, drift repaired, through the `Links` trait (netlink
//!               on a board, a recording fake in its unit tests)
//! node.rs       the board's controller thread: board.rs, rules and DNS from what the leader says,
//!               its effects through the `Kernel` trait
//! fake.rs       a recording `Kernel` for the controller's tests and the simulated cluster
//! ports.rs      which host ports a board lets apps take
//! check.rs      what the kernel must offer, for `bramble-agent check`
//! ```

pub mod board;
pub mod check;
pub mod conntrack;
pub mod dns;
pub mod fake;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod nft;
pub mod node;
pub mod pods;
pub mod ports;
pub mod rules;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{what}: {message}")]
    Netlink { what: String, message: String },
    #[error("cannot {what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("{0}")]
    Missing(String),
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Nft(String),
}
