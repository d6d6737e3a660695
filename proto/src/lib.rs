//! Bramble's shared language: the object model, TOML manifests parsed into validated types, and the
//! wire messages with their length-prefixed codec.
//!
//! This crate does no I/O. Everything that comes from a user (manifests, configs) or from the
//! network (frames) is parsed here once, at the edge, into types that are valid by construction.

pub mod codec;
pub mod image_ref;
pub mod manifest;
pub mod model;
pub mod names;
pub mod quantity;
pub mod source;
pub mod token;
pub mod wire;

pub use codec::CodecError;
pub use source::SourceError;
