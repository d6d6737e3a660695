//! The Bramble leader: keeps the desired state, admits nodes, serves the API over QUIC.

pub mod admission;
pub mod api;
pub mod backup;
pub mod boards;
pub mod config;
pub mod controllers;
pub mod cron;
pub mod discovery;
pub mod edge;
pub mod error;
pub mod events;
pub mod ha;
pub mod ingress;
pub mod ingress_controller;
pub mod init;
pub mod mirror;
pub mod network;
pub mod objects;
pub mod observability;
pub mod scheduler;
pub mod sessions;
pub mod store;
pub mod trust;
pub mod wiring;

pub use config::LeaderConfig;
pub use wiring::{start, start_with, LeaderError, RunningLeader};
