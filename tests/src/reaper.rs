//! What the harness started, for a process that cannot unwind: a benchmark built with
//! `panic = "abort"` (the release profile boards get) runs no `Drop` when it panics, so its
//! leader, agents and network namespaces would outlive it. [`install_panic_hook`] kills every
//! process the harness started (by PID) and deletes its namespaces (killing what runs in them)
//! before the panic ends the process.

use std::collections::BTreeSet;
use std::sync::Mutex;

static PROCS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static NAMESPACES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

pub(crate) fn started(pid: u32) {
    PROCS.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
}

pub(crate) fn ended(pid: u32) {
    PROCS.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
}

pub(crate) fn namespaces(names: &[String], live: bool) {
    let mut set = NAMESPACES.lock().unwrap_or_else(|e| e.into_inner());
    for n in names {
        if live {
            set.insert(n.clone());
        } else {
            set.remove(n);
        }
    }
}

/// How many processes and namespaces are registered now.
pub fn registered() -> (usize, usize) {
    (PROCS.lock().unwrap_or_else(|e| e.into_inner()).len(), NAMESPACES.lock().unwrap_or_else(|e| e.into_inner()).len())
}

/// Kills every registered process (SIGKILL, by PID) and deletes every registered namespace after
/// killing what runs in it.
pub fn reap() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pids: Vec<u32> = std::mem::take(&mut *PROCS.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect();
    for pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let names: Vec<String> =
        std::mem::take(&mut *NAMESPACES.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect();
    for ns in names {
        if let Ok(out) = std::process::Command::new("ip").args(["netns", "pids", &ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).output();
    }
}

/// Reaps (see [`reap`]) when the process panics, after the panic's message.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        eprintln!("reaping what this run started (its processes and network namespaces)");
        reap();
    }));
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_started_process_is_reaped_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = crate::process::Proc::spawn_host(
            "sleep",
            std::path::Path::new("/bin/sleep"),
            &["100".to_string()],
            &dir.path().join("log"),
        );
        let pid = p.pid();
        assert!(super::PROCS.lock().unwrap().contains(&pid));
        super::reap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while p.running() {
            assert!(std::time::Instant::now() < deadline, "sleep {pid} still runs");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop(p);
        assert!(!super::PROCS.lock().unwrap().contains(&pid));
    }
}
