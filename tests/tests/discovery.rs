//! Boards find their leader by themselves (issue 28): agents started with a token and no leader
//! address ask the lab's LAN (boards as network namespaces on one bridge) for `_bramble._udp`
//! over mDNS, join the leader that answers for the token's CA, and find it again after a restart
//! (by the CA they then hold). All real: the leader's responder, multicast on a Linux bridge, QUIC.

use bramble_proto::model::ConditionStatus;
use bramble_tests::{Cluster, ClusterOptions};
use nix::sys::signal::Signal;
use std::time::Duration;

#[test]
fn boards_without_a_leader_address_find_it_on_the_lan() {
    let mut c = Cluster::start(ClusterOptions { agents: 2, discover: true, ..Default::default() });
    for i in 1..=2 {
        let log = std::fs::read_to_string(&c.agent(i).log).unwrap();
        assert!(log.contains("found the cluster's leaders on the LAN (mDNS)"), "board {i} found it:\n{log}");
        assert!(!log.contains("--leader"), "no address was given");
    }
    let leader_log = std::fs::read_to_string(&c.leader().log).unwrap();
    assert!(leader_log.contains("answering boards' mDNS queries for _bramble._udp.local"), "{leader_log}");
    // Restarted, a board finds the leader again by the CA it now holds.
    if let Some(mut a) = c.agents[0].take() {
        a.stop(Signal::SIGTERM);
    }
    c.wait_status(1, ConditionStatus::False, Duration::from_secs(60));
    c.start_agent(1);
    c.wait_status(1, ConditionStatus::True, Duration::from_secs(30));
}
