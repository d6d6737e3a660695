//! Bytes as the kernel's answer on the agent's netlink socket: framing, errors with extended
//! acks, links, routes. Must never panic nor read past the end.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bramble_agent::net::link::read_untrusted(data);
});
