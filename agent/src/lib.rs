//! The Bramble agent: joins the cluster once with a token, then keeps one session with the
//! leader, reconnecting with capped exponential backoff, and reports what its board is.

pub mod backoff;
pub mod config;
pub mod devscan;
pub mod discover;
pub mod doctor;
pub mod exec;
pub mod join;
pub mod logserve;
pub mod net;
pub mod peers;
pub mod reconcile;
pub mod registries;
pub mod runtime;
pub mod secrets;
pub mod session;
pub mod streams;
pub mod sysinfo;
pub mod usage;
pub mod volumes;
pub mod wiring;

pub use config::AgentConfig;
pub use session::AgentError;
pub use wiring::run;
