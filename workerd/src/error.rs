//! Errors of the worker: one enum, and the one place that says which of them
//! end a tunnel and which only fail a request.

use std::io;

use ptth_proto::rt::io::RelayError;
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
    Relay(#[from] RelayError),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("{0}")]
    Handler(String),
    #[error("origin {origin}: {why}")]
    Origin { origin: String, why: String },
}

impl Error {
    /// Status the worker answers with when this error happens before the
    /// response head was sent.
    pub fn status(&self) -> u16 {
        match self {
            Error::Head(h) => h.status(),
            Error::Body(_) => 400,
            Error::Origin { why, .. } if why.contains("timed out") || why.contains("deadline") => 504,
            Error::Origin { .. } => 502,
            _ => 500,
        }
    }
}
