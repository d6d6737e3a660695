//! One place that sets the log format and level for the binaries.

use tracing_subscriber::EnvFilter;

/// Logs to stderr; `RUST_LOG` wins over `level` (from config), which wins over `info`.
pub fn init(level: Option<&str>) {
    init_with(level, None)
}

/// For the shim: libcontainer logs from forked children whose stderr is already a container's or
/// an exec's, so only its errors are let through whatever `RUST_LOG` says.
pub fn init_shim() {
    // A fixed filter, not `EnvFilter`: its regex engine would be most of a small shim's code.
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("libcontainer", tracing::Level::ERROR)
        .with_target("libcgroups", tracing::Level::ERROR)
        .with_default(tracing::Level::INFO);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(false);
    let _ = tracing_subscriber::registry().with(layer).with(filter).try_init();
}

fn init_with(level: Option<&str>, extra: Option<&str>) {
    let filter =
        std::env::var("RUST_LOG").ok().or_else(|| level.map(str::to_string)).unwrap_or_else(|| "info".to_string());
    let mut filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("invalid log level {filter:?} ({e}); using info");
        EnvFilter::new("info")
    });
    if let Some(d) = extra.and_then(|d| d.parse().ok()) {
        filter = filter.add_directive(d);
    }
    // Under systemd the journal adds its own timestamps.
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let _ = if under_systemd { builder.without_time().try_init() } else { builder.try_init() };
}
