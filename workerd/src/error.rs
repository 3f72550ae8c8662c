//! Errors of the worker: one enum, and the one place that says which of them
//! end a tunnel and which only fail a request.

use std::io;

use ptth_proto::rt::body::Fault;
use ptth_proto::HeadError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("connecting to lb {lb}: {source}")]
    Connect { lb: String, source: io::Error },
    #[error("lb {lb} refused the tunnel with {status}: {reason}")]
    Rejected { lb: String, status: u16, retry_after: Option<u32>, reason: String },
    #[error("lb {lb} sent an invalid setup response: {why}")]
    BadSetupResponse { lb: String, why: String },
    #[error("tunnel I/O: {0}")]
    Io(#[from] io::Error),
    #[error("bad request on tunnel: {0}")]
    Head(#[from] HeadError),
    #[error("request body: {0}")]
    Body(#[from] ptth_proto::BodyError),
    #[error("relaying a body: {0}")]
    Relay(#[from] Fault),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("{0}")]
    Handler(String),
    #[error("origin {origin}: {why}")]
    Origin { origin: String, kind: OriginFailure, why: String },
}

/// What went wrong with the sidecar's origin, for the status it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginFailure {
    /// Connecting failed or was refused.
    Connect,
    /// A connect or response deadline passed: 504.
    Timeout,
    /// The connection closed or broke mid-exchange.
    Closed,
    /// The origin's response was invalid (head, framing, a 101 nobody asked for).
    Protocol,
}

impl Error {
    /// Status the worker answers with when this error happens before the
    /// response head was sent.
    pub fn status(&self) -> u16 {
        match self {
            Error::Head(h) => h.status(),
            Error::Body(_) => 400,
            Error::Origin { kind: OriginFailure::Timeout, .. } => 504,
            Error::Origin { .. } => 502,
            _ => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_statuses_come_from_the_kind() {
        let e = |kind| Error::Origin { origin: "o:1".into(), kind, why: "anything, even 'timed out'".into() };
        assert_eq!(e(OriginFailure::Timeout).status(), 504);
        for k in [OriginFailure::Connect, OriginFailure::Closed, OriginFailure::Protocol] {
            assert_eq!(e(k).status(), 502, "{k:?}");
        }
    }
}
