//! Host ports: for each TCP host port a replica asks for, the agent listens on the board and
//! forwards every connection into the replica's network namespace, to `127.0.0.1:<container
//! port>` there (what docker-proxy does). The container keeps its own network namespace.
//! UDP host ports are not forwarded yet.

use crate::reconcile::Binding;
use crate::runtime::lifecycle::Phase;
use crate::runtime::protocol::ShimState;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps one listener per binding until `cancel` fires.
pub async fn run(mut bindings: watch::Receiver<Vec<Binding>>, shims: PathBuf, cancel: CancellationToken) {
    let mut listeners: HashMap<u16, (Binding, JoinHandle<()>)> = HashMap::new();
    loop {
        let want = bindings.borrow_and_update().clone();
        listeners.retain(|port, (b, task)| {
            let keep = want.contains(b);
            if !keep {
                info!(port, replica = %b.replica, "no longer forwarding host port");
                task.abort();
            }
            keep && *port == b.host
        });
        for b in want {
            if listeners.contains_key(&b.host) {
                continue;
            }
            let task = tokio::spawn(listen(b.clone(), shims.clone()));
            listeners.insert(b.host, (b, task));
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = bindings.changed() => if r.is_err() { break },
        }
    }
    for (_, (_, task)) in listeners {
        task.abort();
    }
}

async fn listen(b: Binding, shims: PathBuf) {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, b.host));
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                warn!(port = b.host, replica = %b.replica, "cannot listen on the host port: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    info!(port = b.host, replica = %b.replica, container_port = b.container, "forwarding host port");
    loop {
        let Ok((client, peer)) = listener.accept().await else { continue };
        let (b, shims) = (b.clone(), shims.clone());
        tokio::spawn(async move {
            match connect_inside(&shims, &b).await {
                Ok(upstream) => {
                    let (mut a, mut c) = (client, upstream);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut c).await;
                }
                Err(e) => debug!(%peer, replica = %b.replica, "connection not forwarded: {e}"),
            }
        });
    }
}

/// The pid of the replica's running container, from its shim's persisted state.
fn running_pid(shims: &Path, replica: &str) -> std::io::Result<i32> {
    let bytes = std::fs::read(shims.join(replica).join("state.json"))?;
    let state: ShimState = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
    match state.lifecycle.phase {
        Phase::Running { pid, .. } => Ok(pid),
        other => Err(std::io::Error::other(format!("the container is {}", other.name()))),
    }
}

/// Connects to the container port from inside the container's network namespace: a short-lived
/// thread joins the namespace, connects, and ends (the socket keeps its namespace).
async fn connect_inside(shims: &Path, b: &Binding) -> std::io::Result<TcpStream> {
    let pid = running_pid(shims, &b.replica)?;
    let port = b.container;
    let stream = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || -> std::io::Result<std::net::TcpStream> {
            enter_netns(pid)?;
            loopback_up_here()?;
            std::net::TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), CONNECT_TIMEOUT)
        })
        .join()
        .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
    })
    .await
    .map_err(std::io::Error::other)??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// Moves the calling thread into the network namespace of `pid`.
fn enter_netns(pid: i32) -> std::io::Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Sets `lo` up in the calling thread's network namespace (a new one has it down). Idempotent.
fn loopback_up_here() -> std::io::Result<()> {
    // SAFETY: a plain socket and two ioctls on a zeroed, NUL-terminated `ifreq`; the fd is owned.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = req.ifr_ifru.ifru_flags;
        let up = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if flags & up != up {
            req.ifr_ifru.ifru_flags = flags | up;
            if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Sets `lo` up in the network namespace of process `pid` (from a short-lived thread).
pub fn loopback_up(pid: i32) -> std::io::Result<()> {
    std::thread::spawn(move || {
        enter_netns(pid)?;
        loopback_up_here()
    })
    .join()
    .map_err(|_| std::io::Error::other("the thread panicked"))?
}
