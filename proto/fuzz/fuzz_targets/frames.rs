//! Bytes from the network, in pieces: the frame decoder must never panic.
#![no_main]

use bramble_proto::codec::FrameDecoder;
use bramble_proto::wire::{AgentMsg, LeaderMsg, Open, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut d = FrameDecoder::new(1 << 16);
    d.push(&data[..cut]);
    let _ = d.next_frame::<Open>();
    d.push(&data[cut..]);
    while let Ok(Some(_)) = d.next_frame::<Open>() {}
    let _ = d.finish();
    for payload in [data] {
        let _ = bramble_proto::codec::decode::<Response>(payload);
        let _ = bramble_proto::codec::decode::<AgentMsg>(payload);
        let _ = bramble_proto::codec::decode::<LeaderMsg>(payload);
    }
});
