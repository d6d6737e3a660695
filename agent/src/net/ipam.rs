//! This board's pod addresses: one per replica from the board's pod subnet, persisted (written
//! before it is used), never handed out twice while in use, released when the replica goes.

use super::NetError;
use bramble_proto::network::Cidr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
struct State {
    subnet: Option<Cidr>,
    /// Replica → address.
    addresses: BTreeMap<String, Ipv4Addr>,
    /// The address given last: the next is searched after it, so a released address is given
    /// again only when the others have been (clients and caches forget an old pod slowly).
    #[serde(default)]
    last: Option<Ipv4Addr>,
}

#[derive(Debug)]
pub struct Ipam {
    file: PathBuf,
    state: State,
}

impl Ipam {
    /// The allocations kept in `file` (none if it does not exist yet).
    pub fn load(file: PathBuf) -> Result<Ipam, NetError> {
        let state = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| NetError::Corrupt { path: file.clone(), reason: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(NetError::Io { what: format!("read {}", file.display()), error: e }),
        };
        Ok(Ipam { file, state })
    }

    pub fn subnet(&self) -> Option<Cidr> {
        self.state.subnet
    }

    /// Sets the board's subnet. A different one than the addresses were given from is refused
    /// while pods hold any (they would all have to move).
    pub fn set_subnet(&mut self, subnet: Cidr) -> Result<(), NetError> {
        if self.state.subnet == Some(subnet) {
            return Ok(());
        }
        if let Some(old) = self.state.subnet.filter(|_| !self.state.addresses.is_empty()) {
            return Err(NetError::Missing(format!(
                "the leader gave this board pod subnet {subnet}, but {} pods hold addresses from {old}; \
                 remove them (or the agent's data dir) first",
                self.state.addresses.len()
            )));
        }
        self.state.subnet = Some(subnet);
        self.save()
    }

    pub fn get(&self, replica: &str) -> Option<Ipv4Addr> {
        self.state.addresses.get(replica).copied()
    }

    pub fn all(&self) -> &BTreeMap<String, Ipv4Addr> {
        &self.state.addresses
    }

    /// The replica's address: the one it has, or the next free one after the last given
    /// (saved before it is returned). The subnet's network address, first address (the bridge)
    /// and broadcast address are never given.
    pub fn allocate(&mut self, replica: &str) -> Result<Ipv4Addr, NetError> {
        if let Some(ip) = self.get(replica) {
            return Ok(ip);
        }
        let subnet = self.state.subnet.ok_or_else(|| {
            NetError::Missing("this board has no pod subnet yet (the leader gives one when the board connects)".into())
        })?;
        let used: std::collections::BTreeSet<&Ipv4Addr> = self.state.addresses.values().collect();
        let usable: Vec<Ipv4Addr> = (2..subnet.size().saturating_sub(1)).filter_map(|i| subnet.nth(i)).collect();
        let start = self.state.last.and_then(|l| usable.iter().position(|ip| *ip == l)).map_or(0, |i| i + 1);
        let ip = (0..usable.len())
            .map(|k| usable[(start + k) % usable.len()])
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| NetError::Missing(format!("pod subnet {subnet} is full ({} pods)", used.len())))?;
        self.state.addresses.insert(replica.to_string(), ip);
        self.state.last = Some(ip);
        self.save()?;
        Ok(ip)
    }

    pub fn release(&mut self, replica: &str) -> Result<(), NetError> {
        if self.state.addresses.remove(replica).is_some() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<(), NetError> {
        let bytes = serde_json::to_vec(&self.state).expect("ipam state serialises");
        bramble_proto::fsutil::write_file_atomic(&self.file, &bytes, 0o600)
            .map_err(|e| NetError::Io { what: format!("write {}", self.file.display()), error: e })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_kept_reused_only_when_released_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ipam.json");
        let mut ipam = Ipam::load(file.clone()).unwrap();
        assert!(ipam.allocate("a").unwrap_err().to_string().contains("no pod subnet yet"));
        ipam.set_subnet("10.42.3.0/29".parse().unwrap()).unwrap();
        let a = ipam.allocate("a").unwrap();
        assert_eq!(a.to_string(), "10.42.3.2", "the network address and the bridge's are skipped");
        assert_eq!(ipam.allocate("a").unwrap(), a, "asked again: the same");
        let got: Vec<String> = ["b", "c", "d", "e"].iter().map(|r| ipam.allocate(r).unwrap().to_string()).collect();
        assert_eq!(got, ["10.42.3.3", "10.42.3.4", "10.42.3.5", "10.42.3.6"]);
        assert!(
            ipam.allocate("f").unwrap_err().to_string().contains("is full (5 pods)"),
            "never the broadcast address"
        );
        ipam.release("c").unwrap();
        let again = Ipam::load(file.clone()).unwrap();
        assert_eq!(again.get("a"), Some(a), "kept across an agent restart");
        assert_eq!(again.get("c"), None);
        let mut again = again;
        assert_eq!(again.allocate("f").unwrap().to_string(), "10.42.3.4", "the only free one, given again");
        again.release("a").unwrap();
        again.release("b").unwrap();
        assert_eq!(again.allocate("g").unwrap().to_string(), "10.42.3.2", "after the last given, wrapping");
        assert_eq!(again.allocate("h").unwrap().to_string(), "10.42.3.3", "released ones come back last");
        let e = again.set_subnet("10.42.9.0/24".parse().unwrap()).unwrap_err().to_string();
        assert!(e.contains("pods hold addresses from 10.42.3.0/29"), "{e}");
    }
}
