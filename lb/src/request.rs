//! What the exchange needs to know about an HTTP/1.1 client's request once
//! its head bytes are consumed, whichever tunnel kind carries it.
//!
//! Place in the request path: built by `proxy::handle` after routing, read
//! by the exchange over an h1 tunnel (`proxy::exchange`) or an h2 stream
//! (`h2_tunnel::exchange`).

use ptth_proto::h1::{Framing, Version};

#[derive(Debug, Clone, Copy)]
pub(crate) struct ReqInfo {
    pub(crate) version: Version,
    pub(crate) is_head: bool,
    /// RFC 9110 §9.2.2 (for the failure model).
    pub(crate) idempotent: bool,
    /// The client asked to close after this request (or it is an upgrade).
    pub(crate) close: bool,
    pub(crate) expect_continue: bool,
    pub(crate) framing: Framing,
    /// Length of the host part of the route key.
    pub(crate) host_len: usize,
}
