//! What a board sends over its session, as bytes: decoded as the leader decodes frames, then
//! absorbed as the leader absorbs them (statuses, events, info, images, volumes, usage) into a
//! cluster in memory with one board and one replica bound to it. Must never panic, and the board
//! must never change another board's replica.
#![no_main]

use bramble_leader::store::{Expect, MemStore, Store};
use bramble_proto::codec::FrameDecoder;
use bramble_proto::wire::AgentMsg;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn api() -> &'static bramble_leader::api::Api {
    static API: OnceLock<bramble_leader::api::Api> = OnceLock::new();
    API.get_or_init(|| {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let events = Arc::new(bramble_leader::events::Events::new());
        let registry =
            Arc::new(bramble_leader::boards::nodes::NodeRegistry::new(std::time::Duration::from_secs(15), events.clone()));
        let ca = bramble_transport::pki::Ca::generate("fuzz").unwrap();
        let api = bramble_leader::api::Api::new(
            bramble_leader::objects::Objects::new(store),
            ca,
            registry,
            events,
            Default::default(),
        );
        let res = bramble_proto::model::Resources { cpu_millis: 1000, memory_bytes: 1 << 30, replicas: 10 };
        for n in ["pi-1", "pi-2"] {
            let info = bramble_proto::model::NodeInfo::board(bramble_proto::model::Arch::Arm64, res);
            api.objects.put(&bramble_proto::model::Node::joined(n, n.into(), info, 1), Expect::Absent).unwrap();
        }
        let mut r = bramble_proto::model::Replica::new("web", "web-other", "r1", 1);
        r.node = Some("pi-2".into());
        api.objects.put(&r, Expect::Absent).unwrap();
        api
    })
}

fuzz_target!(|data: &[u8]| {
    let api = api();
    let mut d = FrameDecoder::new(1 << 16);
    d.push(data);
    while let Ok(Some(msg)) = d.next_frame::<AgentMsg>() {
        bramble_leader::sessions::absorb(&bramble_leader::wiring::session_handles(api), "pi-1", msg, 1);
    }
    let other = api.objects.get::<bramble_proto::model::Replica>("web-other").unwrap().unwrap().value;
    assert_eq!(other.node.as_deref(), Some("pi-2"));
    assert_eq!(other.phase, bramble_proto::model::ReplicaPhase::Pending, "pi-1 changed pi-2's replica");
});
