//! Images for the agent: pull from registries, store content once, unpack layers safely, give each
//! container a root filesystem, import for air-gapped boards, collect garbage.
//!
//! - [`registry`]: the OCI distribution client (auth, HTTPS, digests verified).
//! - [`store`]: the content store under the agent's data dir (blobs, unpacked layers, image records).
//! - [`unpack`]: layer tar → directory, with whiteouts, and no way out of the directory.
//! - [`platform`]: the right entry of a multi-platform image for a board, variant included.

pub mod digest;
pub mod gc;
pub mod import;
pub mod oci;
pub mod progress;
pub mod pull;
pub mod registry;
pub mod rootfs;
pub mod store;
pub mod unpack;
pub mod zstd;

pub use bramble_proto::image_ref::ImageRef;
pub use bramble_proto::platform::Platform;
pub use digest::Digest;
pub use progress::Progress;
pub use pull::{Peers, PullError, PullPolicy, Puller, Sources};
pub use store::{ContentStore, ImageRecord};
