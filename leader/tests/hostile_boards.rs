//! What a board says, mutated at random, through the leader's `sessions::absorb` (what the fuzz
//! target `leader/fuzz` does without a fuzzer, so CI runs it): nothing panics, nothing a board
//! says changes another board's replica, and what it reports about itself stays within bounds.

use bramble_leader::store::{Expect, MemStore, Store};
use bramble_proto::model::{Arch, Node, NodeInfo, Replica, ReplicaPhase, Resources};
use bramble_proto::wire::AgentMsg;
use std::sync::Arc;

fn api() -> bramble_leader::api::Api {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let events = Arc::new(bramble_leader::events::Events::new());
    let registry =
        Arc::new(bramble_leader::boards::nodes::NodeRegistry::new(std::time::Duration::from_secs(15), events.clone()));
    let ca = bramble_transport::pki::Ca::generate("t").unwrap();
    let objects = bramble_leader::objects::Objects::new(store);
    let api = bramble_leader::api::Api::new(objects, ca, registry, events, Default::default());
    let res = Resources { cpu_millis: 1000, memory_bytes: 1 << 30, replicas: 10 };
    for n in ["pi-1", "pi-2"] {
        api.objects.put(&Node::joined(n, n.into(), NodeInfo::board(Arch::Arm64, res), 1), Expect::Absent).unwrap();
    }
    let mut r = Replica::new("web", "web-other", "r1", 1);
    r.node = Some("pi-2".into());
    api.objects.put(&r, Expect::Absent).unwrap();
    api
}

/// Messages a board might send, as JSON: the seeds the mutations start from.
fn seeds() -> Vec<String> {
    let mut info = NodeInfo::board(Arch::Arm64, Resources { cpu_millis: 4000, memory_bytes: 1 << 32, replicas: 64 });
    info.labels.insert("disk".into(), "ssd".into());
    info.addresses.push("10.0.0.5".into());
    let mut miss = bramble_proto::wire::ReplicaStatus::new("web-other", ReplicaPhase::Running);
    miss.platform_miss = Some(bramble_proto::wire::PlatformMiss {
        image: "reg/web:1".into(),
        offered: vec!["linux/riscv64".parse().unwrap()],
    });
    let event =
        bramble_proto::model::Event::replica(1, "web", "web-other", bramble_proto::model::EventReason::Started, "x");
    [
        AgentMsg::Info(info),
        AgentMsg::Status { full: true, replicas: vec![miss] },
        AgentMsg::Event(event),
        AgentMsg::Images(vec!["reg/web:1".into()]),
        AgentMsg::Volumes(vec!["dbdata".into()]),
        AgentMsg::NetworkApplied { version: 3 },
        AgentMsg::Heartbeat { seq: 1 },
    ]
    .iter()
    .map(|m| serde_json::to_string(m).unwrap())
    .collect()
}

#[test]
fn mutated_board_messages_never_panic_nor_reach_another_board() {
    let api = api();
    let sessions = bramble_leader::wiring::session_handles(&api);
    let mut rng: u64 = 0x2027;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n.max(1) as u64) as usize
    };
    let pieces = ["\"", "-1", "18446744073709551615", "1e308", "null", "[]", "{}", "\u{0}", "é", "x"];
    let mut decoded = 0;
    for round in 0..20_000 {
        let seeds = seeds();
        let mut text = seeds[round % seeds.len()].clone();
        for _ in 0..=next(3) {
            let at = next(text.len());
            let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            match next(3) {
                0 => text.insert_str(at, pieces[next(pieces.len())]),
                1 => text.insert_str(at, &"A".repeat(next(5000))),
                _ => {
                    let end = (at + next(8)).min(text.len());
                    let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
                    text.replace_range(at..end, "");
                }
            }
        }
        if let Ok(msg) = serde_json::from_str::<AgentMsg>(&text) {
            decoded += 1;
            bramble_leader::sessions::absorb(&sessions, "pi-1", msg, 1);
        }
    }
    assert!(decoded > 1000, "the mutations must reach absorb: {decoded} decoded");
    let other = api.objects.get::<Replica>("web-other").unwrap().unwrap().value;
    assert_eq!((other.node.as_deref(), other.phase), (Some("pi-2"), ReplicaPhase::Pending), "pi-1 spoke for pi-2");
    let me = api.objects.get::<Node>("pi-1").unwrap().unwrap().value;
    assert!(me.info.labels.len() <= bramble_proto::model::MAX_BOARD_LABELS);
    assert!(me.info.kernel.len() <= bramble_proto::model::MAX_BOARD_TEXT);
    assert!(api.objects.image_platforms().unwrap().values().all(|m| !m.value.contains_key("pi-2")));
}
