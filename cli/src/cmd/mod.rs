//! One file per subcommand.

pub mod apply;
pub mod cordon;
pub mod delete;
pub mod describe;
pub mod events;
pub mod get;
pub mod image;
pub mod label;
pub mod logs;
pub mod scale;
pub mod token;

pub use bramble_proto::time::now_ms;

/// `tcp` or `udp`.
pub fn protocol(p: bramble_proto::manifest::Protocol) -> &'static str {
    match p {
        bramble_proto::manifest::Protocol::Tcp => "tcp",
        bramble_proto::manifest::Protocol::Udp => "udp",
    }
}

/// Time since `ms`, kubectl style (`5m`, `3h12m`).
pub fn age(ms: u64) -> String {
    if ms == 0 {
        return "<unknown>".into();
    }
    bramble_proto::quantity::format_duration(std::time::Duration::from_secs(now_ms().saturating_sub(ms) / 1000))
}
