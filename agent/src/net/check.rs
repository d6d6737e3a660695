//! What the kernel and the board must offer for pod networking, for `bramble-agent check`: each
//! piece is tried for real in a throwaway network namespace (a bridge, a veth pair, a vxlan
//! device, an nft table with NAT), and each missing one is said with what to do.

use super::link::Netlink;

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub what: &'static str,
    /// Needed for pods to run (vxlan is needed only with that backend).
    pub required: bool,
    pub ok: bool,
    /// What was found, or what to do.
    pub detail: String,
}

fn finding(what: &'static str, required: bool, result: Result<String, String>) -> Finding {
    match result {
        Ok(detail) => Finding { what, required, ok: true, detail },
        Err(detail) => Finding { what, required, ok: false, detail },
    }
}

/// Whether `name` is a program on the PATH.
pub fn binary(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

const NFT_PROBE: &str = "table ip bramble-check {\n  chain post {\n    type nat hook postrouting priority srcnat;\n    masquerade\n  }\n  chain pre {\n    type nat hook prerouting priority dstnat;\n    tcp dport 1 dnat to numgen random mod 1 map { 0 : 10.0.0.1 . 1 }\n  }\n}\n";

/// Tries each piece inside a new network namespace of its own (gone when the thread ends).
fn probe() -> Result<Vec<Finding>, String> {
    std::thread::spawn(|| -> Result<Vec<Finding>, String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("cannot make a network namespace to try things in ({e}); run as root"))?;
        let nl = Netlink::open().map_err(|e| e.to_string())?;
        let bridge = nl.ensure_bridge("check0", "10.99.0.1".parse().expect("ip"), 24, 1500);
        let b = bridge.as_ref().ok().copied();
        let mut out = vec![finding(
            "bridge (the pods' bridge)",
            true,
            bridge
                .map(|_| "works".into())
                .map_err(|e| format!("{e}: enable CONFIG_BRIDGE (or load the bridge module)")),
        )];
        let veth = match b {
            Some(b) => nl.veth("check-a", "check-b", b, 1500, None).map_err(|e| e.to_string()),
            None => Err("needs the bridge".into()),
        };
        out.push(finding(
            "veth (a pod's link to the bridge)",
            true,
            veth.map(|_| "works".into()).map_err(|e| format!("{e}: enable CONFIG_VETH")),
        ));
        let vx = nl.ensure_vxlan("check-vx", 7, 8472, [0x0a, 0, 0, 0, 0, 1], "10.99.1.0".parse().expect("ip"), 1450);
        out.push(finding(
            "vxlan (for network.backend = \"vxlan\")",
            false,
            vx.map(|_| "works".into()).map_err(|e| format!("{e}: enable CONFIG_VXLAN, or use the direct backend")),
        ));
        let nft = if binary("nft") {
            super::nft::apply(NFT_PROBE).map(|_| "works".to_string()).map_err(|e| {
                format!("{e}: enable CONFIG_NF_TABLES, CONFIG_NFT_NAT, CONFIG_NFT_NUMGEN, CONFIG_NFT_MASQ")
            })
        } else {
            Err("nft is missing: apt-get install nftables".into())
        };
        out.push(finding("nf_tables with NAT (services, host ports)", true, nft));
        Ok(out)
    })
    .join()
    .map_err(|_| "the probe thread panicked".to_string())?
}

/// Every check for pod networking.
pub fn network() -> Vec<Finding> {
    let mut out =
        probe().unwrap_or_else(|e| vec![Finding { what: "network namespaces", required: true, ok: false, detail: e }]);
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    out.push(Finding {
        what: "IPv4 forwarding",
        required: false,
        ok: true,
        detail: if forward.trim() == "1" {
            "on".into()
        } else {
            "off; the agent turns it on (net.ipv4.ip_forward = 1) when the board's network comes up".into()
        },
    });
    let ctnetlink = super::link::Netlink::open_protocol(libc::NETLINK_NETFILTER)
        .and_then(|nl| super::conntrack::flows(&nl))
        .map(|flows| flows.len());
    out.push(Finding {
        what: "conntrack over netlink (moves UDP clients off gone endpoints, forgets removed pods' flows)",
        required: false,
        ok: ctnetlink.is_ok(),
        detail: match ctnetlink {
            Ok(n) => format!("answers ({n} IPv4 flows)"),
            Err(e) => format!("{e}: modprobe nf_conntrack_netlink"),
        },
    });
    out
}
