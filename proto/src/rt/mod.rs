//! The monoio glue both binaries share (feature `rt`): building a per-core
//! runtime in one place, and the read/relay loops around the sans-IO framing.
//! Kept behind a feature so the protocol core builds without any runtime.

pub mod io;
pub mod runtime;
