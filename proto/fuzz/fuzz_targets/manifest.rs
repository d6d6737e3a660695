//! Manifests users write: parsing and validation must never panic, and errors must point inside
//! the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errors) = bramble_proto::manifest::parse_manifest("fuzz.toml", text) {
            for e in errors.0 {
                assert!(e.line >= 1 && e.line <= text.lines().count().max(1) + 1);
            }
        }
    }
});
