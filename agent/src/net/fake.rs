//! A recording stand-in for the board's kernel and tools ([`super::node::Kernel`]): the network
//! controller's unit tests and the simulated cluster (`bramble_tests::sim`) run the real
//! controller against it. Links always succeed (their plan is tested against a fake that keeps
//! them, in `board/tests.rs`); nft scripts, flows forgotten and the DNS server are recorded.

use super::board::Links;
use super::dns::Names;
use super::link::Link;
use super::node::Kernel;
use super::NetError;
use bramble_proto::manifest::Protocol;
use bramble_proto::network::Cidr;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake was asked, and how it answers.
#[derive(Debug, Default)]
pub struct KernelState {
    /// Every nft script applied, in order.
    pub scripts: Vec<String>,
    /// `(vip, port, endpoint)` of every UDP flow forgotten.
    pub forgotten_udp: Vec<(Ipv4Addr, u16, Ipv4Addr)>,
    /// Every address whose replies were forgotten.
    pub forgotten_replies: Vec<Ipv4Addr>,
    /// How many times something was forgotten (each is one dump of the table on a board).
    pub forgets: u32,
    /// Where the DNS server serves, and how many times it was started.
    pub dns: Option<Ipv4Addr>,
    pub dns_starts: u32,
    /// The names it serves.
    pub names: Option<Arc<Names>>,
    /// `nft` is not installed.
    pub no_nft: bool,
    /// nft refuses every script with this.
    pub refuse: Option<String>,
    /// Ports processes listen on.
    pub listening: BTreeSet<(Protocol, u16)>,
}

/// A shared handle: clones see the same state.
#[derive(Debug, Clone, Default)]
pub struct FakeKernel(pub Arc<Mutex<KernelState>>);

impl FakeKernel {
    pub fn state(&self) -> std::sync::MutexGuard<'_, KernelState> {
        self.0.lock().expect("fake kernel lock")
    }
}

impl Kernel for FakeKernel {
    type Links = FakeLinks;
    fn links(&self) -> Result<FakeLinks, NetError> {
        Ok(FakeLinks)
    }
    fn has_nft(&self) -> bool {
        !self.state().no_nft
    }
    fn apply_rules(&self, script: &str) -> Result<Duration, NetError> {
        let mut s = self.state();
        if let Some(why) = &s.refuse {
            return Err(NetError::Nft(why.clone()));
        }
        s.scripts.push(script.to_string());
        Ok(Duration::from_millis(1))
    }
    fn forget(&self, gone: &super::conntrack::Gone) {
        let mut s = self.state();
        if !gone.is_empty() {
            s.forgets += 1;
        }
        s.forgotten_udp.extend(gone.udp.iter().copied());
        s.forgotten_replies.extend(gone.replies.iter().copied());
    }
    fn listening(&self) -> BTreeSet<(Protocol, u16)> {
        self.state().listening.clone()
    }
    fn dns_serving(&self, addr: Ipv4Addr) -> bool {
        self.state().dns == Some(addr)
    }
    fn serve_dns(&mut self, addr: Ipv4Addr, names: Arc<Names>, _upstreams: Vec<SocketAddr>) {
        let mut s = self.state();
        s.dns = Some(addr);
        s.dns_starts += 1;
        s.names = Some(names);
    }
}

/// Links that are always as wanted.
#[derive(Debug)]
pub struct FakeLinks;

impl Links for FakeLinks {
    fn ensure_bridge(&self, _: &str, _: Ipv4Addr, _: u8, _: u32) -> Result<u32, NetError> {
        Ok(2)
    }
    fn ensure_vxlan(&self, _: &str, _: u32, _: u16, _: [u8; 6], _: Ipv4Addr, _: u32) -> Result<u32, NetError> {
        Ok(3)
    }
    fn addresses(&self, _: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
        Ok(Vec::new())
    }
    fn delete_address(&self, _: u32, _: Ipv4Addr, _: u8) -> Result<(), NetError> {
        Ok(())
    }
    fn links(&self) -> Result<Vec<Link>, NetError> {
        Ok(Vec::new())
    }
    fn delete(&self, _: &str) -> Result<(), NetError> {
        Ok(())
    }
    fn detach(&self, _: u32, _: &str) -> Result<(), NetError> {
        Ok(())
    }
    fn route(&self, _: Cidr, _: Option<Ipv4Addr>, _: Option<u32>) -> Result<(), NetError> {
        Ok(())
    }
    fn our_routes(&self) -> Result<Vec<Cidr>, NetError> {
        Ok(Vec::new())
    }
    fn delete_route(&self, _: Cidr) -> Result<(), NetError> {
        Ok(())
    }
    fn unreachable(&self, _: Cidr, _: u32) -> Result<(), NetError> {
        Ok(())
    }
    fn our_unreachable(&self) -> Result<Vec<Cidr>, NetError> {
        Ok(Vec::new())
    }
    fn delete_unreachable(&self, _: Cidr) -> Result<(), NetError> {
        Ok(())
    }
    fn neighbour(&self, _: u32, _: Ipv4Addr, _: [u8; 6]) -> Result<(), NetError> {
        Ok(())
    }
    fn fdb(&self, _: u32, _: [u8; 6], _: Ipv4Addr) -> Result<(), NetError> {
        Ok(())
    }
    fn sysctl(&self, _: &str, _: &str) -> Result<(), NetError> {
        Ok(())
    }
}
