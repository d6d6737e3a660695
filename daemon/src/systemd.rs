//! sd_notify without libsystemd: one datagram to `$NOTIFY_SOCKET`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `READY=1`, `STOPPING=1`) to systemd if the service runs under it.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    notify_to(&path.to_string_lossy(), state);
}

/// Sends `state` to the notification socket at `path` (`@name` for an abstract socket).
pub fn notify_to(path: &str, state: &str) {
    let addr = match path.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
        None => SocketAddr::from_pathname(path),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd at {path}: {e}");
    }
}

/// systemd's watchdog interval for this process (`WatchdogSec=` in the unit sets `WATCHDOG_USEC`),
/// if it is meant for this process.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}

/// Whether every loop in `beats` (name, when it last went round, in ms) went round within
/// `interval` of `now_ms`; if not, which one is stuck and for how long.
pub fn alive(now_ms: u64, beats: &[(&str, u64)], interval: std::time::Duration) -> Result<(), String> {
    let limit = interval.as_millis() as u64;
    match beats.iter().find(|(_, at)| now_ms.saturating_sub(*at) > limit) {
        None => Ok(()),
        Some((name, at)) => Err(format!("the {name} loop has not gone round for {} ms", now_ms.saturating_sub(*at))),
    }
}

/// Tells systemd `WATCHDOG=1` every half interval while each loop in `beats` goes round (that this
/// task runs at all shows the async runtime is alive). When one hangs, the pings stop and systemd
/// restarts the process (the agent's unit has `KillMode=process`: its containers, under their
/// shims, are not touched).
pub async fn watchdog(
    interval: std::time::Duration,
    beats: Vec<(&'static str, std::sync::Arc<std::sync::atomic::AtomicU64>)>,
) {
    let mut said = false;
    loop {
        tokio::time::sleep(interval / 2).await;
        // Wall-clock ms, as the loops store their beats (bramble_proto::time::now_ms).
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let seen: Vec<(&str, u64)> =
            beats.iter().map(|(n, b)| (*n, b.load(std::sync::atomic::Ordering::Relaxed))).collect();
        match alive(now, &seen, interval) {
            Ok(()) => {
                notify("WATCHDOG=1");
                said = false;
            }
            Err(why) if !said => {
                tracing::error!("{why}: not telling systemd's watchdog that this process is alive");
                said = true;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn the_watchdog_is_fed_only_while_every_loop_goes_round() {
        let i = Duration::from_secs(30);
        assert_eq!(super::alive(100_000, &[("reconciler", 95_000)], i), Ok(()));
        assert_eq!(super::alive(100_000, &[("reconciler", 70_000)], i), Ok(()), "exactly the interval is still alive");
        let stuck = super::alive(100_000, &[("reconciler", 95_000), ("network", 60_000)], i).unwrap_err();
        assert_eq!(stuck, "the network loop has not gone round for 40000 ms");
    }

    #[test]
    fn notifies_the_socket_in_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::notify_to(path.to_str().unwrap(), "READY=1");
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
