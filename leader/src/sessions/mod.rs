//! A board's session on the leader. `machine.rs` holds one session's rules without I/O — what
//! the board is sent and in which order — with unit tests; `crate::server` drives it (frames,
//! watches, the store reads it asks for off the async threads).

pub mod machine;
