//! Forgets UDP flows to endpoints that went away, so clients move to the remaining ones at once
//! (a UDP "connection" otherwise stays mapped to the gone endpoint until it times out). Uses
//! Debian's `conntrack` tool.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use tracing::{debug, warn};

/// Deletes the UDP flows to `vip:port` that were sent to `endpoint`.
pub fn forget_udp(vip: Ipv4Addr, port: u16, endpoint: Ipv4Addr) {
    let args = [
        "-D",
        "-p",
        "udp",
        "--orig-dst",
        &vip.to_string(),
        "--dport",
        &port.to_string(),
        "--reply-src",
        &endpoint.to_string(),
    ];
    match Command::new("conntrack").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status() {
        // 1: there was nothing to delete.
        Ok(s) if s.success() || s.code() == Some(1) => debug!(%vip, port, %endpoint, "UDP flows forgotten"),
        Ok(s) => warn!(%vip, port, %endpoint, "conntrack -D failed ({s})"),
        Err(e) => warn!("cannot run conntrack (install Debian's conntrack package): {e}"),
    }
}

/// Deletes every flow from or to `ip` (a pod that is gone), in both directions.
pub fn forget_address(ip: Ipv4Addr) {
    let ip = ip.to_string();
    for flag in ["--orig-src", "--orig-dst", "--reply-src", "--reply-dst"] {
        let status =
            Command::new("conntrack").args(["-D", flag, &ip]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if let Err(e) = status {
            warn!("cannot run conntrack (install Debian's conntrack package): {e}");
            return;
        }
    }
}

/// Deletes the flows this board sent to `ip` (its DNAT to a pod that is gone from every service).
pub fn forget_replies(ip: Ipv4Addr) {
    let status = Command::new("conntrack")
        .args(["-D", "--reply-src", &ip.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = status {
        warn!("cannot run conntrack (install Debian's conntrack package): {e}");
    }
}
