//! What the leader knows of its boards in memory: sessions, heartbeats and readiness, what they
//! report (pull progress, images, volumes, probe details) and what they use. Lost on a restart and
//! told again by the boards.
//!
//! ```text
//! nodes.rs      the session registry, heartbeats, readiness; the readiness monitor
//! observed.rs   what boards tell that is kept in memory only
//! usage.rs      what boards and replicas use (for `top`, the autoscaler, `/metrics`)
//! ```

pub mod nodes;
pub mod observed;
pub mod usage;
