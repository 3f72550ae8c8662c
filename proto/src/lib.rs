//! ptth-proto: the wire protocol shared by `ptth-lb` and `ptth-workerd`.
//!
//! - [`setup`]: the PTTH tunnel setup (draft-kazuho-ptth-ptth-01) with our
//!   `Tunnel-*` metadata fields, built and parsed on both sides.
//! - [`h1`]: HTTP/1.1 heads and body framing (RFC 9112), strict, allocation-free
//!   once warmed up.
//! - [`sf`]: the Structured Fields subset the metadata uses.
//! - `rt` (feature `rt`): the monoio runtime builder and relay loops both
//!   binaries run; everything else here is sans-IO and runtime-free.

// Unsafe code: the idle-connection probe and the in-place split in `rt::io`.
#![deny(unsafe_code)]

pub mod error;
pub mod h1;
pub mod invariants;
#[cfg(feature = "rt")]
pub mod rt;
pub mod setup;
pub mod sf;

pub use error::{BodyError, HeadError, SetupError};
