//! One file per subcommand.

pub mod apply;
pub mod backup;
pub mod configcmd;
pub mod cordon;
pub mod delete;
pub mod describe;
pub mod diff;
pub mod drain;
pub mod events;
pub mod exec;
pub mod get;
pub mod image;
pub mod job;
pub mod label;
pub mod logs;
pub mod policy;
pub mod rollout;
pub mod scale;
pub mod secret;
pub mod shell;
pub mod token;
pub mod top;
pub mod user;
pub mod volume;

pub use bramble_proto::time::now_ms;

/// The file a command writes: `--out FILE`; `-o FILE` / `--output-file FILE` still work for one
/// release, with a warning (`-o` is an output format everywhere else).
#[derive(clap::Args)]
pub struct OutFile {
    /// Where to write it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
    /// The old spelling of --out.
    #[arg(short = 'o', long = "output-file", value_name = "FILE", hide = true, conflicts_with = "out")]
    pub old: Option<std::path::PathBuf>,
}

impl OutFile {
    /// The file, saying so when the old spelling named it.
    pub fn path(self) -> Option<std::path::PathBuf> {
        if self.old.is_some() {
            eprintln!("bramble: warning: -o FILE (--output-file) is deprecated: use --out FILE (-o will be only an output format)");
        }
        self.out.or(self.old)
    }
}

/// `tcp` or `udp`.
pub fn protocol(p: bramble_proto::manifest::Protocol) -> &'static str {
    match p {
        bramble_proto::manifest::Protocol::Tcp => "tcp",
        bramble_proto::manifest::Protocol::Udp => "udp",
    }
}

/// A replica's phase as people read it: `Terminating` while it drains, `BackOff (8s)` with the
/// time left before its restart.
pub fn phase(r: &bramble_proto::model::Replica) -> String {
    if r.terminating_ms.is_some() {
        return "Terminating".into();
    }
    match (r.phase, r.restart_at_ms) {
        (bramble_proto::model::ReplicaPhase::BackOff, Some(at)) => {
            let left = std::time::Duration::from_millis(at.saturating_sub(now_ms()));
            format!("BackOff ({})", bramble_proto::quantity::format_duration(left))
        }
        (p, _) => format!("{p:?}"),
    }
}

/// `1/1` when the replica takes traffic, `0/1` when not (kubectl's READY).
pub fn ready(r: &bramble_proto::model::Replica) -> &'static str {
    if r.serving() {
        "1/1"
    } else {
        "0/1"
    }
}

/// Time since `ms`, kubectl style (`5m`, `3h12m`).
pub fn age(ms: u64) -> String {
    if ms == 0 {
        return "<unknown>".into();
    }
    bramble_proto::quantity::format_duration(std::time::Duration::from_secs(now_ms().saturating_sub(ms) / 1000))
}
