//! Bramble's shared language: the object model, TOML manifests parsed into validated types, and the
//! wire messages with their length-prefixed codec.
//!
//! This crate does no I/O (but for [`fsutil`], the one atomic file writer every crate shares). Everything that comes from a user (manifests, configs) or from the
//! network (frames) is parsed here once, at the edge, into types that are valid by construction.

pub mod backup;
pub mod codec;
pub mod cron;
pub mod device;
pub mod event;
pub mod fsutil;
pub mod hostpath;
pub mod image_ref;
pub mod job;
pub mod limit;
pub mod manifest;
pub mod mdns;
pub mod model;
pub mod names;
pub mod network;
pub mod object;
pub mod platform;
pub mod quantity;
pub mod registry_auth;
pub mod report;
pub mod selector;
pub mod source;
pub mod time;
pub mod token;
pub mod usage;
pub mod wire;

pub use codec::CodecError;
pub use source::SourceError;
