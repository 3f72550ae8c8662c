//! The lb's one error type, and the one place that maps each error to the HTTP
//! status a client or worker receives ([`Error::status`]).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ptth_proto::{BodyError, HeadError, SetupError};

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- startup ----
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: io::Error },
    #[error("starting core {core}: {source}")]
    Runtime { core: usize, source: io::Error },

    // ---- client side (downstream) ----
    #[error("{0}")]
    Head(#[from] HeadError),
    #[error("request body: {0}")]
    ClientBody(BodyError),
    #[error("client connection: {0}")]
    ClientIo(io::Error),
    #[error("the request head did not arrive within {0:?}")]
    HeaderTimeout(Duration),
    #[error("{0} is not supported by this lb")]
    NotImplemented(&'static str),
    #[error("no worker serves host {host:?} path {path:?}")]
    NoRoute { host: String, path: String },
    #[error("too many requests are waiting for a tunnel")]
    QueueFull,
    #[error("no tunnel became free within {0:?}")]
    QueueTimeout(Duration),

    // ---- tunnel side (upstream) ----
    #[error("tunnel to worker {worker} failed ({fault}): {why}")]
    Tunnel { worker: String, fault: TunnelFault, why: String },
    #[error("worker {worker} sent an invalid response: {why}")]
    BadResponse { worker: String, why: String },
    #[error(
        "worker {worker} did not process the request ({why}), but its body had already streamed to it and cannot be sent \
         again (HTTP/1.1 request bodies up to buffers.replay_max bytes are held for that)"
    )]
    NotReplayable { worker: String, why: String },
    #[error("worker {worker} sent no response head within {after:?}")]
    ResponseTimeout { worker: String, after: Duration },

    // ---- tunnel setup ----
    #[error("{0}")]
    Setup(#[from] SetupError),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooManyTunnels(String),
    #[error("the lb is shutting down")]
    Draining,
}

/// What went wrong on a tunnel (the worker's side), for logs and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelFault {
    /// The worker closed the tunnel.
    Closed,
    /// Reading or writing the tunnel failed (reset, broken pipe).
    Io,
    /// The HTTP/2 stream or connection failed (RST_STREAM, GOAWAY, a
    /// protocol error).
    Stream,
    /// The lb could not put the request on this tunnel: it was closing, or
    /// the request cannot be expressed in HTTP/2.
    Unusable,
}

impl std::fmt::Display for TunnelFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TunnelFault::Closed => "closed by the worker",
            TunnelFault::Io => "I/O error",
            TunnelFault::Stream => "HTTP/2 stream error",
            TunnelFault::Unusable => "not usable for this request",
        })
    }
}

impl Error {
    /// The status answered for this error (RFC 9110 §15). Client I/O errors
    /// have none: the connection is gone or broken and is just closed.
    pub fn status(&self) -> Option<u16> {
        Some(match self {
            Error::Head(h) => h.status(),
            Error::ClientBody(_) => 400,
            Error::NotImplemented(_) => 501,
            Error::HeaderTimeout(_) => 408,
            Error::NoRoute { .. } | Error::QueueFull | Error::QueueTimeout(_) | Error::Draining => 503,
            Error::Tunnel { .. } | Error::BadResponse { .. } | Error::NotReplayable { .. } => 502,
            Error::ResponseTimeout { .. } => 504,
            Error::Setup(s) => s.status(),
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::TooManyTunnels(_) => 429,
            Error::ClientIo(_) | Error::Config(_) | Error::Bind { .. } | Error::Runtime { .. } => return None,
        })
    }

    /// Whether the answer carries `Retry-After` (the condition is temporary).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::NoRoute { .. } | Error::QueueFull | Error::QueueTimeout(_) | Error::Draining | Error::TooManyTunnels(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(Error::Head(HeadError::RequestLineTooLong).status(), Some(414));
        assert_eq!(Error::QueueFull.status(), Some(503));
        assert_eq!(Error::ResponseTimeout { worker: "w".into(), after: Duration::ZERO }.status(), Some(504));
        assert_eq!(Error::Unauthorized("x").status(), Some(401));
        assert_eq!(Error::ClientIo(io::Error::other("x")).status(), None);
        assert!(Error::TooManyTunnels("x".into()).is_retryable());
    }
}
