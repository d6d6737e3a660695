//! What the leader, the agent and the shim share as long-running processes, and nothing else: log
//! setup, SIGTERM/SIGINT, sd_notify and systemd's watchdog, malloc settings and self-hardening.
//! Small on purpose: the leader library depends on this crate, not on the agent's.

pub mod alloc;
pub mod hardening;
pub mod observability;
pub mod signals;
pub mod systemd;
