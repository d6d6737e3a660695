//! One place that sets the log format and level for the binaries.

use tracing_subscriber::EnvFilter;

/// Logs to stderr; `RUST_LOG` wins over `level` (from config), which wins over `info`.
pub fn init(level: Option<&str>) {
    let filter =
        std::env::var("RUST_LOG").ok().or_else(|| level.map(str::to_string)).unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("invalid log level {filter:?} ({e}); using info");
        EnvFilter::new("info")
    });
    // Under systemd the journal adds its own timestamps.
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = if under_systemd { builder.without_time().with_ansi(false).try_init() } else { builder.try_init() };
}
