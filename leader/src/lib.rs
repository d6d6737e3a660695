//! The Bramble leader: keeps the desired state, admits nodes, serves the API over QUIC.

pub mod admission;
pub mod api;
pub mod backup;
pub mod config;
pub mod controllers;
pub mod dashboard;
pub mod discovery;
pub mod error;
pub mod events;
pub mod ha;
pub mod init;
pub mod metrics;
pub mod network;
pub mod nodes;
pub mod objects;
pub mod observed;
pub mod relay;
pub mod reports;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod sessions;
pub mod store;
pub mod tokens;
pub mod usage;
pub mod users;
pub mod wiring;

pub use config::LeaderConfig;
pub use wiring::{start, start_with, LeaderError, RunningLeader};
