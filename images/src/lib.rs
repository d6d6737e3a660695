//! Images for the agent.
//!
//! Today: [`platform`], choosing the right entry of a multi-platform image for a board, variant
//! included. The registry client, content store, safe unpacking and import follow (roadmap item 2).

pub mod platform;

pub use bramble_proto::image_ref::ImageRef;
pub use platform::Platform;
