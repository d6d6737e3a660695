//! One place that sets the log format and level for the binaries.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;

/// Logs to stderr; `RUST_LOG` wins over `level` (from config), which wins over `info`.
pub fn init(level: Option<&str>) {
    init_with(level)
}

/// For the shim: libcontainer logs from forked children whose stderr is already a container's or
/// an exec's, so only its errors are let through whatever `RUST_LOG` says.
pub fn init_shim() {
    // A fixed filter, not `EnvFilter`: its regex engine would be most of a small shim's code.
    use tracing_subscriber::prelude::*;
    let filter = Targets::new()
        .with_target("libcontainer", tracing::Level::ERROR)
        .with_target("libcgroups", tracing::Level::ERROR)
        .with_default(tracing::Level::INFO);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(false);
    let _ = tracing_subscriber::registry().with(layer).with(filter).try_init();
}

fn init_with(level: Option<&str>) {
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("RUST_LOG").ok().or_else(|| level.map(str::to_string)).unwrap_or_else(|| "info".into());
    let filter = parse_filter(&filter).unwrap_or_else(|e| {
        eprintln!("{e}; using info");
        Targets::new().with_default(tracing::Level::INFO)
    });
    // Under systemd the journal adds its own timestamps, and takes each line's priority from a
    // `<N>` prefix (`journalctl -p err` finds the errors).
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if under_systemd {
        let format = tracing_subscriber::fmt::format().without_time().with_target(false).with_ansi(false);
        registry.with(layer.with_ansi(false).event_format(Journal(format))).try_init()
    } else {
        registry.with(layer).try_init()
    };
}

/// The syslog priority journald reads from a line's `<N>` prefix (`sd-daemon.h`).
pub fn priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// A line format that starts each event with its priority for the journal.
struct Journal<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Journal<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// A log filter: a level (`debug`), per-target levels (`bramble_agent::net=debug`), or both,
/// separated by commas (`warn,bramble_agent=debug`). `Targets`, not `EnvFilter`: no span or field
/// filters, and none of the regex engine that would be a large part of the agent's code.
pub fn parse_filter(s: &str) -> Result<Targets, String> {
    let bad = |why: String| {
        format!("invalid log level {s:?}: {why}; expected LEVEL or TARGET=LEVEL, comma-separated (levels: off, error, warn, info, debug, trace)")
    };
    let level = |l: &str| l.trim().parse::<LevelFilter>().map_err(|_| bad(format!("{:?} is not a level", l.trim())));
    let mut targets = Targets::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((target, l)) => {
                let target = target.trim();
                if target.is_empty() || !target.chars().all(|c| c.is_ascii_alphanumeric() || "_:-.".contains(c)) {
                    return Err(bad(format!("{target:?} is not a target (a module path such as bramble_agent::net)")));
                }
                targets = targets.with_target(target, level(l)?);
            }
            None => targets = targets.with_default(level(part)?),
        }
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_priorities_are_syslogs() {
        assert_eq!(priority(&tracing::Level::ERROR), 3);
        assert_eq!(priority(&tracing::Level::WARN), 4);
        assert_eq!(priority(&tracing::Level::INFO), 6);
        assert_eq!(priority(&tracing::Level::DEBUG), 7);
        assert_eq!(priority(&tracing::Level::TRACE), 7);
    }

    #[test]
    fn filters_take_levels_and_targets_and_refuse_the_rest() {
        let f = parse_filter("warn,bramble_agent::net=debug").unwrap();
        assert_eq!(f.default_level(), Some(LevelFilter::WARN));
        assert!(f.would_enable("bramble_agent::net::dns", &tracing::Level::DEBUG));
        assert!(!f.would_enable("quinn", &tracing::Level::INFO));
        assert_eq!(parse_filter("info").unwrap().default_level(), Some(LevelFilter::INFO));
        let e = parse_filter("bramble_agent[session]=debug").unwrap_err();
        assert!(e.contains("\"bramble_agent[session]\" is not a target"), "{e}");
        // A typo must not turn the logs off (a bare word would otherwise be a target).
        let e = parse_filter("inf").unwrap_err();
        assert!(e.contains("\"inf\" is not a level") && e.contains("expected LEVEL or TARGET=LEVEL"), "{e}");
        assert!(parse_filter("quinn=loud").is_err());
    }
}
