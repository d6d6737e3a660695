//! The validated types a manifest is made of, by object.
//!
//! ```text
//! common.rs   ranged numbers, percentages, autoscale, protocols, env names, labels
//! app.rs      [[app]] and its parts; the checks that span its fields
//! service.rs  [[service]] and its ports
//! config.rs   [[config]] and config mounts
//! cronjob.rs  [[cronjob]]: a schedule and the job it makes
//! ingress.rs  [[ingress]]: host names and paths to services, TLS
//! registry.rs [[registry]]: credentials from a secret, insecure, mirrors
//! pod.rs      [[app.containers]] and [[app.init]]: a replica's containers
//! problem.rs  a problem found after parsing, with its field's path
//! ```

mod app;
mod common;
mod config;
mod cronjob;
mod ingress;
mod pod;
mod problem;
mod registry;
mod service;

pub use app::*;
pub use common::*;
pub use config::*;
pub use cronjob::*;
pub use ingress::*;
pub use pod::*;
pub use problem::*;
pub use registry::*;
pub use service::*;
